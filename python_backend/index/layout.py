"""Where the index's entries live: the router's clusters (with SOAR spills), the storage codec, and
the clusters padded to one capacity for the grouped scans.

Plain functions over arrays; `RoutedIndex.build`, `rebuild_router` and `add` call them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from megaclass.python_backend.index import storage as storage_mod
from megaclass.python_backend.index.config import IndexConfig
from megaclass.python_backend.index.router import (
    assign_primary,
    assign_spill,
    cluster_means,
    group_primary,
    train_centroids,
)

ADD_CHUNK = 262144  # rows encoded / added / measured at a time (bounds the temporary memory)


def default_nlist(num_prototypes: int) -> int:
    """About 4 √P clusters (at least 1, at most P)."""
    return max(1, min(num_prototypes, int(round(4 * np.sqrt(num_prototypes)))))


def capacities(num_rows: int, nlist: int, cfg: IndexConfig) -> tuple[np.ndarray, np.ndarray]:
    """(primary capacity, total capacity incl. spill) per cluster."""
    if not cfg.balance or cfg.balance <= 0:
        big = np.full(nlist, num_rows * (1 + cfg.spill), dtype=np.int64)
        return big, big
    primary = int(np.ceil(cfg.balance * num_rows / nlist))
    total = int(np.ceil(cfg.balance * num_rows * (1 + cfg.spill) / nlist))
    return np.full(nlist, primary, dtype=np.int64), np.full(nlist, total, dtype=np.int64)


def route_rows(
    xb: np.ndarray, nlist: int, cfg: IndexConfig, progress: bool, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train the router and assign every row (plus SOAR spills): (centroids, entry_row, entry_list).

    `groups` (int64 [P], -1: none): the clusters are these groups instead of k-means (router.group_primary:
    routing by a taxonomy level); then `nlist` and `balance` do not apply to the primary assignment."""
    if groups is not None:
        centroids, primary = group_primary(xb, groups)
        return with_spills(xb, centroids, primary, cfg)
    balance = cfg.balance if cfg.balance and cfg.balance > 0 else None
    centroids = train_centroids(
        xb,
        nlist,
        seed=cfg.seed,
        iters=cfg.kmeans_iters,
        sample_per_list=cfg.kmeans_sample,
        balance=balance,
        progress=progress,
    )
    cap_primary, _ = capacities(len(xb), nlist, cfg)
    primary = assign_primary(xb, centroids, cap_primary)
    centroids = cluster_means(xb, primary, nlist, centroids)
    return with_spills(xb, centroids, primary, cfg)


def with_spills(
    xb: np.ndarray, centroids: np.ndarray, primary: np.ndarray, cfg: IndexConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centroids, entry_row, entry_list): each row in its primary cluster, plus `cfg.spill` SOAR copies."""
    rows = np.arange(len(xb), dtype=np.int64)
    nlist = len(centroids)
    if cfg.spill <= 0 or nlist < 2:
        return centroids, rows, primary
    _, cap_total = capacities(len(xb), nlist, cfg)
    spill = assign_spill(xb, centroids, primary, cap_total, spill=cfg.spill, lam=cfg.soar_lambda)
    ok = spill >= 0
    extra_rows = np.broadcast_to(rows[:, None], spill.shape)[ok]
    return centroids, np.concatenate([rows, extra_rows]), np.concatenate([primary, spill[ok]])


def assign_new(xb: np.ndarray, centroids: np.ndarray, cfg: IndexConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clusters for added rows (nearest, SOAR spills): (primary [n], spilled row indices, their clusters)."""
    nlist = len(centroids)
    # No capacity here: a row goes where the router will look for it. Drift then shows as uneven
    # clusters or growing residuals (`needs_rebuild`), and `rebuild_router` re-balances.
    cap = np.full(nlist, len(xb) * (1 + max(cfg.spill, 0)), dtype=np.int64)
    primary = assign_primary(xb, centroids, cap)
    if cfg.spill <= 0 or nlist < 2:
        return primary, np.zeros(0, np.int64), np.zeros(0, np.int64)
    spill = assign_spill(xb, centroids, primary, cap, spill=cfg.spill, lam=cfg.soar_lambda)
    r, j = np.nonzero(spill >= 0)
    return primary, r.astype(np.int64), spill[r, j]


def mean_residual(vectors: np.ndarray, centroids: np.ndarray, entry_row: np.ndarray, entry_list: np.ndarray) -> float:
    """Mean squared distance of stored entries to their cluster's centroid."""
    total = 0.0
    for s in range(0, len(entry_row), ADD_CHUNK):
        r = vectors[entry_row[s : s + ADD_CHUNK]] - centroids[entry_list[s : s + ADD_CHUNK]]
        total += float(np.einsum("nd,nd->", r, r))
    return total / max(len(entry_row), 1)


def train_codec(
    xb: np.ndarray, cfg: IndexConfig, centroids: np.ndarray, entry_row: np.ndarray, entry_list: np.ndarray
) -> dict[str, np.ndarray]:
    """The storage codec, trained on a sample of the stored rows (of their residuals to their first
    cluster when cfg.pq_residual: the codes then hold x - centroid)."""
    rows, first = np.unique(entry_row, return_index=True)  # stored rows and each one's first (primary) entry
    rng = np.random.default_rng(cfg.seed)
    n = min(len(rows), 65536)
    pick = np.arange(len(rows)) if n == len(rows) else np.sort(rng.choice(len(rows), n, replace=False))
    sample = xb[rows[pick]]
    if cfg.storage == "pq" and cfg.pq_residual:
        sample = sample - centroids[entry_list[first[pick]]]
    return storage_mod.train_codec(cfg.storage, sample, pq_m=cfg.pq_m, pq_bits=cfg.pq_bits, opq=cfg.opq, seed=cfg.seed)


def padded_layout(
    entry_row: np.ndarray,
    entry_list: np.ndarray,
    nlist: int,
    vectors: np.ndarray,
    storage: str,
    codec: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Clusters padded to one capacity: codes [C, cap, D] and rows [C, cap] (-1 = empty slot)."""
    order = np.argsort(entry_list, kind="stable")
    lists, rows = entry_list[order], entry_row[order]
    sizes = np.bincount(lists, minlength=nlist)
    cap = max(int(sizes.max()) if len(sizes) else 1, 1)
    pos = np.arange(len(lists)) - (np.cumsum(sizes) - sizes)[lists]
    rows_p = np.full((nlist, cap), -1, dtype=np.int64)
    rows_p[lists, pos] = rows
    sample = storage_mod.encode(storage, vectors[:1], codec)
    codes = np.zeros((nlist, cap, vectors.shape[1]), dtype=sample.dtype)
    for s in range(0, len(rows), ADD_CHUNK):
        sl = slice(s, s + ADD_CHUNK)
        codes[lists[sl], pos[sl]] = storage_mod.encode(storage, vectors[rows[sl]], codec)
    return {"codes": codes, "rows": rows_p}
