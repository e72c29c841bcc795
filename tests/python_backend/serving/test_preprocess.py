"""The one image -> encoder-input definition."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from megaclass.python_backend.serving.preprocess import load_image, to_model_input


def test_to_model_input_scales_and_adds_channel():
    x = to_model_input(np.array([[[0, 255], [51, 102]]], np.uint8))
    assert x.shape == (1, 1, 2, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], [[0, 1], [0.2, 0.4]], atol=1e-6)
    assert to_model_input(np.zeros((4, 4), np.uint8)).shape == (1, 1, 4, 4)
    with pytest.raises(ValueError, match="shape"):
        to_model_input(np.zeros((2, 3, 4, 4), np.uint8))


def test_load_image_resizes_greyscales_and_inverts_dark_on_light(tmp_path):
    img = np.full((40, 40, 3), 255, np.uint8)
    img[10:30, 18:22] = 0  # a dark stroke on white paper
    p = tmp_path / "g.png"
    Image.fromarray(img).save(p)
    out = load_image(p, 32)
    assert out.shape == (32, 32) and out.dtype == np.uint8
    assert out[16, 16] > 200 and out[0, 0] < 50  # bright glyph on dark, like the training data
