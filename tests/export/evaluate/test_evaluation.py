"""Evaluation pieces on small hand-computed cases: cost-aware error, the coarse router, splits, the report."""

from __future__ import annotations

import math

import numpy as np

from megaclass.export.config import IndexConfig
from megaclass.export.evaluate.evaluation import (
    EvalSets,
    _first_unique,
    coarse_clusters,
    cost_aware_error,
    evaluate_sets,
    head_precision_at_1,
    plot_prototypes_pca,
    split_masks,
)


def test_cost_aware_error_hand_computed():
    true = np.array([1, 2, 3, 4, 5])
    pred = np.array([1, 3, 4, 6, 5])
    cluster_of = {1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 2}
    # wrong answers: 2->3 (cluster 0 = 0: near miss), 3->4 (0 vs 1), 4->6 (1 vs 2) -> 1 of 3
    assert cost_aware_error(true, pred, cluster_of) == 1 / 3


def test_cost_aware_error_edge_cases():
    assert math.isnan(cost_aware_error(np.array([1, 2]), np.array([1, 2]), {1: 0, 2: 0}))
    # a class with no cluster is never a near miss, even against another unclustered class
    assert cost_aware_error(np.array([7]), np.array([8]), {}) == 0.0
    assert cost_aware_error(np.array([1, 2]), np.array([2, 1]), {1: 4, 2: 4}) == 1.0


def test_coarse_clusters_follow_groups():
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:3] * 10
    protos = np.concatenate([c + rng.normal(0, 0.05, (5, 8)) for c in centres]).astype(np.float32)
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    ids = np.arange(15)
    centroids, assign, cluster_of = coarse_clusters(protos, ids, IndexConfig(nlist=3))
    assert centroids.shape == (3, 8) and assign.shape == (15,)
    for g in range(3):
        assert len({cluster_of[i] for i in range(5 * g, 5 * g + 5)}) == 1
    assert len({cluster_of[0], cluster_of[5], cluster_of[10]}) == 3


def test_split_masks_and_first_unique():
    m = split_masks(np.array([1, 2, 3, 9]), {1: 1, 2: 2, 3: 3})
    assert m["seen_classes"].tolist() == [True, True, True, False]
    assert m["tail"].tolist() == [True, True, False, False]
    assert m["held_out_classes"].tolist() == [False, False, False, True]
    assert _first_unique(np.array([5, 5, 2, 5, 3]), 4).tolist() == [5, 2, 3, -1]


def test_head_precision_at_1():
    logits = np.array([[0.1, 2.0], [3.0, 0.0], [0.0, 1.0]])
    assert head_precision_at_1(logits, np.array([10, 20]), np.array([20, 10, 10])) == 2 / 3


def test_evaluate_sets_on_precomputed_embeddings(tmp_path):
    """Orthogonal class directions: every query answered right, seen and held-out alike."""
    rng = np.random.default_rng(1)
    dirs = np.eye(6, dtype=np.float32)
    enrol_y = np.repeat(np.arange(6), [3, 1, 2, 3, 3, 2])
    enrol = dirs[enrol_y] + rng.normal(0, 0.05, (len(enrol_y), 6)).astype(np.float32)
    query_y = np.arange(6)
    query = dirs + rng.normal(0, 0.05, (6, 6)).astype(np.float32)
    sets = EvalSets(enrol, enrol_y, query, query_y, trained_counts={0: 3, 1: 1, 2: 2, 3: 3})
    report, arrays = evaluate_sets(None, sets, IndexConfig(nlist=2), ks=(1, 3))
    s = report["splits"]
    assert s["seen_classes"]["queries"] == 4 and s["tail"]["queries"] == 2 and s["held_out_classes"]["queries"] == 2
    for name in s:
        assert s[name]["precision_at_1"] == 1.0 and s[name]["map_at_r"] == 1.0
        assert math.isnan(s[name]["cost_aware_error"])
    assert report["enrolled_classes"] == 6 and arrays["prototypes"].shape == (6, 6)
    png = plot_prototypes_pca(arrays["prototypes"], arrays["clusters"], tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
