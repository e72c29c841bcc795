"""The routed index: class prototypes searched by inner product after coarse (cluster-first) routing.

A query is routed to its `nprobe` best clusters and compared only with the prototypes stored
there; the answer is the top-k *distinct classes* with their best prototype's score.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from megaclass.export.config import IndexConfig
from megaclass.python_backend.routed_index_io import (
    IndexIntegrityError,
    load_array,
    load_json,
    read_manifest,
    verify_files,
    write_index_dir,
)

__all__ = ["IndexIntegrityError", "RoutedIndex", "SearchResult", "aggregate_classes", "validate_queries"]

UNKNOWN_LABEL = "<unknown>"  # label of an entry whose score is below the threshold (class id -1)
MISSING_LABEL = ""  # label of an empty slot: fewer than k classes found (class id -1, score -inf)


@dataclass
class SearchResult:
    """Top-k distinct classes per query, best first.

    Empty slots (fewer than k classes found): class id -1, score -inf, label "".
    Below the threshold: class id -1, label "<unknown>", the score is kept.
    """

    class_ids: np.ndarray  # int64 [Q, k]
    scores: np.ndarray  # float32 [Q, k]
    labels: np.ndarray  # object (str) [Q, k]
    stats: dict[str, Any] = field(default_factory=dict)


def validate_queries(queries: Any, dim: int) -> np.ndarray:
    """Return `queries` as a C-contiguous float32 [Q, dim] array or raise ValueError saying why."""
    try:
        xq = np.asarray(queries)
    except Exception as e:  # ragged lists and the like
        raise ValueError(f"queries are not an array: {e}") from e
    if xq.ndim != 2:
        raise ValueError(f"queries must be 2-D [num_queries, {dim}], got shape {xq.shape}")
    if xq.shape[1] != dim:
        raise ValueError(f"queries have dimension {xq.shape[1]}, the index has {dim}")
    if xq.dtype.kind not in "fiu":
        raise ValueError(f"queries must be numeric (float32-convertible), got dtype {xq.dtype}")
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    if not np.isfinite(xq).all():
        bad = int(np.flatnonzero(~np.isfinite(xq).all(axis=1))[0])
        raise ValueError(f"queries contain NaN or infinity (first in row {bad})")
    return xq


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
    s = scores.ravel().astype(np.float32, copy=False)
    c = classes.ravel()
    r = np.repeat(np.arange(q), m)
    keep = c >= 0
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


def _default_nlist(num_prototypes: int) -> int:
    return max(1, min(num_prototypes, int(round(4 * np.sqrt(num_prototypes)))))


class RoutedIndex:
    """Cluster-first routed inner-product search over class prototypes with class aggregation.

    `search` is safe to call from several threads at once.
    """

    def __init__(
        self,
        ivf: faiss.IndexIVF,
        row_class: np.ndarray,
        classes: np.ndarray,
        labels: np.ndarray,
        cfg: IndexConfig,
        manifest: dict[str, Any] | None = None,
    ) -> None:
        self._ivf = ivf
        self._row_class = row_class  # int64 [P]: class id of each stored prototype row
        self._classes = classes  # int64 [C], sorted unique
        self._labels = labels  # object [C], aligned with _classes
        self.cfg = cfg
        self.dim = int(ivf.d)
        self.nlist = int(ivf.nlist)
        self.num_prototypes = int(len(row_class))
        self.num_classes = int(len(classes))
        _, counts = np.unique(row_class, return_counts=True)
        self._max_per_class = int(counts.max()) if len(counts) else 1
        self._lock = threading.Lock()
        self.manifest: dict[str, Any] = manifest or {}

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        prototypes: np.ndarray,
        class_ids: np.ndarray,
        labels: Mapping[int, str],
        cfg: IndexConfig,
        progress: bool = False,
    ) -> RoutedIndex:
        """Cluster `prototypes` (float32 [P, D], L2-normalised) and store them; `class_ids` int64 [P]."""
        xb = np.asarray(prototypes)
        if xb.ndim != 2 or xb.shape[0] == 0:
            raise ValueError(f"prototypes must be a non-empty 2-D array, got shape {xb.shape}")
        xb = np.ascontiguousarray(xb, dtype=np.float32)
        if not np.isfinite(xb).all():
            raise ValueError("prototypes contain NaN or infinity")
        ids = np.asarray(class_ids)
        if ids.shape != (xb.shape[0],) or ids.dtype.kind not in "iu":
            raise ValueError(f"class_ids must be integers of shape ({len(xb)},), got {ids.dtype} {ids.shape}")
        ids = ids.astype(np.int64)
        if (ids < 0).any():
            raise ValueError("class ids must be >= 0 (-1 means 'no class' in results)")
        classes = np.unique(ids)
        missing = [int(c) for c in classes if int(c) not in labels]
        if missing:
            raise ValueError(f"{len(missing)} class id(s) have no label, e.g. {missing[:5]}")
        label_arr = np.array([str(labels[int(c)]) for c in classes], dtype=object)

        p, d = xb.shape
        nlist = min(cfg.nlist or _default_nlist(p), p)
        quantizer = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = cfg.seed
        ivf.cp.spherical = True
        ivf.cp.verbose = progress
        ivf.train(xb)
        ivf.add_with_ids(xb, np.arange(p, dtype=np.int64))
        ivf.nprobe = cfg.nprobe
        params = {**dataclasses.asdict(cfg), "nlist": nlist}
        manifest = {"params": params}
        return cls(ivf, ids, classes, label_arr, cfg, manifest)

    # ----------------------------------------------------------------- search
    def search(
        self, queries: np.ndarray, top_k: int, nprobe: int | None = None, threshold: float | None = None
    ) -> SearchResult:
        """Top `top_k` distinct classes per query (see SearchResult for empty / unknown slots)."""
        xq = validate_queries(queries, self.dim)
        if not isinstance(top_k, int | np.integer) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        nprobe = self.cfg.nprobe if nprobe is None else int(nprobe)
        if nprobe < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        nprobe = min(nprobe, self.nlist)
        threshold = self.cfg.score_threshold if threshold is None else threshold
        top_k = int(top_k)
        # Any class among the best k has its best prototype among the best k * (max prototypes per class).
        fetch = min(self.num_prototypes, top_k * self._max_per_class)
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        dist, idx = self._ivf.search(xq, fetch, params=params)
        cand = np.where(idx >= 0, self._row_class[np.maximum(idx, 0)], -1)
        class_ids, scores = aggregate_classes(dist, cand, top_k)
        return self._finish(class_ids, scores, threshold, {"nprobe": nprobe, "fetched_per_query": fetch})

    def _finish(
        self, class_ids: np.ndarray, scores: np.ndarray, threshold: float | None, stats: dict[str, Any]
    ) -> SearchResult:
        labels = self.label_of(class_ids)
        if threshold is not None:
            below = (scores < threshold) & (class_ids >= 0)
            class_ids[below] = -1
            labels[below] = UNKNOWN_LABEL
        return SearchResult(class_ids, scores, labels, stats)

    def label_of(self, class_ids: np.ndarray) -> np.ndarray:
        """Labels (object array, same shape) of class ids; "" for -1 or an unknown id."""
        ids = np.asarray(class_ids, dtype=np.int64)
        pos = np.searchsorted(self._classes, ids)
        pos = np.minimum(pos, max(len(self._classes) - 1, 0))
        found = (ids >= 0) & (self._classes[pos] == ids) if len(self._classes) else np.zeros(ids.shape, bool)
        out = np.full(ids.shape, MISSING_LABEL, dtype=object)
        out[found] = self._labels[pos[found]]
        return out

    # ---------------------------------------------------------------- save/load
    def save(self, directory: Path, extra_manifest: dict | None = None) -> None:
        """Write the index to `directory` (new or empty) with a checksummed manifest."""
        reserved = {"format", "format_version", "files", "dim", "metric", "num_classes", "num_prototypes"}
        extra = dict(extra_manifest or {})
        clash = reserved & set(extra)
        if clash:
            raise ValueError(f"extra_manifest may not set reserved keys {sorted(clash)}")
        manifest = {
            **self.manifest,
            **extra,
            "dim": self.dim,
            "metric": "inner_product",
            "num_classes": self.num_classes,
            "num_prototypes": self.num_prototypes,
            "kind": "faiss_ivf",
        }
        arrays = {
            "ivf": faiss.serialize_index(self._ivf),
            "row_class": self._row_class,
            "classes": self._classes,
        }
        write_index_dir(Path(directory), arrays, {"labels.json": list(self._labels)}, manifest)
        self.manifest = read_manifest(Path(directory))

    @classmethod
    def load(cls, directory: Path) -> RoutedIndex:
        """Read an index written by `save`; any missing or altered file raises IndexIntegrityError."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        verify_files(directory, manifest, ["ivf.npy", "row_class.npy", "classes.npy", "labels.json"])
        try:
            ivf = faiss.deserialize_index(load_array(directory, "ivf"))
        except RuntimeError as e:
            raise IndexIntegrityError(f"{directory / 'ivf.npy'}: not a FAISS index: {e}") from e
        row_class = load_array(directory, "row_class")
        classes = load_array(directory, "classes")
        labels = np.array(load_json(directory, "labels.json"), dtype=object)
        if len(labels) != len(classes) or ivf.ntotal != len(row_class) or ivf.d != manifest.get("dim"):
            raise IndexIntegrityError(f"{directory}: files disagree with each other or with the manifest")
        params = manifest.get("params", {})
        known = {f.name for f in dataclasses.fields(IndexConfig)}
        cfg = IndexConfig(**{k: v for k, v in params.items() if k in known})
        return cls(ivf, row_class, classes, labels, cfg, manifest)
