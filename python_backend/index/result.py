"""A search's answer: `SearchResult`, and the class labels it shows (looked up from a label table)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

UNKNOWN_LABEL = "<unknown>"  # label of an entry whose score is below the threshold (class id -1)
MISSING_LABEL = ""  # label of an empty slot: fewer than k classes found (class id -1, score -inf)


class SearchResult:
    """Top-k distinct classes per query, best first.

    Empty slots (fewer than k classes found): class id -1, score -inf, label "".
    Below the threshold: class id -1, label "<unknown>", the score is kept.
    `labels` (object array of str) are looked up when first read: a batch of 64 x 10 costs ~10 us,
    which callers that only need class ids (tuning, benchmarks) need not pay.
    `stats`: backend, storage, nprobe, probe_margin, probes_per_query (clusters probed: fewer than nprobe
    with a probe margin), candidates (mean entries scanned per query), candidates_scanned
    (the batch's total), fetched_per_query (candidates taken from the scan), coded_per_query (rows scored
    with 8/12-bit codes, native backend), exact_per_query (rows scored in float32 after the scan), seconds.
    """

    __slots__ = ("class_ids", "scores", "stats", "_labels", "_resolve")

    def __init__(
        self,
        class_ids: np.ndarray,
        scores: np.ndarray,
        labels: np.ndarray | Callable[[], np.ndarray],
        stats: dict[str, Any] | None = None,
    ) -> None:
        self.class_ids = class_ids  # int64 [Q, k]
        self.scores = scores  # float32 [Q, k]
        self.stats = stats if stats is not None else {}
        self._labels, self._resolve = (None, labels) if callable(labels) else (labels, None)

    @property
    def labels(self) -> np.ndarray:
        """Labels, object (str) [Q, k]."""
        if self._labels is None:
            self._labels, self._resolve = self._resolve(), None
        return self._labels

    def __repr__(self) -> str:
        return f"SearchResult(class_ids={self.class_ids!r}, scores={self.scores!r}, stats={self.stats!r})"


LabelTable = tuple[np.ndarray, np.ndarray, np.ndarray]  # (sorted class ids, their labels, labels + [""])


def labels_for(classes: np.ndarray, labels: Mapping[int, str]) -> np.ndarray:
    """The label of each class id (object array); ValueError when some have none."""
    missing = [int(c) for c in classes if int(c) not in labels]
    if missing:
        raise ValueError(f"{len(missing)} class id(s) have no label, e.g. {missing[:5]}")
    return np.array([str(labels[int(c)]) for c in classes], dtype=object)


def labels_of(class_ids: np.ndarray, classes: np.ndarray, labels: np.ndarray, padded: np.ndarray) -> np.ndarray:
    """Labels (object array, same shape) of class ids from a label table (RoutedIndex._label_table);
    "" for -1 or an unknown id."""
    ids = np.asarray(class_ids, dtype=np.int64)
    if not len(classes):
        return np.full(ids.shape, MISSING_LABEL, dtype=object)
    c = classes  # sorted, unique
    if c[-1] - c[0] == len(c) - 1:  # contiguous ids (the usual 0..N-1): position = id - first
        # One `take` from the labels with "" appended (a masked assignment into a filled array
        # costs twice as much: 29 vs 12 us for a batch of 64 x 10).
        pos = np.where((ids < c[0]) | (ids > c[-1]), len(c), ids - c[0])
        return padded.take(pos.reshape(-1)).reshape(ids.shape)  # 0-d stays an array
    # A binary search per id: ~20 cache misses each in a large table (1M classes: ~15 % of a batch-64 search).
    out = np.full(ids.shape, MISSING_LABEL, dtype=object)
    pos = np.minimum(np.searchsorted(c, ids), len(c) - 1)
    found = (ids >= 0) & (c[pos] == ids)
    out[found] = labels[pos[found]]
    return out


def finish(class_ids: np.ndarray, scores: np.ndarray, threshold: float | None, table: LabelTable) -> SearchResult:
    """The result of aggregated class ids and scores: those below `threshold` become unknown (-1,
    "<unknown>"); labels are looked up from `table` when first read."""
    below = None
    if threshold is not None:
        below = (scores < threshold) & (class_ids >= 0)
        class_ids[below] = -1

    def labels() -> np.ndarray:
        out = labels_of(class_ids, *table)
        if below is not None:
            out[below] = UNKNOWN_LABEL
        return out

    return SearchResult(class_ids, scores, labels)
