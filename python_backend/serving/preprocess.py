"""Image -> encoder input, the one definition shared by training, export, clients and tests.

Glyph images are single-channel uint8 arrays, glyph white (255) on black (0). The encoder
input is float32 `[N, 1, S, S]` in [0, 1]. numpy and Pillow only, so clients can use it
without torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 `[N, S, S]` (or `[S, S]`) -> float32 `[N, 1, S, S]` scaled to [0, 1]."""
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ValueError(f"expected images of shape [N, S, S], got {arr.shape}")
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    else:
        out = arr.astype(np.float32)
    return np.ascontiguousarray(out[:, None])


def load_image(source: str | Path | Image.Image | np.ndarray, size: int) -> np.ndarray:
    """A file path, PIL image or array -> uint8 `[size, size]`, glyph bright on dark.

    Pictures that are mostly bright (dark ink on paper) are inverted so that they match
    the rendered training data.
    """
    if isinstance(source, np.ndarray):
        img = Image.fromarray(source if source.dtype == np.uint8 else np.clip(source * 255, 0, 255).astype(np.uint8))
    elif isinstance(source, Image.Image):
        img = source
    else:
        img = Image.open(source)
    img = img.convert("L")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.mean() > 127:
        arr = 255 - arr
    return arr
