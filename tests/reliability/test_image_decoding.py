"""Decoding encoded images from requests (the `decode` model's library): the same pixels as the
clients' loader, and clear refusals for anything else."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from megaclass.python_backend.serving.image_decoding import DecodeLimits, decode_batch, decode_image
from megaclass.python_backend.serving.preprocess import load_image
from megaclass.python_backend.serving.request_batching import InputError


def encode(array: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **options)
    return buf.getvalue()


GLYPH = (np.random.default_rng(0).random((20, 20)) * 80).astype(np.uint8)  # dark background


@pytest.mark.parametrize(
    "image",
    [GLYPH, np.stack([GLYPH] * 3, -1), np.dstack([GLYPH] * 3 + [np.full_like(GLYPH, 255)]), 255 - GLYPH],
    ids=["grey", "rgb", "rgba", "bright-background"],
)
def test_png_decodes_like_the_clients_loader(image):
    want = load_image(Image.fromarray(image), 16).astype(np.float32) / 255
    got = decode_image(encode(image), 16)
    assert got.shape == (1, 16, 16) and got.dtype == np.float32
    np.testing.assert_array_equal(got[0], want)


def test_jpeg_and_palette_and_16_bit():
    assert decode_image(encode(GLYPH, "JPEG", quality=95), 16).shape == (1, 16, 16)
    buf = io.BytesIO()
    Image.fromarray(GLYPH).convert("P").save(buf, "PNG")
    assert decode_image(buf.getvalue(), 16).shape == (1, 16, 16)
    wide = (GLYPH.astype(np.uint16) * 200).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, "PNG")
    out = decode_image(buf.getvalue(), 16)
    assert np.isfinite(out).all() and 0 <= out.min() <= out.max() <= 1


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "is empty"),
        (b"GIF89a....", r"is not a PNG or JPEG image \(it starts with b'GIF89a"),
        (encode(GLYPH)[:30], "is a truncated or damaged PNG file"),
        (encode(GLYPH)[: len(encode(GLYPH)) // 2], "is a truncated or damaged PNG file"),
        (encode(GLYPH, "BMP"), "is not a PNG or JPEG image"),
        ("a string", "must be the bytes of a PNG or JPEG file, got str"),
    ],
)
def test_refusals_say_what_is_wrong(data, match):
    with pytest.raises(InputError, match=match):
        decode_image(data, 16, what="IMAGE_BYTES[0]")


def test_limits_apply_before_decoding():
    limits = DecodeLimits(max_bytes=1000, max_pixels=64 * 64)
    with pytest.raises(InputError, match="more than the limit of 1000 bytes"):
        decode_image(b"\x89PNG" + b"\0" * 2000, 16, limits)
    bomb = encode(np.zeros((100, 100), np.uint8))  # small file, 10000 pixels
    assert len(bomb) < 1000
    with pytest.raises(InputError, match=r"is 100x100 pixels; the limit is 4096 pixels"):
        decode_image(bomb, 16, limits)


def test_batch_names_the_bad_row_and_checks_the_shape():
    rows = np.array([[encode(GLYPH)], [b"nope"]], dtype=object)
    with pytest.raises(InputError, match=r"IMAGE_BYTES\[1\] is not a PNG or JPEG image"):
        decode_batch(rows, 16)
    assert decode_batch(rows[:1], 16).shape == (1, 1, 16, 16)
    with pytest.raises(InputError, match="empty batch"):
        decode_batch(np.empty((0, 1), dtype=object), 16)
    with pytest.raises(InputError, match=r"must have shape \[batch, 1\]"):
        decode_batch(np.array([b"x", b"y"], dtype=object), 16)
    with pytest.raises(InputError, match="is missing"):
        decode_batch(None, 16)
