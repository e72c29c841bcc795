"""The coarse router: balanced k-means over prototypes (or clusters given as groups, e.g. the branches of a
class taxonomy: `group_primary`), capacity-bounded assignment, SOAR spilling.

Inner-product metric throughout. Centroids are cluster means (not re-normalised), so that for a
prototype x = c + r stored in cluster c a query scores q·x = q·c + q·r: routing by q·c errs by q·r,
which SOAR spilling makes small for the second copy (its residual is chosen nearly orthogonal to r).
"""

from __future__ import annotations

import faiss
import numpy as np

_CHUNK = 65536  # rows per block when scoring against centroids


def top_clusters(x: np.ndarray, centroids: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """The `t` best clusters of each row by inner product: (scores float32 [n, t], ids int64 [n, t]), best first."""
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    t = min(t, len(centroids))
    scores, ids = index.search(np.ascontiguousarray(x, dtype=np.float32), t)
    return scores, ids


def capacity_assign(
    pref: np.ndarray, score: np.ndarray, nlist: int, room: np.ndarray, forbid: np.ndarray | None = None
) -> np.ndarray:
    """Give each row one cluster from its preference list without exceeding `room` [nlist].

    `pref` int64 [n, t] (-1 = no candidate) in preference order with `score` [n, t] (higher = better).
    In round r every unplaced row asks for its r-th choice; a cluster with too little room keeps the
    best-scoring askers. Rows whose choices are all full get -1. `forbid` [n]: a cluster each row may
    not take (its primary, when spilling). `room` is not modified.
    """
    n, t = pref.shape
    out = np.full(n, -1, dtype=np.int64)
    room = room.astype(np.int64).copy()
    for r in range(t):
        rows = np.flatnonzero(out < 0)
        if len(rows) == 0:
            break
        want = pref[rows, r]
        ok = want >= 0
        if forbid is not None:
            ok &= want != forbid[rows]
        rows, want, s = rows[ok], want[ok], score[rows[ok], r]
        order = np.lexsort((-s, want))
        rows, want = rows[order], want[order]
        first = np.searchsorted(want, want, side="left")
        rank = np.arange(len(want)) - first
        take = rank < room[want]
        out[rows[take]] = want[take]
        room -= np.bincount(want[take], minlength=nlist)
    return out


def cluster_means(x: np.ndarray, assign: np.ndarray, nlist: int, old: np.ndarray | None = None) -> np.ndarray:
    """Mean of the rows of each cluster (an empty cluster keeps `old` or gets a random row)."""
    d = x.shape[1]
    sums = np.zeros((nlist, d), dtype=np.float64)
    order = np.argsort(assign, kind="stable")
    for s0 in range(0, len(order), 1 << 20):  # reduceat per block bounds the float64 copy
        sl = order[s0 : s0 + (1 << 20)]
        a = assign[sl]
        pres, st = np.unique(a, return_index=True)
        sums[pres] += np.add.reduceat(x[sl].astype(np.float64), st, axis=0)
    counts = np.bincount(assign, minlength=nlist).astype(np.float64)
    empty = counts == 0
    means = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
    if empty.any():
        rng = np.random.default_rng(int(nlist))
        means[empty] = old[empty] if old is not None else x[rng.integers(0, len(x), int(empty.sum()))]
    return means


def train_centroids(
    x: np.ndarray,
    nlist: int,
    *,
    seed: int = 0,
    iters: int = 20,
    sample_per_list: int = 64,
    balance: float | None = 1.5,
    balanced_iters: int = 4,
    progress: bool = False,
) -> np.ndarray:
    """k-means (inner product) on a sample of `x`, then a few capacity-bounded Lloyd steps.

    The capacity is `balance` × the mean cluster size (None: plain k-means). Returns float32 [nlist, D].
    """
    n, d = x.shape
    rng = np.random.default_rng(seed)
    m = min(n, max(nlist * sample_per_list, nlist))
    sample = x if m == n else x[np.sort(rng.choice(n, m, replace=False))]
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if nlist == 1:
        return sample.mean(axis=0, keepdims=True).astype(np.float32)
    km = faiss.Kmeans(d, nlist, niter=iters, seed=seed, spherical=True, verbose=progress)
    km.cp.max_points_per_centroid = max(sample_per_list, 1)
    km.train(sample)
    # start from means of the spherical clusters
    _, a = top_clusters(sample, km.centroids, 1)
    centroids = cluster_means(sample, a[:, 0], nlist, km.centroids)
    if balance is None or balance <= 0:
        return centroids
    capacity = np.full(nlist, int(np.ceil(balance * len(sample) / nlist)))
    for _ in range(balanced_iters):
        a = assign_primary(sample, centroids, capacity)
        centroids = cluster_means(sample, a, nlist, centroids)
    return centroids


def group_primary(x: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clusters seeded from given groups instead of k-means: (centroids float32 [G, D], cluster of each row [n]).

    `groups` int64 [n]: a group per row (any ids; -1: none). Each distinct group is one cluster whose
    seed centroid is the L2-normalised mean of its rows; a row without a group goes to the cluster of
    the nearest seed. The returned centroids are the normalised means of the clusters so filled.
    """
    groups = np.asarray(groups, dtype=np.int64)
    if groups.shape != (len(x),):
        raise ValueError(f"groups must give one group per prototype ({len(x)}), got shape {groups.shape}")
    seeded = groups >= 0
    if not seeded.any():
        raise ValueError("no prototype has a routing group")
    names, primary_seeded = np.unique(groups[seeded], return_inverse=True)
    primary = np.empty(len(x), dtype=np.int64)
    primary[seeded] = primary_seeded
    seeds = _normalised(cluster_means(x[seeded], primary_seeded, len(names)))
    if not seeded.all():
        primary[~seeded] = top_clusters(x[~seeded], seeds, 1)[1][:, 0]
    return _normalised(cluster_means(x, primary, len(names))), primary


def _normalised(c: np.ndarray) -> np.ndarray:
    return (c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def assign_primary(x: np.ndarray, centroids: np.ndarray, capacity: np.ndarray, candidates: int = 8) -> np.ndarray:
    """Best cluster of each row without exceeding `capacity` [nlist] (needs capacity.sum() >= len(x))."""
    nlist = len(centroids)
    if capacity.sum() < len(x):
        raise ValueError(f"capacity {capacity.sum()} cannot hold {len(x)} rows")
    s, p = top_clusters(x, centroids, candidates)
    out = capacity_assign(p, s, nlist, capacity)
    while (left := np.flatnonzero(out < 0)).size:  # rare: all first choices full; widen to clusters with room
        room = capacity - np.bincount(out[out >= 0], minlength=nlist)
        open_ = np.flatnonzero(room > 0)
        s, p = top_clusters(x[left], centroids[open_], 32)
        out[left] = np.where((got := capacity_assign(open_[p], s, nlist, room)) >= 0, got, -1)
    return out


def soar_loss(x: np.ndarray, primary_c: np.ndarray, cand_c: np.ndarray, lam: float) -> np.ndarray:
    """SOAR spill loss of candidate clusters: ||x - c'||² + λ <r̂, x - c'>², r = x - c (primary residual).

    `x` [n, D], `primary_c` [n, D], `cand_c` [n, t, D] -> loss [n, t] (lower is better).
    """
    r = x - primary_c
    r_hat = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    res = x[:, None, :] - cand_c  # [n, t, D]
    along = np.einsum("ntd,nd->nt", res, r_hat)
    return np.einsum("ntd,ntd->nt", res, res) + lam * along * along


def assign_spill(
    x: np.ndarray,
    centroids: np.ndarray,
    primary: np.ndarray,
    capacity: np.ndarray,
    *,
    spill: int = 1,
    lam: float = 1.0,
    candidates: int = 16,
) -> np.ndarray:
    """`spill` extra clusters per row chosen by the SOAR loss; int64 [n, spill] (-1 where none fits).

    `capacity` [nlist] bounds primary plus spilled entries per cluster.
    """
    n = len(x)
    out = np.full((n, spill), -1, dtype=np.int64)
    if spill == 0 or len(centroids) < 2:
        return out
    t = min(candidates, len(centroids))
    _, cand = top_clusters(x, centroids, t)
    loss = np.empty(cand.shape, dtype=np.float32)
    for s0 in range(0, n, _CHUNK // 4):
        sl = slice(s0, min(n, s0 + _CHUNK // 4))
        loss[sl] = soar_loss(x[sl], centroids[primary[sl]], centroids[cand[sl]], lam)
    used = np.zeros((n, spill + 1), dtype=np.int64)
    used[:, 0] = primary
    room = capacity.astype(np.int64) - np.bincount(primary, minlength=len(centroids))
    for j in range(spill):
        masked = np.where((cand[:, :, None] == used[:, None, : j + 1]).any(axis=2), -1, cand)
        order = np.argsort(np.where(masked >= 0, loss, np.inf), axis=1, kind="stable")
        pref = np.take_along_axis(masked, order, axis=1)
        score = -np.take_along_axis(loss, order, axis=1)
        got = capacity_assign(pref, score, len(centroids), room, forbid=primary)
        room -= np.bincount(got[got >= 0], minlength=len(centroids))
        out[:, j] = got
        used[:, j + 1] = got
    return out


def route(xq: np.ndarray, centroids: np.ndarray, nprobe: int, margin: float | None = None) -> np.ndarray:
    """The `nprobe` best clusters per query by inner product, best first (numpy; int64 [Q, nprobe]);
    with a `margin`, those that drop_far_probes drops are -1."""
    s = xq @ centroids.T
    nprobe = min(nprobe, centroids.shape[0])
    if nprobe < s.shape[1]:
        part = np.argpartition(-s, nprobe - 1, axis=1)[:, :nprobe]
    else:
        part = np.broadcast_to(np.arange(s.shape[1]), s.shape).copy()
    top = np.take_along_axis(s, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    probes = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return drop_far_probes(probes, np.take_along_axis(top, order, axis=1), margin)


def drop_far_probes(probes: np.ndarray, scores: np.ndarray, margin: float | None) -> np.ndarray:
    """Adaptive probing: of each query's probes (best first, with their route scores), keep the best and
    those scoring at least best - `margin`; the others become -1 (None: keep all). A query deep inside
    one cluster then probes fewer than one near a border, for the same recall fewer entries scanned."""
    if margin is None or probes.shape[1] < 2:
        return probes
    far = scores < scores[:, :1] - np.float32(margin)
    far[:, 0] = False
    return np.where(far, -1, probes)
