"""Router pieces: capacity-bounded assignment, balanced k-means, SOAR spilling, routing."""

from __future__ import annotations

import numpy as np
import pytest

from megaclass.python_backend.index.router import (
    assign_primary,
    assign_spill,
    capacity_assign,
    cluster_means,
    drop_far_probes,
    group_primary,
    route,
    soar_loss,
    top_clusters,
    train_centroids,
)

from .conftest import unit_rows


def _skewed(n: int, d: int, seed: int) -> np.ndarray:
    """Clusters of very different sizes (what plain k-means leaves unbalanced)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, d))
    weights = 1.0 / np.arange(1, 13) ** 1.5
    g = rng.choice(12, n, p=weights / weights.sum())
    return unit_rows(centres[g] + 0.3 * rng.standard_normal((n, d)))


def test_capacity_assign_respects_capacity_and_prefers_best_scores() -> None:
    pref = np.array([[0, 1], [0, 1], [0, 1], [1, 0]])
    score = np.array([[0.9, 0.1], [0.5, 0.4], [0.7, 0.2], [0.8, 0.3]])
    got = capacity_assign(pref, score, 2, np.array([2, 2]))
    assert got.tolist() == [0, 1, 0, 1]  # row 1 has the weakest claim on cluster 0 and moves
    assert capacity_assign(pref, score, 2, np.array([1, 1])).tolist() == [0, -1, -1, 1]


def test_balanced_assignment_has_no_cluster_over_the_cap() -> None:
    x = _skewed(6000, 16, seed=0)
    nlist = 24
    c = train_centroids(x, nlist, seed=0, iters=10, balance=1.5)
    cap = np.full(nlist, int(np.ceil(1.5 * len(x) / nlist)))
    a = assign_primary(x, c, cap)
    sizes = np.bincount(a, minlength=nlist)
    assert (a >= 0).all() and sizes.sum() == len(x)
    assert sizes.max() <= cap[0] <= 2 * sizes.mean()
    # plain k-means on the same data is far more uneven
    plain = top_clusters(x, train_centroids(x, nlist, seed=0, iters=10, balance=None), 1)[1][:, 0]
    assert np.bincount(plain, minlength=nlist).max() > sizes.max()


def test_cluster_means_match_a_loop() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 5)).astype(np.float32)
    a = rng.integers(0, 7, 200)
    a[a == 3] = 4  # cluster 3 empty
    old = np.full((7, 5), 9.0, np.float32)
    m = cluster_means(x, a, 7, old)
    for c in range(7):
        want = x[a == c].mean(axis=0) if (a == c).any() else old[c]
        np.testing.assert_allclose(m[c], want, atol=1e-5)


def test_soar_picks_the_cluster_with_the_orthogonal_residual() -> None:
    # x sits between c0 (primary) and two candidates: c1 lies further along the primary residual
    # direction, c2 is a bit further away but orthogonal to it. SOAR prefers c2; distance prefers c1.
    x = np.array([[0.0, 0.0]], np.float32)
    c = np.array([[-1.0, 0.0], [1.05, 0.0], [0.0, 1.2]], np.float32)
    loss = soar_loss(x, c[[0]], c[None, [1, 2]], lam=1.0)
    assert loss[0, 1] < loss[0, 0]
    assert np.linalg.norm(x - c[1]) < np.linalg.norm(x - c[2])
    got = assign_spill(x, c, np.array([0]), np.array([5, 5, 5]), spill=1, lam=1.0, candidates=3)
    assert got.tolist() == [[2]]
    # with lam = 0 it is plain distance: the nearest other cluster
    got0 = assign_spill(x, c, np.array([0]), np.array([5, 5, 5]), spill=1, lam=0.0, candidates=3)
    assert got0.tolist() == [[1]]


def test_spill_never_repeats_the_primary_and_keeps_capacity() -> None:
    x = _skewed(3000, 16, seed=2)
    nlist = 16
    c = train_centroids(x, nlist, seed=0, iters=8)
    cap = np.full(nlist, int(np.ceil(1.5 * 2 * len(x) / nlist)))
    primary = assign_primary(x, c, np.full(nlist, int(np.ceil(1.5 * len(x) / nlist))))
    spill = assign_spill(x, c, primary, cap, spill=2)
    assert spill.shape == (3000, 2)
    assert not (spill == primary[:, None]).any()
    assert ((spill[:, 0] != spill[:, 1]) | (spill[:, 1] < 0)).all()
    total = np.bincount(primary, minlength=nlist) + np.bincount(spill[spill >= 0], minlength=nlist)
    assert total.max() <= cap[0]


def test_route_returns_the_best_clusters_in_order() -> None:
    rng = np.random.default_rng(3)
    c = rng.standard_normal((30, 8)).astype(np.float32)
    q = rng.standard_normal((5, 8)).astype(np.float32)
    want = np.argsort(-(q @ c.T), axis=1)[:, :4]
    np.testing.assert_array_equal(route(q, c, 4), want)
    assert route(q, c, 100).shape == (5, 30)


def test_drop_far_probes_keeps_the_best_and_those_within_the_margin() -> None:
    probes = np.array([[4, 7, 1, 9], [2, 3, 5, 0]])
    scores = np.array([[0.9, 0.85, 0.7, 0.1], [0.5, 0.2, 0.19, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(drop_far_probes(probes, scores, 0.1), [[4, 7, -1, -1], [2, -1, -1, -1]])
    np.testing.assert_array_equal(drop_far_probes(probes, scores, 0.0), [[4, -1, -1, -1], [2, -1, -1, -1]])
    np.testing.assert_array_equal(drop_far_probes(probes, scores, None), probes)
    np.testing.assert_array_equal(drop_far_probes(probes, scores, 10.0), probes)
    rng = np.random.default_rng(4)
    c = rng.standard_normal((30, 8)).astype(np.float32)
    q = rng.standard_normal((50, 8)).astype(np.float32)
    got = route(q, c, 6, margin=1.0)
    s = np.sort(q @ c.T, axis=1)[:, ::-1][:, :6]
    np.testing.assert_array_equal((got >= 0).sum(axis=1), (s >= s[:, :1] - 1.0).sum(axis=1))
    np.testing.assert_array_equal(got[got >= 0], route(q, c, 6)[got >= 0])


def test_group_primary_puts_each_row_in_its_groups_cluster() -> None:
    rng = np.random.default_rng(3)
    parents = unit_rows(rng.standard_normal((4, 24)))
    groups = np.repeat([70, 10, 40, 20], 30)  # any ids; 4 branches of 30 prototypes
    x = unit_rows(parents[np.repeat(np.arange(4), 30)] + 0.35 * rng.standard_normal((120, 24)))
    centroids, primary = group_primary(x, groups)
    assert centroids.shape == (4, 24) and np.allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    assert len(np.unique(primary)) == 4
    for g in np.unique(groups):  # one cluster per group, holding exactly that group's rows
        assert len(np.unique(primary[groups == g])) == 1
    mean = x[groups == 40].mean(axis=0)
    np.testing.assert_allclose(centroids[primary[groups == 40][0]], mean / np.linalg.norm(mean), atol=1e-5)
    # rows without a group join the cluster of the nearest seed
    orphans = unit_rows(parents[[2, 0]] + 0.05 * rng.standard_normal((2, 24)))
    _, p2 = group_primary(np.vstack([x, orphans]), np.concatenate([groups, [-1, -1]]))
    assert p2[-2] == p2[60] and p2[-1] == p2[0]  # parent 2 is group 40 (rows 60..89), parent 0 group 70


def test_group_primary_refuses_bad_groups() -> None:
    x = unit_rows(np.eye(3, 8))
    with pytest.raises(ValueError, match="no prototype has a routing group"):
        group_primary(x, np.full(3, -1))
    with pytest.raises(ValueError, match="one group per prototype"):
        group_primary(x, np.zeros(2, dtype=np.int64))
