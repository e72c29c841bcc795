"""Batch Triton requests ourselves: the Python backend hands `execute` a list of requests.

Concatenate the valid requests' inputs, run the model or search once, and split the outputs
back into one response per request. Invalid requests are answered with their own error and
do not take the rest of the batch down.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from megaclass.python_backend.serving.device_arrays import all_finite, concat_rows, is_torch_tensor, numpy_dtype


class InputError(ValueError):
    """A request's input is unusable; the message says what and how to fix it."""


def is_client_error(exc: BaseException) -> bool:
    """True when `exc` is the request's fault (answer INVALID_ARG / HTTP 400), not the server's."""
    return isinstance(exc, InputError)


@dataclass(frozen=True)
class TensorSpec:
    """What one input must look like: dtype and the shape after the batch axis."""

    name: str
    dtype: np.dtype
    item_shape: tuple[int, ...]


def check_input(
    spec: TensorSpec, array: np.ndarray | None, max_rows: int | None = None, check_finite: bool = True
) -> np.ndarray:
    """Validate one request's batch for `spec`; returns it as a C-contiguous array. `check_finite`:
    refuse NaN and infinity in a host array here (False: the caller checks them, as `check_inputs` does
    over a whole batch at once); a device tensor is always checked here, where it lives.

    A torch tensor (a GPU input taken through DLPack) is checked where it lives and stays a tensor.
    """
    if array is None:
        raise InputError(f"input {spec.name} is missing")
    on_device = type(array) is not np.ndarray and is_torch_tensor(array)  # asked once: ~1 µs a call under load
    if not on_device and type(array) is not np.ndarray:
        array = np.asarray(array)
    dtype = numpy_dtype(array) if on_device else array.dtype
    if dtype != spec.dtype:
        got = dtype.name if dtype is not None else str(array.dtype)
        raise InputError(f"input {spec.name} must be {np.dtype(spec.dtype).name}, got {got}")
    if array.ndim != 1 + len(spec.item_shape) or tuple(array.shape[1:]) != spec.item_shape:
        want = "[batch, " + ", ".join(map(str, spec.item_shape)) + "]"
        raise InputError(f"input {spec.name} must have shape {want}, got {list(array.shape)}")
    if array.shape[0] == 0:
        raise InputError(f"input {spec.name} is an empty batch")
    if max_rows is not None and array.shape[0] > max_rows:
        raise InputError(f"input {spec.name} has {array.shape[0]} rows, more than the limit {max_rows}")
    if (
        dtype.kind == "f"
        and (on_device or check_finite)
        and not (all_finite(array) if on_device else np.isfinite(array).all())
    ):
        raise InputError(f"input {spec.name} contains NaN or Inf values")
    if on_device:
        return array.contiguous()
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)


def check_inputs(
    spec: TensorSpec, arrays: Sequence[np.ndarray | None], max_rows: int | None = None
) -> list[np.ndarray | Exception]:
    """`check_input` for each request's array; a rejected request gets its exception instead (the
    form `run_batched` takes). NaN and infinity in host arrays are looked for in one pass
    over the whole batch, and request by request only when that pass finds some."""
    one_pass = np.dtype(spec.dtype).kind == "f"
    checked: list[np.ndarray | Exception] = []
    for array in arrays:
        try:
            checked.append(check_input(spec, array, max_rows, check_finite=not one_pass))
        except Exception as exc:
            checked.append(exc)
    if one_pass:
        _refuse_non_finite(spec, checked)
    return checked


def _refuse_non_finite(spec: TensorSpec, checked: list[np.ndarray | Exception]) -> None:
    """Replace each array holding NaN or infinity by its InputError: one check over the joined batch
    (two numpy calls in all, instead of two per request), then request by request only if it fails."""
    host = [i for i, a in enumerate(checked) if type(a) is np.ndarray]
    if not host:
        return
    joined = checked[host[0]] if len(host) == 1 else np.concatenate([checked[i] for i in host])
    if np.isfinite(joined).all():
        return
    for i in host:
        if not np.isfinite(checked[i]).all():
            checked[i] = InputError(f"input {spec.name} contains NaN or Inf values")


def run_batched(
    inputs: Sequence[np.ndarray | Exception],
    fn: Callable[[np.ndarray], list],
) -> list[list | Exception]:
    """Run `fn` once over the concatenation of the valid inputs; split its outputs per request.

    `inputs[i]` is request i's validated array or the exception that rejected it. `fn` gets
    the stacked rows and returns a list of per-row-aligned arrays; each request gets its slice
    of every output, or its own exception.
    """
    valid = [i for i, x in enumerate(inputs) if not isinstance(x, Exception)]
    results: list[list | Exception] = [x if isinstance(x, Exception) else [] for x in inputs]
    if not valid:
        return results
    stacked = concat_rows([inputs[i] for i in valid])
    try:
        outputs = fn(stacked)
    except Exception as exc:  # one failure answers every request of this batch with it
        for i in valid:
            results[i] = exc
        return results
    start = 0
    for i in valid:
        n = inputs[i].shape[0]
        results[i] = [out[start : start + n] for out in outputs]
        start += n
    return results
