"""Retrieval metrics over ranked neighbour labels (numpy only).

Every metric takes `retrieved`: int `[Q, k]`, the class labels of each query's neighbours,
nearest first, and `labels`: int `[Q]`, each query's true class. rel_q(i) = 1 when
retrieved[q, i] == labels[q] (i counted from 1), else 0.
"""

from __future__ import annotations

import numpy as np


def _check(retrieved: np.ndarray, labels: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    retrieved, labels = np.asarray(retrieved), np.asarray(labels)
    if retrieved.ndim != 2 or labels.shape != (retrieved.shape[0],):
        raise ValueError(f"expected retrieved [Q, k] and labels [Q], got {retrieved.shape} and {labels.shape}")
    if k is not None and not 1 <= k <= retrieved.shape[1]:
        raise ValueError(f"k={k} outside 1..{retrieved.shape[1]} (columns of retrieved)")
    return retrieved, labels


def relevance(retrieved: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """rel `[Q, k]` bool: rel[q, i] = retrieved[q, i] == labels[q]."""
    retrieved, labels = _check(retrieved, labels)
    return retrieved == labels[:, None]


def precision_at_1(retrieved: np.ndarray, labels: np.ndarray) -> float:
    """P@1 = (1/Q) sum_q rel_q(1): the share of queries whose nearest neighbour has their class."""
    return precision_at_k(retrieved, labels, 1)


def precision_at_k(retrieved: np.ndarray, labels: np.ndarray, k: int) -> float:
    """P@k = (1/Q) sum_q (1/k) sum_{i<=k} rel_q(i): the share of correct labels in the top k."""
    retrieved, labels = _check(retrieved, labels, k)
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(retrieved[:, :k] == labels[:, None]))


def hit_rate_at_k(retrieved: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Hit@k = (1/Q) sum_q max_{i<=k} rel_q(i): the share of queries with a correct class in the top k.

    This is what metric-learning papers call "Recall@K".
    """
    retrieved, labels = _check(retrieved, labels, k)
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(np.any(retrieved[:, :k] == labels[:, None], axis=1)))


def map_at_r(retrieved: np.ndarray, labels: np.ndarray, r: np.ndarray) -> float:
    """MAP@R (Musgrave et al., "A Metric Learning Reality Check", 2020).

    With R_q = r[q] the number of gallery items of query q's class and P_q(i) the precision
    at i, MAP@R = (1/Q) sum_q (1/R_q) sum_{i<=R_q} P_q(i) rel_q(i). Queries with R_q = 0 are
    skipped. `retrieved` needs at least max(r) columns.
    """
    retrieved, labels = _check(retrieved, labels)
    r = np.asarray(r, dtype=np.int64)
    if r.shape != labels.shape:
        raise ValueError(f"r must be [Q] like labels, got {r.shape}")
    keep = r > 0
    if not keep.any():
        return float("nan")
    retrieved, labels, r = retrieved[keep], labels[keep], r[keep]
    if r.max() > retrieved.shape[1]:
        raise ValueError(f"MAP@R needs {r.max()} neighbours per query, retrieved has {retrieved.shape[1]}")
    width = int(r.max())
    rel = (retrieved[:, :width] == labels[:, None]).astype(np.float64)
    ranks = np.arange(1, width + 1)
    within = ranks[None, :] <= r[:, None]
    precision = np.cumsum(rel, axis=1) / ranks[None, :]
    return float(np.mean(np.sum(precision * rel * within, axis=1) / r))


def class_counts(labels: np.ndarray, gallery_labels: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """R `[Q]`: how many gallery items share each query's class (minus one with `exclude_self`)."""
    labels = np.asarray(labels)
    classes, counts = np.unique(np.asarray(gallery_labels), return_counts=True)
    r = np.zeros(len(labels), dtype=np.int64)
    if len(classes):
        pos = np.clip(np.searchsorted(classes, labels), 0, len(classes) - 1)
        r = np.where(classes[pos] == labels, counts[pos], 0).astype(np.int64)
    return np.maximum(r - 1, 0) if exclude_self else r


def nearest_labels(
    queries: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    k: int,
    exclude_self: bool = False,
    chunk: int = 1024,
) -> np.ndarray:
    """`[Q, k]` labels of each query's k most similar gallery items (inner product), best first.

    Exact and chunked over queries. With `exclude_self` the queries are the gallery and each
    item's own row is skipped (leave-one-out).
    """
    xq, xb, gallery_labels = (
        np.asarray(queries, np.float32),
        np.asarray(gallery, np.float32),
        np.asarray(gallery_labels),
    )
    k_eff = min(k, len(xb) - int(exclude_self))
    out = np.empty((len(xq), k_eff), dtype=gallery_labels.dtype)
    for start in range(0, len(xq), chunk):
        D = xq[start : start + chunk] @ xb.T
        if exclude_self:
            rows = np.arange(len(D))
            D[rows, start + rows] = -np.inf
        top = np.argpartition(-D, k_eff - 1, axis=1)[:, :k_eff]
        order = np.argsort(-np.take_along_axis(D, top, axis=1), axis=1, kind="stable")
        out[start : start + chunk] = gallery_labels[np.take_along_axis(top, order, axis=1)]
    return out


def retrieval_metrics(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    ks: tuple[int, ...] = (1, 5),
    exclude_self: bool = False,
) -> dict[str, float]:
    """precision_at_1, hit_rate_at_{k} for each k and map_at_r of exact inner-product search."""
    r = class_counts(query_labels, gallery_labels, exclude_self)
    depth = max(max(ks), int(r.max()) if len(r) else 1)
    retrieved = nearest_labels(queries, gallery, gallery_labels, depth, exclude_self)
    out = {"precision_at_1": precision_at_1(retrieved, query_labels)}
    for k in ks:
        out[f"hit_rate_at_{k}"] = hit_rate_at_k(retrieved, query_labels, min(k, retrieved.shape[1]))
    out["map_at_r"] = map_at_r(retrieved, query_labels, np.minimum(r, retrieved.shape[1]))
    return out
