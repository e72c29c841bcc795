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
