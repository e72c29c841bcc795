"""Torch tensors on the request path (the GPU path's DLPack inputs), checked with CPU tensors here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megaclass.export.config import IndexConfig
from megaclass.python_backend.index.routed_index import RoutedIndex
from megaclass.python_backend.serving.device_arrays import (
    all_finite,
    concat_rows,
    is_torch_tensor,
    numpy_dtype,
    to_numpy,
)
from megaclass.python_backend.serving.request_batching import InputError, TensorSpec, check_input, run_batched


def test_helpers_treat_tensors_and_arrays_alike():
    a, t = np.ones((2, 3), np.float32), torch.ones(2, 3)
    assert is_torch_tensor(t) and not is_torch_tensor(a)
    assert numpy_dtype(t) == numpy_dtype(a) == np.float32
    assert is_torch_tensor(concat_rows([t, t])) and concat_rows([t, t]).shape == (4, 3)
    assert concat_rows([a, a]).shape == (4, 3)
    t[1, 2] = float("inf")
    assert not all_finite(t) and all_finite(a)
    assert isinstance(to_numpy(t), np.ndarray)


def test_check_input_validates_a_tensor_where_it_lives():
    spec = TensorSpec("EMBEDDING", np.float32, (4,))
    ok = check_input(spec, torch.zeros(3, 4))
    assert is_torch_tensor(ok)
    for bad, why in [
        (torch.zeros(3, 4, dtype=torch.float64), "float32"),
        (torch.zeros(3, 4, dtype=torch.bfloat16), r"got (torch\.)?bfloat16"),  # numpy knows it once ml_dtypes is loaded
        (torch.zeros(3, 5), "shape"),
        (torch.zeros(0, 4), "empty"),
        (torch.full((2, 4), float("nan")), "NaN"),
    ]:
        with pytest.raises(InputError, match=why):
            check_input(spec, bad)
    out = run_batched([torch.ones(2, 4), InputError("x"), torch.zeros(1, 4)], lambda x: [x * 2])
    assert out[0][0].shape == (2, 4) and isinstance(out[1], InputError) and float(out[2][0].sum()) == 0


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_search_takes_a_tensor_and_answers_as_with_numpy(backend):
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((600, 16)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    ids = np.arange(600) // 2
    index = RoutedIndex.build(
        xb, ids, {i: str(i) for i in range(300)}, IndexConfig(nlist=8, kmeans_iters=4, backend=backend, device="cpu")
    )
    xq = xb[:40] + np.float32(0.01)
    want = index.search(xq, 5, nprobe=3)
    got = index.search(torch.from_numpy(xq), 5, nprobe=3)
    np.testing.assert_array_equal(got.class_ids, want.class_ids)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
    bad = torch.from_numpy(xq.copy())
    bad[7, 1] = float("nan")
    with pytest.raises(ValueError, match="row 7"):
        index.search(bad, 5)
    with pytest.raises(ValueError, match="dimension"):
        index.search(torch.zeros(2, 3), 5)


DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none present)"),
        ],
    ),
]


@pytest.mark.parametrize("device", DEVICES)
def test_concat_rows_joins_numpy_and_tensors_on_one_device(device):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = torch.full((1, 3), 7.0, device=device)
    for parts in ([a, t], [t, a], [a, t, a]):
        out = concat_rows(parts)
        assert is_torch_tensor(out) and out.device.type == device
        want = np.concatenate([p if isinstance(p, np.ndarray) else p.cpu().numpy() for p in parts])
        np.testing.assert_array_equal(out.cpu().numpy(), want)
    if device == "cuda":  # a CPU tensor joins the GPU one wherever it stands in the batch
        assert concat_rows([torch.ones(1, 3), t]).device.type == "cuda"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_a_mixed_batch_of_tensors_and_arrays_is_searched_as_one(device, backend):
    """`classify` requests bring GPU tensors, direct retriever calls numpy: one batch, one search."""
    from megaclass.python_backend.serving.retriever_service import RetrieverRequest, answer_requests

    rng = np.random.default_rng(1)
    xb = rng.standard_normal((400, 16)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    cfg = IndexConfig(nlist=8, kmeans_iters=4, backend=backend, device=device)
    index = RoutedIndex.build(xb, np.arange(400), {i: str(i) for i in range(400)}, cfg)
    xq = xb[:9] + np.float32(0.02)
    requests = [
        RetrieverRequest(torch.from_numpy(xq[:4]).to(device), 3, None),
        RetrieverRequest(xq[4:6], 5, None),
        InputError("bad request"),
        RetrieverRequest(torch.from_numpy(xq[6:]).to(device), 2, None),
    ]
    answers, stats = answer_requests(index, requests)
    assert stats["queries"] == 9 and isinstance(answers[2], InputError)
    want = index.search(xq, 5)
    for answer, rows, k in [(answers[0], slice(0, 4), 3), (answers[1], slice(4, 6), 5), (answers[3], slice(6, 9), 2)]:
        np.testing.assert_array_equal(answer.class_ids, want.class_ids[rows, :k])
        np.testing.assert_allclose(answer.scores, want.scores[rows, :k], atol=1e-5)
