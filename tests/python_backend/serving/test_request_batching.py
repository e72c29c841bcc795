"""Request validation and self-batching, as the Triton models use them."""

from __future__ import annotations

import numpy as np
import pytest

from megaclass.python_backend.serving.request_batching import InputError, TensorSpec, check_input, run_batched

SPEC = TensorSpec("EMBEDDING", np.float32, (4,))


@pytest.mark.parametrize(
    "array, message",
    [
        (None, "is missing"),
        (np.zeros((2, 4), np.float64), "must be float32"),
        (np.zeros((2, 5), np.float32), r"shape \[batch, 4\]"),
        (np.zeros((4,), np.float32), r"shape \[batch, 4\]"),
        (np.zeros((0, 4), np.float32), "empty batch"),
        (np.zeros((9, 4), np.float32), "more than the limit 8"),
        (np.array([[0, np.nan, 0, 0]], np.float32), "NaN or Inf"),
        (np.array([[0, np.inf, 0, 0]], np.float32), "NaN or Inf"),
    ],
)
def test_check_input_rejects_with_clear_message(array, message):
    with pytest.raises(InputError, match=message):
        check_input(SPEC, array, max_rows=8)


def test_run_batched_runs_once_and_splits_back():
    calls = []

    def fn(x):
        calls.append(x.shape[0])
        return [x * 2, x.sum(axis=1)]

    a, b = np.ones((2, 4), np.float32), np.full((3, 4), 2, np.float32)
    bad = InputError("nope")
    out = run_batched([a, bad, b], fn)
    assert calls == [5]
    np.testing.assert_array_equal(out[0][0], a * 2)
    assert out[1] is bad
    np.testing.assert_array_equal(out[2][1], [8, 8, 8])


def test_run_batched_failure_answers_every_valid_request():
    def fn(x):
        raise RuntimeError("backend down")

    out = run_batched([np.ones((1, 4), np.float32), InputError("bad")], fn)
    assert isinstance(out[0], RuntimeError) and isinstance(out[1], InputError)


def test_check_inputs_answers_each_request_with_its_array_or_its_error():
    from megaclass.python_backend.serving.request_batching import check_inputs

    good = np.zeros((2, 4), np.float32)
    out = check_inputs(SPEC, [good, None, np.zeros((1, 5), np.float32)], max_rows=8)
    assert out[0] is not None and np.array_equal(out[0], good)
    assert isinstance(out[1], InputError) and "missing" in str(out[1])
    assert isinstance(out[2], InputError) and "shape" in str(out[2])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_inputs_refuses_only_the_requests_holding_nan_or_infinity(bad):
    from megaclass.python_backend.serving.request_batching import check_inputs

    rng = np.random.default_rng(0)
    arrays = [rng.random((n, 4), dtype=np.float32) for n in (1, 3, 2, 1)]
    arrays[1][2, 3] = bad
    arrays[3][0, 0] = -bad if bad == bad else bad  # NaN, or the other infinity (inf + -inf is NaN)
    out = check_inputs(SPEC, arrays, max_rows=8)
    assert [isinstance(o, InputError) for o in out] == [False, True, False, True]
    assert "NaN or Inf" in str(out[1]) and "NaN or Inf" in str(out[3])
    assert np.array_equal(out[0], arrays[0]) and np.array_equal(out[2], arrays[2])


def test_check_inputs_keeps_the_largest_finite_float32_values():
    """Finite extremes are not NaN or infinity, alone or in a batch."""
    from megaclass.python_backend.serving.request_batching import check_inputs

    big = np.full((8, 4), np.finfo(np.float32).max, np.float32)
    out = check_inputs(SPEC, [big, big.copy(), -big], max_rows=8)
    assert not any(isinstance(o, Exception) for o in out)


def test_check_inputs_checks_a_tensor_where_it_lives_beside_host_arrays():
    """A torch tensor (the DLPack path) is checked for NaN by itself; the host arrays in one pass."""
    torch = pytest.importorskip("torch")
    from megaclass.python_backend.serving.request_batching import check_inputs

    good, bad = torch.ones(2, 4), torch.ones(1, 4)
    bad[0, 1] = float("nan")
    out = check_inputs(SPEC, [good, bad, np.ones((1, 4), np.float32)], max_rows=8)
    assert isinstance(out[0], torch.Tensor) and isinstance(out[2], np.ndarray)
    assert isinstance(out[1], InputError) and "NaN or Inf" in str(out[1])
