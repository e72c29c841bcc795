"""Arrays that may be numpy or torch tensors: the retriever's GPU path keeps a query batch that
arrived on the GPU (through DLPack) as a torch tensor instead of copying it to the host.

Only what the request path needs: recognise a tensor, concatenate rows, bring to numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def is_torch_tensor(x: Any) -> bool:
    """True for a torch.Tensor (checked without importing torch)."""
    return type(x).__module__.startswith("torch") and hasattr(x, "device") and hasattr(x, "dtype")


def concat_rows(arrays: Sequence[Any]) -> Any:
    """Concatenate along the first axis. When any input is a torch tensor, every input is moved to one
    device (the first GPU one, else the first tensor's) and joined in torch: a dynamic batch may mix
    `classify` requests (embeddings on the GPU, through DLPack) with direct retriever calls (numpy)."""
    if len(arrays) == 1:
        return arrays[0]
    if all(type(a) is np.ndarray for a in arrays):  # the CPU path: no per-array tensor check
        return np.concatenate(arrays)
    tensors = [a for a in arrays if is_torch_tensor(a)]
    if not tensors:
        return np.concatenate(arrays)
    import torch

    dev = next((t.device for t in tensors if t.device.type != "cpu"), tensors[0].device)
    moved = [
        a.to(dev, non_blocking=True) if is_torch_tensor(a) else torch.from_numpy(np.ascontiguousarray(a)).to(dev)
        for a in arrays
    ]
    return torch.cat(moved)


def to_numpy(x: Any) -> np.ndarray:
    """A numpy array (a device tensor is copied to the host)."""
    return x.detach().cpu().numpy() if is_torch_tensor(x) else np.asarray(x)


def numpy_dtype(x: Any) -> np.dtype | None:
    """The numpy dtype of an array or tensor (torch.float32 -> float32); None for a torch dtype numpy
    lacks (bfloat16, ...)."""
    if is_torch_tensor(x):
        try:
            return np.dtype(str(x.dtype).removeprefix("torch."))
        except TypeError:
            return None
    return np.asarray(x).dtype


def all_finite(x: Any) -> bool:
    """No NaN or infinity (computed where the data lives)."""
    if is_torch_tensor(x):
        import torch

        return bool(torch.isfinite(x).all())
    return bool(np.isfinite(x).all())
