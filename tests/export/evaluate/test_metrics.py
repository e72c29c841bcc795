"""Retrieval metrics against hand-computed cases and a brute-force search."""

from __future__ import annotations

import numpy as np
import pytest

from megaclass.export.evaluate.metrics import (
    class_counts,
    hit_rate_at_k,
    map_at_r,
    nearest_labels,
    precision_at_1,
    precision_at_k,
    retrieval_metrics,
)

# query 0 has class 1, query 1 has class 2
RETRIEVED = np.array([[1, 0, 1, 1], [0, 2, 2, 0]])
LABELS = np.array([1, 2])


def test_precision_and_hit_rate_by_hand():
    assert precision_at_1(RETRIEVED, LABELS) == 0.5
    assert precision_at_k(RETRIEVED, LABELS, 2) == 0.5  # (1/2 + 1/2) / 2
    assert precision_at_k(RETRIEVED, LABELS, 4) == 0.625  # (3/4 + 2/4) / 2
    assert hit_rate_at_k(RETRIEVED, LABELS, 1) == 0.5
    assert hit_rate_at_k(RETRIEVED, LABELS, 2) == 1.0
    with pytest.raises(ValueError):
        hit_rate_at_k(RETRIEVED, LABELS, 5)


def test_map_at_r_by_hand():
    # q0: R=3, rel = 1,0,1 -> (P(1) + P(3)) / 3 = (1 + 2/3) / 3 = 5/9
    # q1: R=2, rel = 0,1   -> P(2) / 2 = (1/2) / 2 = 1/4
    assert map_at_r(RETRIEVED, LABELS, np.array([3, 2])) == pytest.approx((5 / 9 + 1 / 4) / 2)
    # perfect ranking -> 1; R = 1 -> MAP@R is P@1
    assert map_at_r(np.array([[7, 7, 3]]), np.array([7]), np.array([2])) == 1.0
    assert map_at_r(RETRIEVED, LABELS, np.array([1, 1])) == precision_at_1(RETRIEVED, LABELS)
    # queries whose class is absent from the gallery (R = 0) are skipped
    assert map_at_r(RETRIEVED, LABELS, np.array([3, 0])) == pytest.approx(5 / 9)
    with pytest.raises(ValueError, match="needs 5"):
        map_at_r(RETRIEVED, LABELS, np.array([5, 1]))


def test_class_counts():
    gallery = np.array([3, 1, 3, 3, 9])
    np.testing.assert_array_equal(class_counts(np.array([3, 1, 4]), gallery), [3, 1, 0])
    np.testing.assert_array_equal(class_counts(np.array([3, 1]), gallery, exclude_self=True), [2, 0])
    np.testing.assert_array_equal(class_counts(np.array([3]), np.array([], dtype=int)), [0])


def test_nearest_labels_matches_brute_force():
    rng = np.random.default_rng(0)
    xb, xq = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(13, 8)).astype(np.float32)
    yb = rng.integers(0, 5, size=50)
    got = nearest_labels(xq, xb, yb, k=6, chunk=4)
    want = yb[np.argsort(-(xq @ xb.T), axis=1, kind="stable")[:, :6]]
    np.testing.assert_array_equal(got, want)
    loo = nearest_labels(xb, xb, yb, k=3, exclude_self=True, chunk=7)
    scores = xb @ xb.T
    np.fill_diagonal(scores, -np.inf)
    np.testing.assert_array_equal(loo, yb[np.argsort(-scores, axis=1, kind="stable")[:, :3]])


def test_retrieval_metrics_on_separable_clusters():
    rng = np.random.default_rng(1)
    centres = np.eye(4, dtype=np.float32)
    yb = np.repeat(np.arange(4), 5)
    xb = centres[yb] + 0.01 * rng.normal(size=(20, 4)).astype(np.float32)
    out = retrieval_metrics(xb, yb, xb, yb, ks=(1, 3), exclude_self=True)
    assert out == {"precision_at_1": 1.0, "hit_rate_at_1": 1.0, "hit_rate_at_3": 1.0, "map_at_r": 1.0}
    shuffled = retrieval_metrics(xb, rng.permutation(yb), xb, yb, ks=(1,))
    assert shuffled["precision_at_1"] < 0.6 and shuffled["map_at_r"] < 0.6


def test_agrees_with_pml_accuracy_calculator():
    """precision@1 and MAP@R as pytorch-metric-learning's AccuracyCalculator computes them (queries apart
    from the gallery; unit vectors, so its L2 neighbours are our inner-product neighbours)."""
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    rng = np.random.default_rng(3)
    yb = rng.integers(0, 6, size=60)
    yq = rng.integers(0, 6, size=25)
    centres = rng.normal(size=(6, 8))
    xb, xq = centres[yb] + rng.normal(size=(60, 8)), centres[yq] + rng.normal(size=(25, 8))
    xb, xq = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (xb, xq))
    ours = retrieval_metrics(xq.astype(np.float32), yq, xb.astype(np.float32), yb, ks=(1,))
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), device=torch.device("cpu"))
    pml = calc.get_accuracy(torch.tensor(xq), torch.tensor(yq), torch.tensor(xb), torch.tensor(yb))
    assert 0.2 < ours["precision_at_1"] < 1.0  # neither trivial nor perfect
    assert ours["precision_at_1"] == pytest.approx(pml["precision_at_1"])
    assert ours["map_at_r"] == pytest.approx(pml["mean_average_precision_at_r"])
