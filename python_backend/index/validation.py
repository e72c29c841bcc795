"""Checks of what goes into the index: query batches (numpy or torch) and prototypes with class ids.

Each raises ValueError saying what is wrong, so a bad request is refused before it reaches a scan.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from megaclass.python_backend.serving.device_arrays import is_torch_tensor


def validate_queries(queries: Any, dim: int, check_finite: bool = True) -> np.ndarray:
    """Return `queries` as a C-contiguous float32 [Q, dim] array or raise ValueError saying why.

    A torch tensor is checked where it lives and returned as a float32 tensor on its device.
    `check_finite=False` leaves the NaN / infinity check to the caller (the native kernel does it in
    its own pass over the batch).
    """
    if type(queries) is np.ndarray and queries.dtype == np.float32 and queries.ndim == 2 and queries.flags.c_contiguous:
        # The usual batch, taken as it is: a search is called per batch, and each numpy call here costs
        # a few microseconds with the caches cold from the search before it.
        if queries.shape[1] != dim:
            raise ValueError(f"queries have dimension {queries.shape[1]}, the index has {dim}")
        if check_finite:
            _check_finite(queries)
        return queries
    if is_torch_tensor(queries):
        return _validate_tensor(queries, dim)
    try:
        xq = np.asarray(queries)
    except Exception as e:  # ragged lists and the like
        raise ValueError(f"queries are not an array: {e}") from e
    if xq.ndim != 2:
        raise ValueError(f"queries must be 2-D [num_queries, {dim}], got shape {xq.shape}")
    if xq.shape[1] != dim:
        raise ValueError(f"queries have dimension {xq.shape[1]}, the index has {dim}")
    if xq.dtype.kind not in "fiu":
        raise ValueError(f"queries must be numeric (float32-convertible), got dtype {xq.dtype}")
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    if check_finite:
        _check_finite(xq)
    return xq


def _check_finite(xq: np.ndarray) -> None:
    if not np.isfinite(xq).all():
        bad = int(np.flatnonzero(~np.isfinite(xq).all(axis=1))[0])
        raise ValueError(f"queries contain NaN or infinity (first in row {bad})")


def _validate_tensor(x: Any, dim: int) -> Any:
    import torch

    if x.ndim != 2:
        raise ValueError(f"queries must be 2-D [num_queries, {dim}], got shape {tuple(x.shape)}")
    if x.shape[1] != dim:
        raise ValueError(f"queries have dimension {x.shape[1]}, the index has {dim}")
    if x.dtype == torch.bool or x.dtype.is_complex:
        raise ValueError(f"queries must be numeric (float32-convertible), got dtype {x.dtype}")
    x = x.to(torch.float32).contiguous()
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        raise ValueError(f"queries contain NaN or infinity (first in row {int(torch.nonzero(~finite)[0, 0])})")
    return x


def check_prototypes(prototypes: Any, class_ids: Any, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Prototypes as float32 [P, D] (D = `dim` when given) and their class ids as int64 [P] (>= 0)."""
    xb = np.asarray(prototypes)
    if xb.ndim != 2 or xb.shape[0] == 0:
        raise ValueError(f"prototypes must be a non-empty 2-D array, got shape {xb.shape}")
    if dim is not None and xb.shape[1] != dim:
        raise ValueError(f"prototypes have dimension {xb.shape[1]}, the index has {dim}")
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    if not np.isfinite(xb).all():
        raise ValueError("prototypes contain NaN or infinity")
    ids = np.asarray(class_ids)
    if ids.shape != (len(xb),) or ids.dtype.kind not in "iu":
        raise ValueError(f"class_ids must be integers of shape ({len(xb)},), got {ids.dtype} {ids.shape}")
    ids = ids.astype(np.int64)
    if (ids < 0).any():
        raise ValueError("class ids must be >= 0 (-1 means 'no class' in results)")
    return xb, ids
