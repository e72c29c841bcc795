"""Augmentation of glyph batches: shape, range, determinism, and each distortion on small cases."""

from __future__ import annotations

import time

import pytest
import torch

from megaclass.export.config import AugmentConfig, replace
from megaclass.export.data import augment as A


def glyph_batch(b: int = 16, s: int = 32) -> torch.Tensor:
    """Bright bars and boxes on black, one shape per image, float [B, 1, S, S] in [0, 1]."""
    x = torch.zeros(b, 1, s, s)
    for i in range(b):
        a = 6 + i % 5
        x[i, 0, a : s - a, s // 2 - 2 : s // 2 + 2] = 1.0
        x[i, 0, a : a + 3, a : s - a] = 0.8
    return x


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shape_dtype_and_range() -> None:
    x = glyph_batch()
    y = A.augment_batch(x, AugmentConfig(blur_prob=1.0, stroke_prob=1.0, noise_std=0.2), gen(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert torch.equal(x, glyph_batch())  # the input is not modified


def test_deterministic_with_a_seeded_generator() -> None:
    x, cfg = glyph_batch(), AugmentConfig()
    assert torch.equal(A.augment_batch(x, cfg, gen(3)), A.augment_batch(x, cfg, gen(3)))
    assert not torch.equal(A.augment_batch(x, cfg, gen(3)), A.augment_batch(x, cfg, gen(4)))


def test_changes_the_images_and_each_image_differently() -> None:
    x = glyph_batch(8)
    x[:] = x[:1]  # eight copies of one image
    y = A.augment_batch(x, AugmentConfig(), gen(0))
    assert (y - x).abs().amax(dim=(1, 2, 3)).min() > 0.05
    assert len({tuple(img.flatten().tolist()) for img in y}) == 8


def test_disabled_is_identity() -> None:
    x = glyph_batch()
    assert A.augment_batch(x, AugmentConfig(enabled=False), gen(0)) is x


def test_all_distortions_off_is_identity() -> None:
    cfg = AugmentConfig(
        max_rotation_deg=0, max_shift=0, scale_range=(1.0, 1.0), blur_prob=0, noise_std=0, stroke_prob=0
    )
    x = glyph_batch()
    assert torch.allclose(A.augment_batch(x, cfg, gen(0)), x, atol=1e-6)


def test_stroke_width_dilates_or_erodes_a_block() -> None:
    x = torch.zeros(64, 1, 11, 11)
    x[:, :, 2:9, 2:9] = 1.0  # 7x7 block: full erosion keeps 25/49 of the ink, so it is not limited
    y = A.stroke_width(x, prob=1.0, amount=(1.0, 1.0), generator=gen(0))
    dilated = torch.zeros(11, 11)
    dilated[1:10, 1:10] = 1.0
    eroded = torch.zeros(11, 11)
    eroded[3:8, 3:8] = 1.0
    kinds = [torch.equal(img[0], dilated) - torch.equal(img[0], eroded) for img in y]
    assert set(kinds) == {1, -1}  # each image is exactly one of the two; both occur
    assert torch.equal(A.stroke_width(x, prob=0.0, amount=(1.0, 1.0), generator=gen(0)), x)


def test_erosion_keeps_half_of_a_thin_stroke() -> None:
    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 4, 1:8] = 1.0  # a 1-px line: full erosion would delete it
    y = A.stroke_width(x, prob=1.0, amount=(1.0, 1.0), generator=gen(0))
    masses = y.sum(dim=(1, 2, 3))
    assert masses.min() == pytest.approx(3.5, abs=1e-4)  # eroded ones keep exactly half
    assert masses.max() > 7  # dilated ones grow


def test_affine_warp_by_hand() -> None:
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 1, 2:6] = 1.0  # a horizontal bar near the top
    one, zero = torch.ones(1), torch.zeros(1)
    # 90 degrees: pixel centres land on pixel centres, the bar turns clockwise to the right edge
    y = A.affine_warp(x, 90 * one, one, torch.zeros(1, 2))
    assert torch.allclose(y, torch.rot90(x, -1, dims=(2, 3)), atol=1e-5)
    # a shift of (1/4, 1/8) of 8 px moves the bar 2 px right and 1 px down
    y = A.affine_warp(x, zero, one, torch.tensor([[0.25, 0.125]]))
    expected = torch.zeros(1, 1, 8, 8)
    expected[0, 0, 2, 4:8] = 1.0
    assert torch.allclose(y, expected, atol=1e-5)
    # scale 2 about the centre: the central 2x2 block becomes the central 4x4 block
    c = torch.zeros(1, 1, 8, 8)
    c[0, 0, 3:5, 3:5] = 1.0
    z = A.affine_warp(c, zero, 2 * one, torch.zeros(1, 2))
    assert torch.allclose(z[0, 0, 3:5, 3:5], torch.ones(2, 2)) and z.sum() > 3 * c.sum()
    assert z[0, 0, [0, 7]].sum() == 0 and z[0, 0, :, [0, 7]].sum() == 0


def test_affine_jitter_stays_in_its_ranges() -> None:
    x = torch.zeros(32, 1, 16, 16)
    x[:, 0, 6:10, 6:10] = 1.0  # centred square
    y = A.affine_jitter(x, 0.0, 0.125, (1.0, 1.0), gen(0))  # shifts of at most 2 px
    assert torch.allclose(y.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)), atol=1e-4)  # nothing leaves
    assert y[:, 0, :4].sum() == 0 and y[:, 0, 12:].sum() == 0 and y[:, 0, :, :4].sum() == 0
    assert not torch.allclose(y, x, atol=1e-3)


def test_gaussian_blur_keeps_mass_and_spreads_a_point() -> None:
    x = torch.zeros(4, 1, 15, 15)
    x[:, :, 7, 7] = 1.0
    y = A.gaussian_blur(x, prob=1.0, sigma=(1.0, 1.0), generator=gen(0))
    assert torch.allclose(y.sum(dim=(1, 2, 3)), torch.ones(4), atol=1e-5)
    g = torch.exp(-(torch.arange(-3.0, 4.0) ** 2) / 2)
    g = g / g.sum()
    assert torch.allclose(y[0, 0, 7, 4:11], g * g[3], atol=1e-6)  # separable Gaussian, sigma 1
    assert torch.equal(A.gaussian_blur(x, prob=0.0, sigma=(1.0, 1.0), generator=gen(0)), x)


def test_gaussian_noise_level() -> None:
    x = torch.full((64, 1, 32, 32), 0.5)
    y = A.gaussian_noise(x, 0.1, gen(0))
    std = (y - x).std(dim=(1, 2, 3))
    assert std.max() <= 0.11 and std.min() >= 0.0 and std.mean() == pytest.approx(0.05, abs=0.015)
    assert torch.equal(A.gaussian_noise(x, 0.0, gen(0)), x)


def test_fast_on_a_batch_of_256() -> None:
    x, cfg = glyph_batch(256), replace(AugmentConfig(), blur_prob=0.5, stroke_prob=0.5)
    g = gen(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core: steadier on a shared machine, and what a data loader worker has
    try:
        A.augment_batch(x, cfg, g)
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            A.augment_batch(x, cfg, g)
            best = min(best, time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    assert best < 0.05, f"{best * 1e3:.1f} ms for 256 images"  # about 7 ms on one free core


@pytest.mark.gpu
def test_cuda_generator_matches_shape_and_is_deterministic() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = glyph_batch().cuda()
    g1, g2 = torch.Generator("cuda").manual_seed(0), torch.Generator("cuda").manual_seed(0)
    y1, y2 = A.augment_batch(x, AugmentConfig(), g1), A.augment_batch(x, AugmentConfig(), g2)
    assert y1.device == x.device and y1.shape == x.shape and torch.equal(y1, y2)
