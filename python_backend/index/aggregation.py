"""Class aggregation: the top-k distinct classes per query from candidate (score, class) pairs.

A class with several prototypes (or a prototype spilled into several clusters) is found several
times; each class counts once, at its best score.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

_PYTHON_AGGREGATE_MAX = 128  # candidates in a batch up to which rows are aggregated in plain Python
_LOW32 = np.uint64(0xFFFFFFFF)
_NONE = np.uint64(0xFFFFFFFFFFFFFFFF)  # sorts after every packed key


def aggregate_classes(scores: np.ndarray, classes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k distinct classes per row from candidate (score, class) pairs, each class at its best score.

    `scores` float [Q, M], `classes` int64 [Q, M] (-1 = no candidate). Returns (class ids int64 [Q, k],
    scores float32 [Q, k]), sorted by score descending, ties by class id; missing slots -1 / -inf.
    """
    q, m = classes.shape
    out_c = np.full((q, k), -1, dtype=np.int64)
    out_s = np.full((q, k), -np.inf, dtype=np.float32)
    if q == 0 or m == 0 or k == 0:
        return out_c, out_s
    if q * m <= _PYTHON_AGGREGATE_MAX:  # a query or two: plain Python beats two dozen small numpy calls
        return _aggregate_rows_python(scores, classes, k, out_c, out_s)
    if classes.max() < 1 << 32:  # the usual case: packed keys; else lexsorts over the flattened pairs
        return _aggregate_packed(scores, classes, k, out_c, out_s)
    s = scores.ravel().astype(np.float32, copy=False)
    c = classes.ravel()
    r = np.repeat(np.arange(q), m)
    keep = (c >= 0) & np.isfinite(s)
    s, c, r = s[keep], c[keep], r[keep]
    order = np.lexsort((-s, c, r))  # by row, class, best score first
    s, c, r = s[order], c[order], r[order]
    first = np.ones(len(c), dtype=bool)
    first[1:] = (c[1:] != c[:-1]) | (r[1:] != r[:-1])
    s, c, r = s[first], c[first], r[first]
    order = np.lexsort((c, -s, r))  # by row, score desc, class id
    s, c, r = s[order], c[order], r[order]
    starts = np.searchsorted(r, np.arange(q))
    rank = np.arange(len(r)) - starts[r]
    sel = rank < k
    out_c[r[sel], rank[sel]] = c[sel]
    out_s[r[sel], rank[sel]] = s[sel]
    return out_c, out_s


def _aggregate_rows_python(
    scores: np.ndarray, classes: np.ndarray, k: int, out_c: np.ndarray, out_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`aggregate_classes` row by row with a dict: the fast path for single queries (per-call overhead)."""
    for i, (row_s, row_c) in enumerate(zip(scores.astype(np.float32).tolist(), classes.tolist(), strict=True)):
        best: dict[int, float] = {}
        for c, v in zip(row_c, row_s, strict=True):
            if c >= 0 and math.isfinite(v) and v > best.get(c, -math.inf):
                best[c] = v
        top = heapq.nsmallest(k, best.items(), key=lambda t: (-t[1], t[0]))
        for j, (c, v) in enumerate(top):
            out_c[i, j], out_s[i, j] = c, v
    return out_c, out_s


def _score_keys(scores: np.ndarray) -> np.ndarray:
    """uint64 keys whose ascending order is the scores' descending order (IEEE bits made sortable)."""
    bits = (np.asarray(scores, dtype=np.float32) + np.float32(0.0)).view(np.uint32).astype(np.uint64)  # -0 -> +0
    ascending = np.where(bits & np.uint64(0x80000000), ~bits & _LOW32, bits | np.uint64(0x80000000))
    return ~ascending & _LOW32


def _scores_of(keys: np.ndarray) -> np.ndarray:
    """The inverse of `_score_keys`."""
    ascending = ~keys & _LOW32
    bits = np.where(ascending & np.uint64(0x80000000), ascending & np.uint64(0x7FFFFFFF), ~ascending & _LOW32)
    return bits.astype(np.uint32).view(np.float32)


def _aggregate_packed(
    scores: np.ndarray, classes: np.ndarray, k: int, out_c: np.ndarray, out_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`aggregate_classes` for class ids below 2**32: two per-row sorts of packed uint64 keys.

    First (class, score descending) so a class's best entry comes first, then (score descending,
    class) over those best entries; no m x m comparison, no fancy indexing per element.
    """
    valid = (classes >= 0) & np.isfinite(scores)
    skey = _score_keys(scores)
    cls = np.where(valid, classes, 0).astype(np.uint64)
    by_class = np.sort(np.where(valid, (cls << np.uint64(32)) | skey, _NONE), axis=1)
    c = by_class >> np.uint64(32)
    first = by_class != _NONE
    first[:, 1:] &= c[:, 1:] != c[:, :-1]
    by_score = np.where(first, ((by_class & _LOW32) << np.uint64(32)) | c, _NONE)
    if k < by_score.shape[1]:
        by_score = np.partition(by_score, k - 1, axis=1)[:, :k]
    by_score = np.sort(by_score, axis=1)
    n = by_score.shape[1]
    found = by_score != _NONE
    out_c[:, :n] = np.where(found, (by_score & _LOW32).astype(np.int64), -1)
    out_s[:, :n] = np.where(found, _scores_of(by_score >> np.uint64(32)), -np.inf)
    return out_c, out_s
