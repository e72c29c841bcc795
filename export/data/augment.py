"""Random distortions of glyph batches for training, vectorised over the batch in torch.

Each image gets its own draw of every distortion, in this order: stroke width (blend towards
the 3x3 dilated or eroded image), affine jitter (rotation, scale, shift; background stays
black), Gaussian blur, additive Gaussian noise; the result is clamped to [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from megaclass.export.config import AugmentConfig


def _uniform(
    n: int | tuple[int, ...], lo: float, hi: float, like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """U(lo, hi) draws of shape `n`, made on the generator's device, returned on `like`'s."""
    shape = (n,) if isinstance(n, int) else n
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(shape, generator=generator, device=device)
    return (lo + (hi - lo) * u).to(device=like.device, dtype=like.dtype)


def _max3x3(x: torch.Tensor) -> torch.Tensor:
    """3x3 maximum filter (separable, edge-replicating); faster on CPU than max_pool2d(stride=1)."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    h = torch.maximum(torch.maximum(p[..., :-2], p[..., 1:-1]), p[..., 2:])
    return torch.maximum(torch.maximum(h[..., :-2, :], h[..., 1:-1, :]), h[..., 2:, :])


def stroke_width(
    x: torch.Tensor, prob: float, amount: tuple[float, float], generator: torch.Generator | None = None
) -> torch.Tensor:
    """With probability `prob`, thicken (dilate) or thin (erode) strokes, 50/50.

    out = x + a * (m(x) - x), with m the 3x3 max (dilation) or min (erosion) filter and
    a ~ U(amount), so strokes change by a fraction of a pixel up to one pixel per side. Where
    erosion would remove more than half of the ink (thin strokes), a shrinks so that it does not.
    """
    B = x.shape[0]
    apply = _uniform(B, 0, 1, x, generator) < prob
    dilate = _uniform(B, 0, 1, x, generator) < 0.5
    a = _uniform(B, *amount, x, generator) * apply
    dilated, eroded = _max3x3(x), -_max3x3(-x)
    mass = x.sum(dim=(1, 2, 3)).clamp_min(1e-6)
    kept = eroded.sum(dim=(1, 2, 3)) / mass  # share of the ink that full erosion keeps
    a = torch.where(dilate, a, a * torch.clamp(0.5 / (1 - kept).clamp_min(1e-6), max=1.0))
    target = torch.where(dilate[:, None, None, None], dilated, eroded)
    return x + a[:, None, None, None] * (target - x)


def affine_warp(x: torch.Tensor, angle_deg: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Scale by `scale` and rotate by `angle_deg` (clockwise on screen) about the centre, then
    move by `shift` ([B, 2], (x, y) as fractions of the image size); the background stays black."""
    angle = angle_deg * (math.pi / 180)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # affine_grid maps output to input coordinates ([-1, 1] spans the image): the inverse map.
    A = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], 1)  # [B, 2, 2]
    t = -(A @ (2 * shift[:, :, None]))
    grid = F.affine_grid(torch.cat([A, t], 2), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def affine_jitter(
    x: torch.Tensor,
    max_rotation_deg: float,
    max_shift: float,
    scale_range: tuple[float, float],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rotate by U(-r, r) degrees, scale by U(scale_range), shift by U(-s, s) of the image size."""
    B = x.shape[0]
    angle = _uniform(B, -max_rotation_deg, max_rotation_deg, x, generator)
    scale = _uniform(B, *scale_range, x, generator)
    shift = _uniform((B, 2), -max_shift, max_shift, x, generator)
    return affine_warp(x, angle, scale, shift)


def gaussian_blur(
    x: torch.Tensor, prob: float, sigma: tuple[float, float], generator: torch.Generator | None = None
) -> torch.Tensor:
    """With probability `prob`, blur with a Gaussian of sigma ~ U(sigma) pixels (separable)."""
    B, C, H, W = x.shape
    apply = _uniform(B, 0, 1, x, generator) < prob
    s = _uniform(B, *sigma, x, generator)
    r = max(1, math.ceil(3 * sigma[1]))
    offs = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(offs[None] ** 2) / (2 * s[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)
    k = torch.where(apply[:, None], k, (offs == 0).to(x.dtype)[None])  # identity where not blurred
    k = k.repeat_interleave(C, 0)  # one kernel per (image, channel)
    y = x.reshape(1, B * C, H, W)
    y = F.conv2d(y, k[:, None, None, :], padding=(0, r), groups=B * C)
    y = F.conv2d(y, k[:, None, :, None], padding=(r, 0), groups=B * C)
    return y.reshape(B, C, H, W)


def gaussian_noise(x: torch.Tensor, max_std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add N(0, sigma^2) noise per pixel, sigma ~ U(0, max_std) per image."""
    std = _uniform(x.shape[0], 0, max_std, x, generator)
    device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(x.shape, generator=generator, device=device).to(device=x.device, dtype=x.dtype)
    return x + std[:, None, None, None] * noise


def augment_batch(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Distort float `[B, 1, S, S]` images in [0, 1] (glyph bright on dark); same shape and range.

    Deterministic for a given seeded `generator` (a CPU or CUDA `torch.Generator`); the global
    torch RNG when None. Returns `images` unchanged when `cfg.enabled` is false.
    """
    if not cfg.enabled or images.shape[0] == 0:
        return images
    if images.ndim != 4:
        raise ValueError(f"expected images of shape [B, 1, S, S], got {tuple(images.shape)}")
    x = images
    if cfg.stroke_prob > 0:
        x = stroke_width(x, cfg.stroke_prob, cfg.stroke_amount, generator)
    x = affine_jitter(x, cfg.max_rotation_deg, cfg.max_shift, cfg.scale_range, generator)
    if cfg.blur_prob > 0:
        x = gaussian_blur(x, cfg.blur_prob, cfg.blur_sigma, generator)
    if cfg.noise_std > 0:
        x = gaussian_noise(x, cfg.noise_std, generator)
    return x.clamp_(0.0, 1.0)
