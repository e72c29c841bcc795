"""Synthetic long-tailed generator: determinism, long tail, streaming, held-out splits."""

from __future__ import annotations

import time

import numpy as np
import pytest

from megaclass.export.config import TrainConfig
from megaclass.export.data.synthetic import (
    SyntheticConfig,
    build_synthetic_encoder,
    hashed_normal,
    held_out_queries,
    iter_batches,
    make_samples,
    samples_per_class,
    steps_per_epoch,
    training_samples,
)

CFG = SyntheticConfig(num_classes=300, max_samples=20)


def test_samples_are_a_pure_function_of_seed_class_and_index():
    classes, ids = np.array([5, 5, 17, 299]), np.array([0, 1, 0, 3])
    x = make_samples(CFG, classes, ids)
    assert x.shape == (4, CFG.input_dim) and x.dtype == np.float32
    np.testing.assert_allclose(x[2:3], make_samples(CFG, classes[2:3], ids[2:3]), rtol=1e-6)  # order-free
    np.testing.assert_array_equal(x, make_samples(CFG, classes, ids))
    assert not np.allclose(x, make_samples(SyntheticConfig(**{**CFG.__dict__, "seed": 1}), classes, ids))
    assert not np.allclose(x[0], x[1])  # two samples of one class differ


def test_hashed_normal_is_standard_normal():
    z = hashed_normal(3, 1, np.arange(20_000), np.zeros(20_000, dtype=np.int64), 4)
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    assert abs(np.corrcoef(z[:, 0], z[:, 1])[0, 1]) < 0.03


def test_long_tail_counts():
    counts = samples_per_class(SyntheticConfig(num_classes=100_000, max_samples=50))
    assert counts.min() == 1 and counts.max() == 50
    assert np.mean(counts <= 2) > 0.6  # most classes have one or two samples
    np.testing.assert_array_equal(counts, samples_per_class(SyntheticConfig(num_classes=100_000, max_samples=50)))
    shifted = samples_per_class(SyntheticConfig(num_classes=1000, min_samples=3))
    assert shifted.min() == 3


def test_epoch_visits_every_training_sample_once_in_seeded_order():
    cfg = SyntheticConfig(num_classes=40, max_samples=6)
    counts = samples_per_class(cfg)
    batches = list(iter_batches(cfg, 8, epoch=0))
    assert len(batches) == steps_per_epoch(cfg, 8) == counts.sum() // 8
    labels = np.concatenate([y.numpy() for _, y in batches])
    seen = np.bincount(labels, minlength=40)
    assert np.all(seen <= counts) and seen.sum() == 8 * len(batches)
    gx, gy = training_samples(cfg, np.arange(40))
    rows = {tuple(np.round(v, 5)) for v in gx}
    assert all(tuple(np.round(v, 5)) in rows for x, _ in batches for v in x.numpy())
    again = next(iter(iter_batches(cfg, 8, epoch=0)))[1]
    other = next(iter(iter_batches(cfg, 8, epoch=1)))[1]
    assert np.array_equal(again, batches[0][1]) and not np.array_equal(other, batches[0][1])


def test_m_per_class_batches():
    cfg = SyntheticConfig(num_classes=40, min_samples=4, max_samples=6)
    x, y = next(iter(iter_batches(cfg, 16, epoch=0, m_per_class=4)))
    assert x.shape == (16, cfg.input_dim)
    _, counts = np.unique(y.numpy(), return_counts=True)
    assert counts.tolist() == [4, 4, 4, 4]
    assert len({tuple(v) for v in x.numpy()}) == 16  # distinct samples where a class has m
    with pytest.raises(ValueError):
        next(iter(iter_batches(cfg, 10, epoch=0, m_per_class=4)))


def test_held_out_queries_are_never_trained_on():
    cfg = SyntheticConfig(num_classes=30, max_samples=5)
    gx, gy = training_samples(cfg, np.arange(30))
    qx, qy = held_out_queries(cfg, np.array([0, 1, 30, 31]), per_class=2)  # 30, 31: held-out classes
    assert qy.tolist() == [0, 0, 1, 1, 30, 30, 31, 31]
    dist = np.linalg.norm(qx[:, None] - gx[None], axis=2)
    assert dist.min() > 1e-4
    assert len(gy) == samples_per_class(cfg).sum()


def test_classes_are_separable_in_input_space_but_not_trivially():
    cfg = SyntheticConfig(num_classes=200, min_samples=3, max_samples=10)
    gx, gy = training_samples(cfg, np.arange(200))
    qx, qy = held_out_queries(cfg, np.arange(200), 2)
    n = np.linalg.norm
    nearest = gy[np.argmax((qx / n(qx, axis=1, keepdims=True)) @ (gx / n(gx, axis=1, keepdims=True)).T, axis=1)]
    raw = np.mean(nearest == qy)
    assert 0.1 < raw < 0.95  # something to learn, but learnable


def test_images_kind():
    cfg = SyntheticConfig(num_classes=10, kind="images", image_size=20)
    imgs = make_samples(cfg, np.array([1, 2]), np.array([0, 0]))
    assert imgs.shape == (2, 20, 20) and imgs.dtype == np.uint8 and imgs.std() > 10
    x, y = next(iter(iter_batches(cfg, 4, epoch=0)))
    assert x.shape == (4, 1, 20, 20) and 0 <= x.min() and x.max() <= 1
    assert build_synthetic_encoder(cfg, TrainConfig(embedding_dim=8, width=4)).args["embedding_dim"] == 8


def test_a_million_classes_stream_cheaply():
    cfg = SyntheticConfig(num_classes=1_000_000)
    t = time.perf_counter()
    counts = samples_per_class(cfg)
    x, y = next(iter(iter_batches(cfg, 1024, epoch=0, counts=counts)))
    assert x.shape == (1024, cfg.input_dim) and int(y.max()) < 1_000_000
    assert time.perf_counter() - t < 10
    assert counts.sum() > 2_000_000
