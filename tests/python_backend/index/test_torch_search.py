"""Device search (exact and routed, torch) against the CPU path: same classes, same scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megaclass.export.config import IndexConfig
from megaclass.python_backend.index.aggregation import aggregate_classes
from megaclass.python_backend.index.defaults import FAISS_FLAT
from megaclass.python_backend.index.routed_index import RoutedIndex
from megaclass.python_backend.index.torch_search import (
    ExactTorchSearch,
    RoutedTorchSearch,
    aggregate_classes_torch,
)

CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none)")],
)


def _index(n=1200, d=24, per_class=2, seed=0, **cfg):
    rng = np.random.default_rng(seed)
    xb = rng.standard_normal((n, d)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    ids = np.arange(n) // per_class
    cfg = IndexConfig(**{"nlist": 16, "kmeans_iters": 4, **FAISS_FLAT, **cfg})
    index = RoutedIndex.build(xb, ids, {int(i): f"c{i}" for i in np.unique(ids)}, cfg)
    xq = xb[rng.choice(n, 50, replace=False)] + 0.05 * rng.standard_normal((50, d)).astype(np.float32)
    return index, xq / np.linalg.norm(xq, axis=1, keepdims=True)


def test_device_aggregation_equals_the_cpu_one_ties_included():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, (40, 30)).astype(np.float32) / 5  # many ties
    classes = rng.integers(-1, 12, (40, 30))
    want_c, want_s = aggregate_classes(scores, classes, 5)
    got_c, got_s = aggregate_classes_torch(torch.from_numpy(scores), torch.from_numpy(classes), 5)
    np.testing.assert_array_equal(got_c.numpy(), want_c)
    np.testing.assert_array_equal(got_s.numpy(), want_s)
    c, s = aggregate_classes_torch(torch.ones(2, 2), torch.tensor([[3, 3], [-1, -1]]), 3)  # fewer than k
    assert c.tolist() == [[3, -1, -1], [-1, -1, -1]] and torch.isinf(s[1]).all()


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_exact_equals_the_cpu_exact_search(device, dtype):
    index, xq = _index()
    want = index.exact_search(xq, 10)
    got_c, got_s, totals = ExactTorchSearch(index._vectors, index._row_class, device, dtype).search(xq, 10)
    atol = 1e-5 if dtype == torch.float32 else 2e-3  # FP16 prototypes, FP32 re-score
    np.testing.assert_allclose(got_s, want.scores, atol=atol)
    clear = np.abs(np.diff(want.scores[:, :4], axis=1)).min(axis=1) > 2 * atol  # no near-ties in the top 3
    np.testing.assert_array_equal(got_c[clear, :3], want.class_ids[clear, :3])
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got_c, want.class_ids, strict=True)])
    assert clear.sum() > 10 and overlap >= 0.97 and totals["scanned"] == len(xq) * index.num_entries


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("nprobe, margin", [(1, None), (4, None), (4, 0.05), (16, None)])
def test_routed_equals_the_faiss_scan(device, nprobe, margin):
    index, xq = _index(spill=1)
    want = index.search(xq, 10, nprobe=nprobe, probe_margin=np.inf if margin is None else margin)
    got_c, got_s, totals = RoutedTorchSearch(index, device, torch.float32).search(xq, 10, nprobe, margin)
    np.testing.assert_array_equal(got_c, want.class_ids)
    np.testing.assert_allclose(got_s, want.scores, atol=1e-5)
    assert totals["scanned"] == pytest.approx(want.stats["candidates_scanned"])
    if nprobe == 16:  # every cluster probed: the exact answer
        np.testing.assert_array_equal(got_c, index.exact_search(xq, 10).class_ids)


def test_routed_fp16_keeps_recall():
    index, xq = _index(n=3000, per_class=1)
    want = index.search(xq, 10, nprobe=4).class_ids
    got = RoutedTorchSearch(index, "cpu", torch.float16).search(xq, 10, 4)[0]
    agree = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want, strict=True)])
    assert agree >= 0.98


def test_large_batches_are_chunked_with_the_same_answer(monkeypatch):
    from megaclass.python_backend.index import torch_search

    index, xq = _index()
    whole = RoutedTorchSearch(index, "cpu", torch.float32).search(xq, 5, 4)
    exact = ExactTorchSearch(index._vectors, index._row_class, "cpu", torch.float32).search(xq, 5)
    monkeypatch.setattr(torch_search, "_CHUNK_BYTES", 1)  # one query per kernel call
    np.testing.assert_array_equal(RoutedTorchSearch(index, "cpu", torch.float32).search(xq, 5, 4)[0], whole[0])
    np.testing.assert_array_equal(
        ExactTorchSearch(index._vectors, index._row_class, "cpu", torch.float32).search(xq, 5)[0], exact[0]
    )
