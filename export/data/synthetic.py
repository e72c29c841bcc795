"""Synthetic long-tailed classes for scale work: up to millions of classes, streamed by seed.

Class c has a latent centre mu_c ~ N(0, I_latent); its j-th sample is
x = g(mu_c + noise * eps_cj, nu_cj), eps_cj, nu_cj ~ N(0, I) (nu: nuisance factors that carry
no class information and that a good encoder learns to ignore), with g a fixed random non-linear map
(a two-layer tanh network) to the input space: vectors `[input_dim]` float32, or images
uint8 `[S, S]` (g's output is an 8×8 field, bilinearly upsampled, squashed to [0, 255]).
mu_c and eps_cj are hashes of (seed, c, j), so any sample can be made on its own, in any
order, without storing the set. Class c has n_c training samples, n_c - min_samples + 1
~ Zipf(zipf_exponent) truncated at max_samples: most classes have one or two. Samples with
j >= n_c are never trained on (held-out queries of seen classes); class ids >= num_classes
are never trained on (held-out classes, for enrolment).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from megaclass.export.config import TrainConfig
from megaclass.python_backend.serving.encoder_model import GlyphEncoder, VectorEncoder
from megaclass.python_backend.serving.preprocess import to_model_input

_CENTRE, _NOISE, _NUISANCE = 1, 2, 3  # hash streams
_LOW_RES = 8  # images: g's output field is _LOW_RES × _LOW_RES before upsampling


@dataclass(frozen=True)
class SyntheticConfig:
    """The synthetic population (move into config.py's `MegaclassConfig` when wired to the CLI)."""

    num_classes: int = 100_000
    zipf_exponent: float = 2.0
    min_samples: int = 1
    max_samples: int = 200
    latent_dim: int = 32
    hidden_dim: int = 128
    noise: float = 0.35  # within-class spread in latent space (centres are N(0, I))
    nuisance_dim: int = 16  # extra N(0, I) latent inputs of g that carry no class information
    kind: Literal["vectors", "images"] = "vectors"
    input_dim: int = 64  # vectors
    image_size: int = 32  # images
    seed: int = 0


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hashed_normal(seed: int, stream: int, a: np.ndarray, b: np.ndarray, dim: int) -> np.ndarray:
    """float32 `[n, dim]` standard normals, a pure function of (seed, stream, a[i], b[i], column)."""
    with np.errstate(over="ignore"):
        key = _splitmix64(np.full(len(a), (seed << 8) ^ stream, dtype=np.uint64))
        key = _splitmix64(key ^ np.asarray(a, dtype=np.uint64))
        key = _splitmix64(key ^ (np.asarray(b, dtype=np.uint64) * np.uint64(0xD6E8FEB86659FD93)))
        cols = np.arange(2 * dim, dtype=np.uint64)
        bits = _splitmix64(key[:, None] + cols[None, :] * np.uint64(0x9E3779B97F4A7C15))
    u = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53  # (0, 1)
    u1, u2 = u[:, :dim], u[:, dim:]
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).astype(np.float32)


def samples_per_class(cfg: SyntheticConfig) -> np.ndarray:
    """int64 `[num_classes]` training samples per class (truncated Zipf, shifted by min_samples - 1)."""
    rng = np.random.default_rng([cfg.seed, 7])
    draws = rng.zipf(cfg.zipf_exponent, size=cfg.num_classes)
    return np.minimum(draws + cfg.min_samples - 1, cfg.max_samples).astype(np.int64)


def _map_weights(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """g's fixed random weights (float64), drawn from the seed."""
    rng = np.random.default_rng([cfg.seed, 11])
    out_dim = cfg.input_dim if cfg.kind == "vectors" else _LOW_RES * _LOW_RES
    fan_in = cfg.latent_dim + cfg.nuisance_dim
    w1 = rng.normal(0, 1.5 / np.sqrt(fan_in), (fan_in, cfg.hidden_dim))
    b1 = rng.normal(0, 0.5, cfg.hidden_dim)
    w2 = rng.normal(0, 1.0 / np.sqrt(cfg.hidden_dim), (cfg.hidden_dim, out_dim))
    b2 = rng.normal(0, 0.1, out_dim)
    return w1, b1, w2, b2


def make_samples(cfg: SyntheticConfig, classes: np.ndarray, sample_ids: np.ndarray) -> np.ndarray:
    """Sample `sample_ids[i]` of class `classes[i]`: float32 `[n, input_dim]` or uint8 `[n, S, S]`."""
    classes, sample_ids = np.asarray(classes), np.asarray(sample_ids)
    centres = hashed_normal(cfg.seed, _CENTRE, classes, np.zeros_like(classes), cfg.latent_dim)
    z = centres + cfg.noise * hashed_normal(cfg.seed, _NOISE, classes, sample_ids, cfg.latent_dim)
    if cfg.nuisance_dim:
        z = np.hstack([z, hashed_normal(cfg.seed, _NUISANCE, classes, sample_ids, cfg.nuisance_dim)])
    w1, b1, w2, b2 = _map_weights(cfg)
    x = np.tanh(z.astype(np.float64) @ w1 + b1) @ w2 + b2  # float64: batch-independent to float32 rounding
    if cfg.kind == "vectors":
        return x.astype(np.float32)
    field = torch.from_numpy(x.astype(np.float32)).view(-1, 1, _LOW_RES, _LOW_RES)
    up = F.interpolate(field, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    return (torch.sigmoid(2.0 * up[:, 0]) * 255).round().to(torch.uint8).numpy()


def to_input(cfg: SyntheticConfig, samples: np.ndarray) -> torch.Tensor:
    """Samples -> the encoder's float32 input tensor."""
    return torch.from_numpy(samples if cfg.kind == "vectors" else to_model_input(samples))


def iter_batches(
    cfg: SyntheticConfig,
    batch_size: int,
    epoch: int,
    m_per_class: int | None = None,
    counts: np.ndarray | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch (sum(counts) // batch_size batches) of (encoder input, labels int64 `[B]`).

    Without `m_per_class`: every training sample once, in an order shuffled by (seed, epoch).
    With it: each batch holds batch_size / m classes drawn uniformly, m samples each
    (distinct where the class has m), as metric losses with mining want.
    """
    counts = samples_per_class(cfg) if counts is None else counts
    offsets = np.concatenate([[0], np.cumsum(counts)])
    total = int(offsets[-1])
    steps = max(total // batch_size, 1)
    rng = np.random.default_rng([cfg.seed, 13, epoch])
    order = rng.permutation(total) if m_per_class is None else None
    for step in range(steps):
        if order is not None:
            flat = order[step * batch_size : (step + 1) * batch_size]
            classes = np.searchsorted(offsets, flat, side="right") - 1
            ids = flat - offsets[classes]
        else:
            if batch_size % m_per_class:
                raise ValueError(f"batch_size {batch_size} is not a multiple of m_per_class {m_per_class}")
            chosen = rng.choice(len(counts), size=batch_size // m_per_class, replace=False)
            start = rng.integers(0, counts[chosen])
            classes = np.repeat(chosen, m_per_class)
            ids = (np.repeat(start, m_per_class) + np.tile(np.arange(m_per_class), len(chosen))) % counts[classes]
        x = to_input(cfg, make_samples(cfg, classes, ids))
        yield x, torch.from_numpy(classes.astype(np.int64))


def steps_per_epoch(cfg: SyntheticConfig, batch_size: int, counts: np.ndarray | None = None) -> int:
    """Batches per epoch of `iter_batches`."""
    counts = samples_per_class(cfg) if counts is None else counts
    return max(int(counts.sum()) // batch_size, 1)


def held_out_queries(
    cfg: SyntheticConfig, classes: np.ndarray, per_class: int, counts: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(samples, labels): `per_class` never-trained samples (j >= n_c) of each of `classes`.

    Class ids >= num_classes are held-out classes: all their samples are unseen.
    """
    counts = samples_per_class(cfg) if counts is None else counts
    classes = np.asarray(classes, dtype=np.int64)
    first = np.where(classes < cfg.num_classes, counts[np.minimum(classes, len(counts) - 1)], 0)
    labels = np.repeat(classes, per_class)
    ids = np.repeat(first, per_class) + np.tile(np.arange(per_class), len(classes))
    return make_samples(cfg, labels, ids), labels


def training_samples(
    cfg: SyntheticConfig, classes: np.ndarray, counts: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(samples, labels): every training sample of `classes` (e.g. to build their prototypes)."""
    counts = samples_per_class(cfg) if counts is None else counts
    classes = np.asarray(classes, dtype=np.int64)
    n = counts[classes]
    labels = np.repeat(classes, n)
    ids = np.arange(len(labels)) - np.repeat(np.cumsum(n) - n, n)
    return make_samples(cfg, labels, ids), labels


def build_synthetic_encoder(cfg: SyntheticConfig, train: TrainConfig) -> nn.Module:
    """A `VectorEncoder` (vectors) or `GlyphEncoder` (images) sized for `cfg`."""
    if cfg.kind == "vectors":
        return VectorEncoder(cfg.input_dim, train.embedding_dim, hidden=8 * train.width)
    return GlyphEncoder(train.embedding_dim, train.width)
