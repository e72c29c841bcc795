"""Encoded images (PNG or JPEG bytes) -> the encoder's input, for the Triton `decode` model.

The bytes come from the network, so: only PNG and JPEG are opened (never a path: the bytes are
wrapped in a buffer), the encoded size and the pixel count are checked before any pixel is
decoded (no decompression bombs), and every failure is an `InputError` that names the row and
says what was wrong. Pixels then follow the clients' rule (`megaclass.python_backend.serving.preprocess.load_image`:
grey, resized, inverted to bright-on-dark), so `classify_encoded` answers like `classify` does
for the same picture loaded by the client.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from megaclass.python_backend.serving.config import RequestLimits
from megaclass.python_backend.serving.preprocess import load_image
from megaclass.python_backend.serving.request_batching import InputError

FORMATS = ("PNG", "JPEG")
MAGIC = {"PNG": b"\x89PNG\r\n\x1a\n", "JPEG": b"\xff\xd8\xff"}


@dataclass(frozen=True)
class DecodeLimits:
    """What one encoded image may be: bytes on the wire and pixels once decoded."""

    max_bytes: int = RequestLimits.max_image_bytes
    max_pixels: int = RequestLimits.max_image_pixels


def decode_image(data: bytes, size: int, limits: DecodeLimits = DecodeLimits(), what: str = "image") -> np.ndarray:
    """PNG or JPEG bytes -> float32 `[1, size, size]` in [0, 1]; anything else raises InputError."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InputError(f"{what} must be the bytes of a PNG or JPEG file, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise InputError(f"{what} is empty: send the bytes of a PNG or JPEG file")
    if len(data) > limits.max_bytes:
        raise InputError(f"{what} is {len(data)} bytes, more than the limit of {limits.max_bytes} bytes")
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Exception as exc:  # UnidentifiedImageError, or a header PIL recognises but cannot parse
        kind = next((k for k, magic in MAGIC.items() if data.startswith(magic)), None)
        if kind:
            detail = "" if isinstance(exc, UnidentifiedImageError) else f": {exc}"
            raise InputError(f"{what} is a truncated or damaged {kind} file ({len(data)} bytes){detail}") from None
        raise InputError(
            f"{what} is not a PNG or JPEG image (it starts with {data[:8]!r}); send the file's bytes unchanged"
        ) from None
    width, height = img.size
    if width < 1 or height < 1 or width * height > limits.max_pixels:
        raise InputError(
            f"{what} is {width}x{height} pixels; the limit is {limits.max_pixels} pixels: send a smaller picture"
        )
    try:
        if img.format == "JPEG":
            img.draft("L", (size, size))  # decode at a reduced scale where JPEG allows it
        img.load()
        pixels = load_image(img, size)
    except Exception as exc:  # truncated or corrupt data: PIL raises OSError, SyntaxError, ValueError, ...
        raise InputError(f"{what} is a truncated or damaged {img.format} file: {exc}") from None
    return (pixels.astype(np.float32) / 255.0)[None]


def decode_batch(
    rows: np.ndarray | None, size: int, limits: DecodeLimits = DecodeLimits(), name: str = "IMAGE_BYTES"
) -> np.ndarray:
    """A BYTES batch `[N, 1]` (one encoded image per row) -> float32 `[N, 1, size, size]`."""
    if rows is None:
        raise InputError(f"input {name} is missing")
    if rows.ndim != 2 or rows.shape[1] != 1:
        raise InputError(f"input {name} must have shape [batch, 1] (one encoded image per row), got {list(rows.shape)}")
    if rows.shape[0] == 0:
        raise InputError(f"input {name} is an empty batch")
    return np.stack([decode_image(row[0], size, limits, f"{name}[{i}]") for i, row in enumerate(rows)])
