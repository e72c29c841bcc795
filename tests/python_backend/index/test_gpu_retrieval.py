"""The retriever's search chosen by size at load, and its answers against the CPU path's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megaclass.export.config import IndexConfig
from megaclass.python_backend.index.gpu_retrieval import DeviceRetriever, load_retriever, plan_retrieval
from megaclass.python_backend.index.routed_index import RoutedIndex
from megaclass.python_backend.serving.config import GpuRetrievalConfig
from megaclass.python_backend.serving.retriever_service import RetrieverRequest, answer_requests


def test_the_plan_follows_the_budget():
    cfg = GpuRetrievalConfig(memory_budget_mb=256)
    assert plan_retrieval(1_000_000, 128, "cuda:0", cfg).mode == "exact"  # 244 MiB in FP16
    big = plan_retrieval(4_000_000, 128, "cuda:1", cfg)
    assert big.mode == "routed" and "exceed" in big.reason and big.prototype_bytes == 4_000_000 * 256
    assert plan_retrieval(1_000_000, 128, "cuda", GpuRetrievalConfig(memory_budget_mb=256, fp16=False)).mode == "routed"
    assert plan_retrieval(10, 128, "cpu", cfg).mode == "index"
    assert plan_retrieval(10, 128, "cpu", GpuRetrievalConfig(search="exact")).mode == "exact"
    with pytest.raises(ValueError, match="gpu_retrieval.search"):
        plan_retrieval(10, 128, "cpu", GpuRetrievalConfig(search="fast"))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def index():
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((900, 16)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    ids = np.arange(900) // 3
    return RoutedIndex.build(xb, ids, {i: f"c{i}" for i in range(300)}, IndexConfig(nlist=12, kmeans_iters=4, nprobe=4))


@pytest.mark.parametrize("mode", ["exact", "routed"])
def test_device_retriever_answers_as_the_index(index, mode):
    cfg = GpuRetrievalConfig(search=mode, fp16=False)
    searcher, plan = load_retriever(index, "cpu", cfg)
    assert isinstance(searcher, DeviceRetriever) and index.manifest["retrieval"]["mode"] == mode == plan.mode
    xq = index._vectors[:20] + np.float32(0.03)
    want = index.exact_search(xq, 5) if mode == "exact" else index.search(xq, 5)
    got = searcher.search(torch.from_numpy(xq), 5, threshold=0.9)
    np.testing.assert_array_equal(got.class_ids[got.class_ids >= 0], want.class_ids[want.scores >= 0.9])
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
    assert (got.labels[got.scores < 0.9] == "<unknown>").all() and got.stats["backend"] == f"torch-{mode}"
    with pytest.raises(ValueError, match="dimension"):
        searcher.search(np.zeros((2, 3), np.float32), 5)


def test_a_mixed_batch_through_the_device_retriever(index):
    searcher, _ = load_retriever(index, "cpu", GpuRetrievalConfig(search="exact", fp16=False))
    xq = index._vectors[:6]
    reqs = [RetrieverRequest(torch.from_numpy(xq[:2]), 3, None), RetrieverRequest(xq[2:], 3, None)]
    answers, stats = answer_requests(searcher, reqs)
    assert stats["queries"] == 6 and stats["backend"] == "torch-exact"
    np.testing.assert_array_equal(np.vstack([a.class_ids for a in answers]), index.exact_search(xq, 3).class_ids)


def test_on_a_cpu_auto_keeps_the_index(index):
    searcher, plan = load_retriever(index, "cpu", GpuRetrievalConfig())
    assert searcher is index and plan.mode == "index"


def test_an_instance_loads_its_retriever_from_the_model_parameters(index, tmp_path):
    from megaclass.python_backend.index.gpu_retrieval import load_for_instance

    index.save(tmp_path / "index")
    searcher, plan, device = load_for_instance(tmp_path / "index", {"device": "cpu"})
    assert device == "cpu" and plan.mode == "index" and isinstance(searcher, RoutedIndex)
    searcher, plan, _ = load_for_instance(tmp_path / "index", {"search": "exact", "gpu_fp16": "false"})
    assert plan.mode == "exact" and isinstance(searcher, DeviceRetriever)
    xq = index._vectors[:8] + np.float32(0.03)
    np.testing.assert_array_equal(searcher.search(xq, 3).class_ids, index.exact_search(xq, 3).class_ids)
