"""The routed index: class prototypes searched by inner product after coarse (cluster-first) routing.

A query is routed to its `nprobe` best clusters (balanced k-means centroids) and compared only with
the prototypes stored there; a prototype may also be stored in a second cluster (SOAR spilling).
Clusters hold exact, float16, 8-bit or PQ codes; the compressed forms only pick candidates, which
are re-scored with the exact vectors. The answer is the top-k *distinct classes*, each with its best
prototype's score.

Scan backends (the same answers from the same codes):
- "faiss": FAISS's SIMD list scanners (one query at a time, OpenMP over queries), fast scan for PQ.
- "numpy": grouped scan, one BLAS product per cluster and batch (each list read once per batch).
- "torch": the grouped scan with `bmm`, on CUDA where present, else on the CPU.
- "native": 4-bit PQ storage only; route, scan, re-rank and class aggregation fused in one compiled
  call per batch (routed_index_pq4.py), built with the machine's C++ compiler on first use.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from megaclass.export.config import IndexConfig
from megaclass.python_backend.index import storage as storage_mod
from megaclass.python_backend.index.grouped_scan import grouped_scan_numpy, grouped_scan_torch
from megaclass.python_backend.index.native import pq4 as pq4
from megaclass.python_backend.index.persistence import (
    IndexIntegrityError,
    load_array,
    load_json,
    read_manifest,
    verify_files,
    write_index_dir,
)
from megaclass.python_backend.index.router import (
    assign_primary,
    assign_spill,
    cluster_means,
    drop_far_probes,
    route,
    train_centroids,
)
from megaclass.python_backend.serving.device_arrays import is_torch_tensor, to_numpy

__all__ = [
    "BACKENDS",
    "IndexIntegrityError",
    "RoutedIndex",
    "SearchResult",
    "aggregate_classes",
    "validate_queries",
]

UNKNOWN_LABEL = "<unknown>"  # label of an entry whose score is below the threshold (class id -1)
MISSING_LABEL = ""  # label of an empty slot: fewer than k classes found (class id -1, score -inf)
BACKENDS = ("faiss", "numpy", "torch", "native")
_ADD_CHUNK = 262144
_TOTALS = ("scanned", "coded", "exact", "probes")  # per-batch counts from _search_batch
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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


def validate_queries(queries: Any, dim: int) -> np.ndarray:
    """Return `queries` as a C-contiguous float32 [Q, dim] array or raise ValueError saying why.

    A torch tensor is checked where it lives and returned as a float32 tensor on its device.
    """
    if is_torch_tensor(queries):
        return _validate_tensor(queries, dim)
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


def _validate_tensor(x: Any, dim: int) -> Any:
    import torch

    if x.ndim != 2:
        raise ValueError(f"queries must be 2-D [num_queries, {dim}], got shape {tuple(x.shape)}")
    if x.shape[1] != dim:
        raise ValueError(f"queries have dimension {x.shape[1]}, the index has {dim}")
    if x.dtype == torch.bool or x.dtype.is_complex:
        raise ValueError(f"queries must be numeric (float32-convertible), got dtype {x.dtype}")
    x = x.to(torch.float32).contiguous()
    finite = torch.isfinite(x).all(dim=1)
    if not bool(finite.all()):
        raise ValueError(f"queries contain NaN or infinity (first in row {int(torch.nonzero(~finite)[0, 0])})")
    return x


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


_PYTHON_AGGREGATE_MAX = 128  # candidates in a batch up to which rows are aggregated in plain Python


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


_LOW32 = np.uint64(0xFFFFFFFF)
_NONE = np.uint64(0xFFFFFFFFFFFFFFFF)  # sorts after every packed key


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


def default_nlist(num_prototypes: int) -> int:
    """About 4 √P clusters (at least 1, at most P)."""
    return max(1, min(num_prototypes, int(round(4 * np.sqrt(num_prototypes)))))


class _RWLock:
    """Many concurrent readers (searches) or one writer (add, remove, rebuild). A waiting writer goes
    before new readers (else searches arriving back to back hold it off for ever). `read()` returns one
    reusable context manager and wakes nobody unless a writer waits (a search pays ~1 us for it, not ~4).
    Not re-entrant: a reader must not take the lock again."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._read_side = _ReadSide(self)

    def read(self) -> _ReadSide:
        return self._read_side

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class _ReadSide:
    """`with lock.read():` of _RWLock."""

    __slots__ = ("_rw",)

    def __init__(self, rw: _RWLock) -> None:
        self._rw = rw

    def __enter__(self) -> None:
        rw = self._rw
        with rw._cond:
            while rw._writer or rw._writers_waiting:  # writers first: steady searches would starve them
                rw._cond.wait()
            rw._readers += 1

    def __exit__(self, *exc: object) -> None:
        rw = self._rw
        with rw._cond:
            rw._readers -= 1
            if not rw._readers and rw._writers_waiting:
                rw._cond.notify_all()


def _check_prototypes(prototypes: Any, class_ids: Any, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    xb = np.asarray(prototypes)
    if xb.ndim != 2 or xb.shape[0] == 0:
        raise ValueError(f"prototypes must be a non-empty 2-D array, got shape {xb.shape}")
    if dim is not None and xb.shape[1] != dim:
        raise ValueError(f"prototypes have dimension {xb.shape[1]}, the index has {dim}")
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    if not np.isfinite(xb).all():
        raise ValueError("prototypes contain NaN or infinity")
    ids = np.asarray(class_ids)
    if ids.shape != (len(xb),) or ids.dtype.kind not in "iu":
        raise ValueError(f"class_ids must be integers of shape ({len(xb)},), got {ids.dtype} {ids.shape}")
    ids = ids.astype(np.int64)
    if (ids < 0).any():
        raise ValueError("class ids must be >= 0 (-1 means 'no class' in results)")
    return xb, ids


def _check_backend_storage(backend: str, storage: str, residual: bool = False) -> None:
    """PQ codes are scanned by FAISS or the native kernel; the grouped backends need flat/fp16/sq8."""
    if storage == "pq" and backend not in ("faiss", "native"):
        raise ValueError("pq storage is scanned by the faiss or native backend (use flat, fp16 or sq8)")
    if backend == "native" and storage != "pq":
        raise ValueError("the native backend scans 4-bit pq storage only (use storage='pq', pq_bits=4)")
    if residual and storage == "pq" and backend != "native":
        raise ValueError("residual PQ codes (pq_residual) are scanned by the native backend only")


def _backend_for(storage: str, backend: str, residual: bool = False) -> str:
    """`backend` if it can scan `storage`, else one that can (native for residual PQ, else FAISS)."""
    try:
        _check_backend_storage(backend, storage, residual)
        return backend
    except ValueError:
        return "native" if storage == "pq" and residual else "faiss"


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class RoutedIndex:
    """Cluster-first routed inner-product search over class prototypes with class aggregation.

    `search` may be called from several threads at once; `add`, `remove` and `rebuild_router`
    wait for running searches and block new ones while they change the index.
    """

    def __init__(
        self,
        *,
        cfg: IndexConfig,
        centroids: np.ndarray,
        vectors: np.ndarray,
        row_class: np.ndarray,
        entry_row: np.ndarray,
        entry_list: np.ndarray,
        classes: np.ndarray,
        labels: np.ndarray,
        codec: dict[str, np.ndarray],
        manifest: dict[str, Any] | None = None,
    ) -> None:
        if cfg.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {cfg.backend!r}")
        storage_mod.check_storage(cfg.storage)
        _check_backend_storage(cfg.backend, cfg.storage, cfg.pq_residual)
        self.cfg = cfg
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.dim = int(self.centroids.shape[1])
        self.nlist = int(len(self.centroids))
        # float32 [R, D] exact prototypes, C-contiguous (the re-rank reads rows in place); rows never move until save
        self._vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._row_class = row_class  # int64 [R], -1 = removed
        self._entry_row = entry_row  # int64 [E]: stored entries (a spilled row has several)
        self._entry_list = entry_list  # int64 [E]: the cluster of each entry
        self._classes = classes  # int64 [C], sorted unique live class ids
        self._labels = labels  # object [C]
        self.codec = codec
        self.manifest: dict[str, Any] = manifest or {}
        self._lock = _RWLock()
        self._faiss: tuple[faiss.IndexIVF, faiss.IndexIVF] | None = None  # (editable, searched)
        self._grouped: dict[str, Any] | None = None
        self._native: pq4.Pq4Search | None = None
        self._label_pad: tuple[np.ndarray | None, np.ndarray] = (None, labels)  # (labels, labels + [""])
        if cfg.threads > 0:
            faiss.omp_set_num_threads(cfg.threads)
        self._refresh()

    # ------------------------------------------------------------------ shape
    @property
    def num_prototypes(self) -> int:
        return int((self._row_class >= 0).sum())

    @property
    def num_classes(self) -> int:
        return int(len(self._classes))

    @property
    def num_entries(self) -> int:
        """Stored entries (prototypes plus spilled copies)."""
        return int(len(self._entry_row))

    def list_sizes(self) -> np.ndarray:
        """Entries per cluster, int64 [nlist]."""
        return np.bincount(self._entry_list, minlength=self.nlist)

    def imbalance(self) -> float:
        """Largest cluster ÷ mean cluster size (1.0 = perfectly even)."""
        sizes = self.list_sizes()
        return float(sizes.max() / max(sizes.mean(), 1e-12)) if len(sizes) else 1.0

    def mean_residual(self) -> float:
        """Mean squared distance of stored entries to their cluster's centroid."""
        total = 0.0
        for s in range(0, self.num_entries, _ADD_CHUNK):
            r = (
                self._vectors[self._entry_row[s : s + _ADD_CHUNK]]
                - self.centroids[self._entry_list[s : s + _ADD_CHUNK]]
            )
            total += float(np.einsum("nd,nd->", r, r))
        return total / max(self.num_entries, 1)

    def drift(self) -> float:
        """Mean residual now ÷ right after the router was trained (1.0 = no drift)."""
        base = self.manifest.get("router", {}).get("mean_residual")
        return self.mean_residual() / base if base else 1.0

    @property
    def needs_rebuild(self) -> bool:
        """True once adds and removes made clusters uneven (`cfg.rebuild_imbalance`) or far from their
        centroids (`cfg.rebuild_drift`): then `rebuild_router`."""
        return self.imbalance() > self.cfg.rebuild_imbalance or self.drift() > self.cfg.rebuild_drift

    def memory_bytes(self) -> dict[str, int]:
        """Resident bytes: scanned codes (per entry), exact vectors (re-rank, add, save), router, ids, and
        with the native backend its tables (int8 router, 8- and 4-bit codes of the exact vectors)."""
        out = {"exact_vectors": int(self._vectors.nbytes), "router": int(self.centroids.nbytes)}
        if self.cfg.backend == "native" and self._native is not None:  # blocks of 32 slots, padding included
            t = self._native.table_bytes()
            return {**out, "codes": t["codes"], "ids": t["slot_row"] + int(self._row_class.nbytes),
                    "native_tables": t["tables"]}  # fmt: skip
        codes = self.num_entries * storage_mod.code_bytes(self.cfg.storage, self.dim, self.codec)
        return {**out, "codes": int(codes), "ids": int(self._entry_row.nbytes + self._row_class.nbytes)}

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
        t0 = time.perf_counter()
        xb, ids = _check_prototypes(prototypes, class_ids)
        classes = np.unique(ids)
        label_arr = _labels_for(classes, labels)
        if cfg.threads > 0:
            faiss.omp_set_num_threads(cfg.threads)
        nlist = min(cfg.nlist or default_nlist(len(xb)), len(xb))
        centroids, entry_row, entry_list = _route_rows(xb, nlist, cfg, progress)
        router_s = time.perf_counter() - t0
        codec = _train_codec(xb, cfg, centroids, entry_row, entry_list)
        params = {**dataclasses.asdict(cfg), "nlist": nlist}
        manifest = {"params": params, "build_seconds": round(time.perf_counter() - t0, 3)}
        index = cls(
            cfg=dataclasses.replace(cfg, nlist=nlist),
            centroids=centroids,
            vectors=xb,
            row_class=ids,
            entry_row=entry_row,
            entry_list=entry_list,
            classes=classes,
            labels=label_arr,
            codec=codec,
            manifest=manifest,
        )
        index.manifest["router"] = {"mean_residual": index.mean_residual(), "seconds": round(router_s, 3)}
        return index

    def _refresh(self) -> None:
        """Recompute what depends on the entries: multiplicity bound and the backend's structures."""
        live_class = self._row_class[self._entry_row]
        counts = np.unique(live_class, return_counts=True)[1] if len(live_class) else np.ones(1)
        self._max_mult = int(counts.max())  # entries of the most repeated class
        self._sizes = self.list_sizes()
        self._faiss = None
        self._grouped = None
        self._native = None
        self._prepare(self.cfg.backend)

    def _prepare(self, backend: str) -> None:
        if backend == "faiss" and self._faiss is None:
            ivf = storage_mod.make_faiss_ivf(self.cfg.storage, self.centroids, self.codec)
            for s in range(0, self.num_entries, _ADD_CHUNK):
                rows = self._entry_row[s : s + _ADD_CHUNK]
                storage_mod.faiss_add(
                    ivf, self.cfg.storage, self.codec, self._vectors[rows], rows, self._entry_list[s : s + _ADD_CHUNK]
                )
            self._faiss = (ivf, storage_mod.search_form(ivf, self.cfg.storage))
        elif backend == "native" and self._native is None:
            self._native = self._native_search()
        elif backend in ("numpy", "torch") and (self._grouped is None or self._grouped["backend"] != backend):
            _check_backend_storage(backend, self.cfg.storage)
            self._grouped = _padded_layout(
                self._entry_row, self._entry_list, self.nlist, self._vectors, self.cfg.storage, self.codec
            )
            self._grouped["backend"] = backend
            if backend == "torch":
                _to_torch(self._grouped, self.centroids, self.cfg)

    def _native_search(self, target: str = "native") -> pq4.Pq4Search:
        """The native backend's search over this index's current arrays (`target`: see native_build)."""
        pq4.check_supported(self.codec)  # the storage itself was checked with the backend
        return pq4.Pq4Search(
            entry_row=self._entry_row,
            entry_list=self._entry_list,
            centroids=self.centroids,
            vectors=self._vectors,
            row_class=self._row_class,
            codec=self.codec,
            residual=self.cfg.pq_residual,
            target=target,
        )

    # ----------------------------------------------------------------- search
    def search(
        self,
        queries: np.ndarray,
        top_k: int,
        nprobe: int | None = None,
        threshold: float | None = None,
        *,
        rerank: int | None = None,
        probe_margin: float | None = None,
    ) -> SearchResult:
        """Top `top_k` distinct classes per query (see SearchResult for empty / unknown slots).

        `nprobe` clusters are scanned per query (default cfg.nprobe); with a `probe_margin` (default
        cfg.probe_margin; inf: all nprobe whatever the configuration) only those whose route score is
        within it of the best one's (adaptive probing, router.drop_far_probes); `rerank`: candidates per
        query re-scored exactly for compressed storage (default cfg.rerank, 0: max(4 top_k, 40)).
        `queries` may be a torch tensor: with the torch backend and flat storage it is searched on its
        device without a host copy (the GPU serving path); otherwise it is copied to numpy first.
        """
        t0 = time.perf_counter()
        xq = validate_queries(queries, self.dim)
        if is_torch_tensor(xq) and not (self.cfg.backend == "torch" and self.cfg.storage == "flat"):
            xq = to_numpy(xq)  # only the torch backend scanning exact vectors keeps queries on the device
        if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        top_k = int(top_k)
        nprobe = self.cfg.nprobe if nprobe is None else int(nprobe)
        if nprobe < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        nprobe = min(nprobe, self.nlist)
        margin = self.cfg.probe_margin if probe_margin is None else float(probe_margin)
        if margin is not None and not margin >= 0:
            raise ValueError(f"probe_margin must be >= 0 (or None), got {margin}")
        threshold = self.cfg.score_threshold if threshold is None else threshold
        rerank = self.cfg.rerank if rerank is None else int(rerank)
        if self.cfg.threads > 0 and self.cfg.backend == "faiss":
            faiss.omp_set_num_threads(self.cfg.threads)  # OpenMP's setting is per calling thread
        with self._lock.read():
            if self.cfg.storage == "flat":
                # Each of the best k classes has its best entry among the best k * (entries per class).
                fetch = top_k * self._max_mult
            else:
                # Compressed scores are approximate anyway: `rerank` (tuned for recall) sets the depth;
                # a spilled prototype may be found once per copy, so that many more entries are kept.
                fetch = max(top_k, rerank or max(4 * top_k, 40)) * (1 + max(self.cfg.spill, 0))
            fetch = max(1, min(fetch, self.num_entries))
            # One pipeline for the whole batch: FAISS parallelises its scan over the queries itself
            # (parallel_mode 3, see storage.search_form), the re-rank too; Python threads each calling
            # FAISS scaled only 1.3-1.45x on two cores (measured on the glyph embeddings).
            class_ids, best, totals = self._search_batch(xq, nprobe, margin, fetch, top_k)
            result = self._finish(class_ids, best, threshold)
        n = max(len(xq), 1)
        result.stats = {
            "backend": self.cfg.backend,
            "storage": self.cfg.storage,
            "nprobe": nprobe,
            "probe_margin": margin,
            "probes_per_query": totals["probes"] / n,
            "candidates": totals["scanned"] / n,  # entries scanned per query (mean)
            "candidates_scanned": int(totals["scanned"]),  # in the whole batch
            "fetched_per_query": fetch,
            "coded_per_query": totals["coded"] / n,  # rows scored with their 8/12-bit codes (native)
            "exact_per_query": totals["exact"] / n,  # rows scored in float32 after the scan
            "seconds": time.perf_counter() - t0,
        }
        return result

    def _search_batch(
        self, xq: np.ndarray, nprobe: int, margin: float | None, fetch: int, top_k: int
    ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """Route, scan, re-rank and aggregate a batch: (class ids, scores, batch totals of the entries
        scanned, the rows scored with codes, the rows scored exactly after the scan, the clusters probed)."""
        if len(xq) == 0:
            return np.zeros((0, top_k), np.int64), np.zeros((0, top_k), np.float32), dict.fromkeys(_TOTALS, 0.0)
        if self.cfg.backend == "native":
            class_ids, best, counts = self._native.search(
                xq, nprobe=nprobe, fetch=fetch, top_k=top_k, threads=self.cfg.threads or _CPUS, probe_margin=margin
            )
            return class_ids, best, dict(zip(_TOTALS, counts.sum(axis=1).astype(float), strict=True))
        scores, rows, probes = self._scan(xq, nprobe, margin, fetch)
        exact = 0.0  # flat storage: the scan itself is exact
        if self.cfg.storage != "flat":
            exact = float((rows >= 0).sum())
            scores = self._exact_scores(xq, rows)
            keep = top_k * self._max_mult  # enough entries for top_k distinct classes
            if scores.shape[1] > keep:
                top = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
                scores = np.take_along_axis(scores, top, axis=1)
                rows = np.take_along_axis(rows, top, axis=1)
        cand = np.where(rows >= 0, self._row_class[np.maximum(rows, 0)], -1)
        class_ids, best = aggregate_classes(scores, cand, top_k)
        probed = probes[probes >= 0]
        totals = {
            "scanned": float(self._sizes[probed].sum()),
            "coded": 0.0,
            "exact": exact,
            "probes": float(probed.size),
        }
        return class_ids, best, totals

    def _scan(
        self, xq: np.ndarray, nprobe: int, margin: float | None, fetch: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Best `fetch` (approximate) scores and entry rows per query from its `nprobe` clusters (those
        that `margin` drops: -1 in the probes returned)."""
        xs, const = storage_mod.scan_queries(self.cfg.storage, xq, self.codec)
        backend = self.cfg.backend
        if backend == "faiss":
            ivf, searched = self._faiss
            probes = _faiss_route(ivf.quantizer, xq, nprobe, margin)
            scores, rows = _search_preassigned(searched, xs, fetch, probes, nprobe)
            return scores + const[:, None], rows, probes
        if backend == "numpy":
            probes = route(xq, self.centroids, nprobe, margin)
            g = self._grouped
            scores, rows = grouped_scan_numpy(xs, probes, g["codes"], g["rows"], fetch)
        else:
            import torch

            g = self._grouped
            dev = g["codes"].device
            xt = xq.to(dev) if is_torch_tensor(xq) else torch.from_numpy(xq).to(dev)
            top = torch.topk(xt @ g["centroids"].T, nprobe, dim=1)
            probes = drop_far_probes(top.indices.cpu().numpy(), top.values.float().cpu().numpy(), margin)
            xst = xs.to(dev) if is_torch_tensor(xs) else torch.from_numpy(xs).to(dev)
            scores, rows = grouped_scan_torch(xst, probes, g["codes"], g["rows"], fetch, g["compute_dtype"])
        if scores.shape[1] > fetch:
            top = np.argpartition(-scores, fetch - 1, axis=1)[:, :fetch]
            scores = np.take_along_axis(scores, top, axis=1)
            rows = np.take_along_axis(rows, top, axis=1)
        return scores + const[:, None], rows, probes

    def exact_search(self, queries: np.ndarray, top_k: int) -> SearchResult:
        """Brute-force answer over every live prototype (the ground truth of `search`; no threshold)."""
        xq = to_numpy(validate_queries(queries, self.dim))
        with self._lock.read():
            live = np.flatnonzero(self._row_class >= 0)
            per_class = np.unique(self._row_class[live], return_counts=True)[1]
            fetch = max(1, min(len(live), top_k * int(per_class.max() if len(per_class) else 1)))
            flat = faiss.IndexFlatIP(self.dim)
            flat.add(self._vectors[live])
            scores, pos = flat.search(xq, fetch)
            cand = np.where(pos >= 0, self._row_class[live[np.maximum(pos, 0)]], -1)
            class_ids, best = aggregate_classes(scores, cand, top_k)
            return self._finish(class_ids, best, None)

    def _exact_scores(self, xq: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact inner products of each query with its candidate rows (-inf where rows is -1)."""
        ids = np.ascontiguousarray(np.maximum(rows, 0), dtype=np.int64)
        s = np.empty(ids.shape, dtype=np.float32)
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        # FAISS reads the candidate rows in place (4x faster than gathering them first).
        q, m = ids.shape
        faiss.fvec_inner_products_by_idx(
            faiss.swig_ptr(s), faiss.swig_ptr(xq), faiss.swig_ptr(self._vectors), faiss.swig_ptr(ids), self.dim, q, m
        )
        s[rows < 0] = -np.inf
        return s

    def _finish(self, class_ids: np.ndarray, scores: np.ndarray, threshold: float | None) -> SearchResult:
        below = None
        if threshold is not None:
            below = (scores < threshold) & (class_ids >= 0)
            class_ids[below] = -1
        table = self._label_table()  # the labels as of this search, whatever is added or removed later

        def labels() -> np.ndarray:
            out = _labels_of(class_ids, *table)
            if below is not None:
                out[below] = UNKNOWN_LABEL
            return out

        return SearchResult(class_ids, scores, labels)

    def label_of(self, class_ids: np.ndarray) -> np.ndarray:
        """Labels (object array, same shape) of class ids; "" for -1 or an unknown id."""
        return _labels_of(class_ids, *self._label_table())

    def _label_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sorted class ids, their labels, the labels with "" appended); add and remove replace the
        arrays rather than change them, so a caller may keep the tuple."""
        if self._label_pad[0] is not self._labels:
            self._label_pad = (self._labels, np.append(self._labels, np.array([MISSING_LABEL], dtype=object)))
        return self._classes, self._labels, self._label_pad[1]

    def use_backend(self, backend: str) -> RoutedIndex:
        """Switch the scan backend in place (builds its structures); returns self."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        with self._lock.write():
            new_cfg = dataclasses.replace(self.cfg, backend=backend)
            _check_backend_storage(backend, new_cfg.storage, new_cfg.pq_residual)
            self._prepare(backend)
            self.cfg = new_cfg
        return self

    def with_storage(self, storage: str, *, pq_m: int | None = None, pq_bits: int | None = None) -> RoutedIndex:
        """A new index with the same router and entries but another storage form (codec re-trained)."""
        with self._lock.read():
            cfg = dataclasses.replace(
                self.cfg,
                storage=storage,
                pq_m=pq_m if pq_m is not None else self.cfg.pq_m,
                pq_bits=pq_bits if pq_bits is not None else self.cfg.pq_bits,
                backend=_backend_for(storage, self.cfg.backend, self.cfg.pq_residual),
            )
            codec = _train_codec(self._vectors, cfg, self.centroids, self._entry_row, self._entry_list)
            manifest = {k: v for k, v in self.manifest.items() if k in ("router", "build_seconds")}
            return RoutedIndex(
                cfg=cfg,
                centroids=self.centroids,
                vectors=self._vectors,
                row_class=self._row_class,
                entry_row=self._entry_row,
                entry_list=self._entry_list,
                classes=self._classes,
                labels=self._labels,
                codec=codec,
                manifest={**manifest, "params": dataclasses.asdict(cfg)},
            )

    # ------------------------------------------------------------ add/remove
    def add(self, prototypes: np.ndarray, class_ids: np.ndarray, labels: Mapping[int, str] | None = None) -> None:
        """Store more prototypes (new classes or more prototypes of known ones) without re-clustering.

        New class ids need a label in `labels`; a known class keeps its label (a different one is refused).
        """
        xb, ids = _check_prototypes(prototypes, class_ids, self.dim)
        labels = labels or {}
        with self._lock.write():
            new = np.setdiff1d(np.unique(ids), self._classes)
            known = np.intersect1d(np.unique(ids), self._classes)
            changed = [int(c) for c in known if int(c) in labels and labels[int(c)] != self.label_of(c)[()]]
            if changed:
                raise ValueError(f"class(es) {changed[:5]} already have a different label")
            new_labels = _labels_for(new, labels)
            first = len(self._vectors)
            rows = np.arange(first, first + len(xb))
            lists, spill_rows, spill_lists = _assign_new(xb, self.centroids, self.cfg)
            entry_row = np.concatenate([rows, rows[spill_rows]])
            entry_list = np.concatenate([lists, spill_lists])
            self._vectors = np.concatenate([self._vectors, xb])
            self._row_class = np.concatenate([self._row_class, ids])
            self._entry_row = np.concatenate([self._entry_row, entry_row])
            self._entry_list = np.concatenate([self._entry_list, entry_list])
            allc = np.concatenate([self._classes, new])
            alll = np.concatenate([self._labels, new_labels])
            order = np.argsort(allc, kind="stable")
            self._classes, self._labels = allc[order], alll[order]
            if self._faiss is not None:
                ivf, _ = self._faiss
                storage_mod.faiss_add(
                    ivf, self.cfg.storage, self.codec, self._vectors[entry_row], entry_row, entry_list
                )
                live_class = self._row_class[self._entry_row]
                self._max_mult = int(np.unique(live_class, return_counts=True)[1].max())
                self._sizes = self.list_sizes()
                self._faiss = (ivf, storage_mod.search_form(ivf, self.cfg.storage))
                self._grouped = self._native = None
                self._prepare(self.cfg.backend)
            else:
                self._refresh()

    def remove(self, class_ids: np.ndarray) -> int:
        """Drop every prototype of the given classes; returns how many prototypes were removed."""
        ids = np.unique(np.asarray(class_ids, dtype=np.int64))
        with self._lock.write():
            dead_rows = np.flatnonzero(np.isin(self._row_class, ids))
            if len(dead_rows) == 0:
                return 0
            self._row_class = self._row_class.copy()
            self._row_class[dead_rows] = -1
            keep = self._row_class[self._entry_row] >= 0
            self._entry_row, self._entry_list = self._entry_row[keep], self._entry_list[keep]
            alive = ~np.isin(self._classes, ids)
            self._classes, self._labels = self._classes[alive], self._labels[alive]
            if self._faiss is not None:
                ivf, _ = self._faiss
                ivf.remove_ids(faiss.IDSelectorBatch(dead_rows.astype(np.int64)))
                live_class = self._row_class[self._entry_row]
                self._max_mult = int(np.unique(live_class, return_counts=True)[1].max()) if len(live_class) else 1
                self._sizes = self.list_sizes()
                self._faiss = (ivf, storage_mod.search_form(ivf, self.cfg.storage))
                self._grouped = self._native = None
                self._prepare(self.cfg.backend)
            else:
                self._refresh()
            return int(len(dead_rows))

    def rebuild_router(self, progress: bool = False) -> RoutedIndex:
        """Re-cluster all live prototypes (after drift: `needs_rebuild`) and re-train the codec; returns self."""
        with self._lock.write():
            self._compact()
            nlist = min(self.nlist, len(self._vectors))
            self.centroids, self._entry_row, self._entry_list = _route_rows(self._vectors, nlist, self.cfg, progress)
            self.nlist = nlist
            self.codec = _train_codec(self._vectors, self.cfg, self.centroids, self._entry_row, self._entry_list)
            self._refresh()
            self.manifest["router"] = {"mean_residual": self.mean_residual()}
        return self

    def _compact(self) -> bool:
        """Drop removed rows and renumber the rest; True if rows were renumbered (refresh needed)."""
        live = self._row_class >= 0
        if live.all():
            return False
        new_id = np.cumsum(live) - 1
        self._vectors = self._vectors[live]
        self._row_class = self._row_class[live]
        self._entry_row = new_id[self._entry_row]
        return True

    # ---------------------------------------------------------------- save/load
    def save(self, directory: Path, extra_manifest: dict | None = None) -> None:
        """Write the index to `directory` (new or empty) with a checksummed manifest."""
        reserved = {"format", "format_version", "files", "dim", "metric", "num_classes", "num_prototypes"}
        extra = dict(extra_manifest or {})
        clash = reserved & set(extra)
        if clash:
            raise ValueError(f"extra_manifest may not set reserved keys {sorted(clash)}")
        with self._lock.write():
            if self._compact():
                self._refresh()
            manifest = {
                **{k: v for k, v in self.manifest.items() if k not in reserved},
                **extra,
                "params": dataclasses.asdict(self.cfg),
                "dim": self.dim,
                "metric": "inner_product",
                "num_classes": self.num_classes,
                "num_prototypes": self.num_prototypes,
                "num_entries": self.num_entries,
                "imbalance": round(self.imbalance(), 4),
                "bytes": self.memory_bytes(),
            }
            arrays = {
                "centroids": self.centroids,
                "vectors": self._vectors,
                "row_class": self._row_class,
                "entry_row": self._entry_row,
                "entry_list": self._entry_list,
                "classes": self._classes,
                **{f"codec_{k}": v for k, v in self.codec.items()},
            }
            write_index_dir(Path(directory), arrays, {"labels.json": [str(x) for x in self._labels]}, manifest)
        self.manifest = read_manifest(Path(directory))

    @classmethod
    def load(cls, directory: Path, backend: str | None = None) -> RoutedIndex:
        """Read an index written by `save`; any missing or altered file raises IndexIntegrityError.

        `backend` overrides the saved scan backend.
        """
        directory = Path(directory)
        manifest = read_manifest(directory)
        names = ["centroids", "vectors", "row_class", "entry_row", "entry_list", "classes"]
        verify_files(directory, manifest, [f"{n}.npy" for n in names] + ["labels.json"])
        arrays = {n: load_array(directory, n) for n in names}
        codec = {
            name[len("codec_") : -len(".npy")]: load_array(directory, name[: -len(".npy")])
            for name in manifest["files"]
            if name.startswith("codec_") and name.endswith(".npy")
        }
        labels = np.array(load_json(directory, "labels.json"), dtype=object)
        params = manifest.get("params", {})
        known = {f.name for f in dataclasses.fields(IndexConfig)}
        cfg = IndexConfig(**{k: v for k, v in params.items() if k in known})
        if backend is not None:
            cfg = dataclasses.replace(cfg, backend=backend)
        _check_consistent(directory, manifest, arrays, labels, cfg)
        return cls(cfg=cfg, labels=labels, codec=codec, manifest=manifest, **arrays)


# --------------------------------------------------------------------- helpers
def _labels_for(classes: np.ndarray, labels: Mapping[int, str]) -> np.ndarray:
    missing = [int(c) for c in classes if int(c) not in labels]
    if missing:
        raise ValueError(f"{len(missing)} class id(s) have no label, e.g. {missing[:5]}")
    return np.array([str(labels[int(c)]) for c in classes], dtype=object)


def _capacities(num_rows: int, nlist: int, cfg: IndexConfig) -> tuple[np.ndarray, np.ndarray]:
    """(primary capacity, total capacity incl. spill) per cluster."""
    if not cfg.balance or cfg.balance <= 0:
        big = np.full(nlist, num_rows * (1 + cfg.spill), dtype=np.int64)
        return big, big
    primary = int(np.ceil(cfg.balance * num_rows / nlist))
    total = int(np.ceil(cfg.balance * num_rows * (1 + cfg.spill) / nlist))
    return np.full(nlist, primary, dtype=np.int64), np.full(nlist, total, dtype=np.int64)


def _route_rows(
    xb: np.ndarray, nlist: int, cfg: IndexConfig, progress: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train the router and assign every row (plus SOAR spills): (centroids, entry_row, entry_list)."""
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
    cap_primary, cap_total = _capacities(len(xb), nlist, cfg)
    primary = assign_primary(xb, centroids, cap_primary)
    centroids = cluster_means(xb, primary, nlist, centroids)
    rows = np.arange(len(xb), dtype=np.int64)
    if cfg.spill <= 0 or nlist < 2:
        return centroids, rows, primary
    spill = assign_spill(xb, centroids, primary, cap_total, spill=cfg.spill, lam=cfg.soar_lambda)
    ok = spill >= 0
    extra_rows = np.broadcast_to(rows[:, None], spill.shape)[ok]
    return centroids, np.concatenate([rows, extra_rows]), np.concatenate([primary, spill[ok]])


def _assign_new(xb: np.ndarray, centroids: np.ndarray, cfg: IndexConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _train_codec(
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


def _padded_layout(
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
    for s in range(0, len(rows), _ADD_CHUNK):
        sl = slice(s, s + _ADD_CHUNK)
        codes[lists[sl], pos[sl]] = storage_mod.encode(storage, vectors[rows[sl]], codec)
    return {"codes": codes, "rows": rows_p}


def _to_torch(g: dict[str, Any], centroids: np.ndarray, cfg: IndexConfig) -> None:
    import torch

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    dev = torch.device(_resolve_device(cfg.device))
    g["codes"] = torch.from_numpy(g["codes"]).to(dev)
    g["rows"] = torch.from_numpy(g["rows"]).to(dev)
    g["centroids"] = torch.from_numpy(centroids).to(dev)
    g["compute_dtype"] = torch.float16 if dev.type == "cuda" and cfg.storage != "flat" else torch.float32


def _faiss_route(quantizer: faiss.Index, xq: np.ndarray, nprobe: int, margin: float | None) -> np.ndarray:
    """The `nprobe` best clusters per query (FAISS flat search, no Python wrapper overhead); those that
    `margin` drops are -1 (FAISS skips such lists)."""
    dist = np.empty((len(xq), nprobe), dtype=np.float32)
    ids = np.empty((len(xq), nprobe), dtype=np.int64)
    quantizer.search_c(len(xq), faiss.swig_ptr(xq), nprobe, faiss.swig_ptr(dist), faiss.swig_ptr(ids))
    return drop_far_probes(ids, dist, margin)


def _labels_of(class_ids: np.ndarray, classes: np.ndarray, labels: np.ndarray, padded: np.ndarray) -> np.ndarray:
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


def _search_preassigned(
    index: faiss.IndexIVF, xq: np.ndarray, k: int, probes: np.ndarray, nprobe: int
) -> tuple[np.ndarray, np.ndarray]:
    """FAISS scan of the given lists (thread-safe: nprobe passed per call, not set on the index)."""
    q = len(xq)
    dist = np.empty((q, k), dtype=np.float32)
    ids = np.empty((q, k), dtype=np.int64)
    probes = np.ascontiguousarray(probes, dtype=np.int64)
    coarse = np.zeros(probes.shape, dtype=np.float32)
    params = faiss.SearchParametersIVF(nprobe=nprobe)
    index.search_preassigned_c(
        q,
        faiss.swig_ptr(xq),
        k,
        faiss.swig_ptr(probes),
        faiss.swig_ptr(coarse),
        faiss.swig_ptr(dist),
        faiss.swig_ptr(ids),
        False,
        params,
    )
    return dist, ids


def _check_consistent(
    directory: Path, manifest: dict, arrays: dict[str, np.ndarray], labels: np.ndarray, cfg: IndexConfig
) -> None:
    """The saved arrays agree with each other and the manifest (shapes, dtypes, ranges)."""
    c, v = arrays["centroids"], arrays["vectors"]
    problems = []
    if c.ndim != 2 or v.ndim != 2 or c.shape[1] != v.shape[1] or c.shape[1] != manifest.get("dim"):
        problems.append("centroids/vectors shapes disagree with the manifest dimension")
    if len(arrays["row_class"]) != len(v) or len(arrays["entry_row"]) != len(arrays["entry_list"]):
        problems.append("row or entry arrays have different lengths")
    if len(arrays["entry_row"]) and (arrays["entry_row"].max() >= len(v) or arrays["entry_list"].max() >= len(c)):
        problems.append("entries point outside the stored rows or clusters")
    if len(labels) != len(arrays["classes"]) or len(arrays["classes"]) != manifest.get("num_classes"):
        problems.append("class count disagrees with the labels or the manifest")
    if len(v) != manifest.get("num_prototypes"):
        problems.append("prototype count disagrees with the manifest")
    if problems:
        raise IndexIntegrityError(f"{directory}: " + "; ".join(problems))
