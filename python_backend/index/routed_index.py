"""The routed index: class prototypes searched by inner product after coarse (cluster-first) routing.

A query is routed to its `nprobe` best clusters (balanced k-means centroids) and compared only with
the prototypes stored there; a prototype may also be stored in a second cluster (SOAR spilling).
Clusters hold exact, float16, 8-bit or PQ codes; the compressed forms only pick candidates, which
are re-scored with the exact vectors. The answer is the top-k *distinct classes*, each with its best
prototype's score.

`RoutedIndex` holds the arrays and the lock; the work is done by plain functions by concern: layout.py (clusters,
codec), scan.py (the scan backends), aggregation.py (distinct classes), result.py (SearchResult, labels),
mutation.py (add / remove / rebuild), persistence.py (save / load).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from megaclass.python_backend.index import mutation
from megaclass.python_backend.index import storage as storage_mod
from megaclass.python_backend.index.aggregation import aggregate_classes
from megaclass.python_backend.index.config import IndexConfig
from megaclass.python_backend.index.defaults import resolve as resolve_defaults
from megaclass.python_backend.index.layout import default_nlist, mean_residual, route_rows, train_codec
from megaclass.python_backend.index.locking import RWLock
from megaclass.python_backend.index.native import pq4 as pq4
from megaclass.python_backend.index.persistence import read_index, save_index
from megaclass.python_backend.index.result import MISSING_LABEL, SearchResult, finish, labels_for, labels_of
from megaclass.python_backend.index.scan import (
    BACKENDS,
    backend_for,
    check_backend_storage,
    faiss_lists,
    grouped_lists,
    search_batch,
)
from megaclass.python_backend.index.validation import check_prototypes, validate_queries
from megaclass.python_backend.serving.device_arrays import to_numpy


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
        check_backend_storage(cfg.backend, cfg.storage, cfg.pq_residual)
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
        self._lock = RWLock()
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
    def classes(self) -> np.ndarray:
        """The live class ids, sorted (a copy)."""
        return self._classes.copy()

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
        return mean_residual(self._vectors, self.centroids, self._entry_row, self._entry_list)

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
        groups: np.ndarray | None = None,
    ) -> RoutedIndex:
        """Cluster `prototypes` (float32 [P, D], L2-normalised) and store them; `class_ids` int64 [P].

        `groups` int64 [P] (-1: none): the coarse clusters are these groups (e.g. the branches at one
        level of a class taxonomy; layout.route_rows), not k-means; the manifest's router says which."""
        t0 = time.perf_counter()
        xb, ids = check_prototypes(prototypes, class_ids)
        cfg = resolve_defaults(cfg, len(xb), xb.shape[1])
        classes = np.unique(ids)
        label_arr = labels_for(classes, labels)
        if cfg.threads > 0:
            faiss.omp_set_num_threads(cfg.threads)
        nlist = min(cfg.nlist or default_nlist(len(xb)), len(xb))
        centroids, entry_row, entry_list = route_rows(xb, nlist, cfg, progress, groups)
        router = {"source": "kmeans" if groups is None else "groups", "seconds": round(time.perf_counter() - t0, 3)}
        codec, nlist = train_codec(xb, cfg, centroids, entry_row, entry_list), len(centroids)
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
        index.manifest["router"] = {"mean_residual": index.mean_residual(), **router}
        return index

    def _refresh(self, faiss_ivf: faiss.IndexIVF | None = None) -> None:
        """Recompute what depends on the entries: multiplicity bound and the backend's structures
        (`faiss_ivf`: FAISS lists already brought up to date in place, kept)."""
        live_class = self._row_class[self._entry_row]
        counts = np.unique(live_class, return_counts=True)[1] if len(live_class) else np.ones(1)
        self._max_mult = int(counts.max())  # entries of the most repeated class
        self._sizes = self.list_sizes()
        self._faiss = None if faiss_ivf is None else (faiss_ivf, storage_mod.search_form(faiss_ivf, self.cfg.storage))
        self._grouped = None
        self._native = None
        self._prepare(self.cfg.backend)

    def _prepare(self, backend: str) -> None:
        """Build what `backend` scans, unless it is there already."""
        if backend == "faiss" and self._faiss is None:
            self._faiss = faiss_lists(self)
        elif backend == "native" and self._native is None:
            self._native = self._native_search()
        elif backend in ("numpy", "torch") and (self._grouped is None or self._grouped["backend"] != backend):
            self._grouped = grouped_lists(self, backend)

    def _native_search(self, target: str = "native") -> pq4.Pq4Search:
        """The native backend's search over this index's current arrays (`target`: see native/build.py)."""
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
        xq = validate_queries(queries, self.dim, check_finite=self.cfg.backend != "native")  # native: the kernel checks
        if type(xq) is not np.ndarray and not (self.cfg.backend == "torch" and self.cfg.storage == "flat"):
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
            class_ids, best, totals = search_batch(self, xq, nprobe, margin, fetch, top_k)
            result = finish(class_ids, best, threshold, self._label_table())
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
            return finish(class_ids, best, None, self._label_table())

    def live_prototypes(self) -> tuple[np.ndarray, np.ndarray]:
        """(prototypes float32 [P, D], class id of each [P]) of the live rows (copies: boolean indexing)."""
        with self._lock.read():
            return self._vectors[self._row_class >= 0], self._row_class[self._row_class >= 0]

    def label_of(self, class_ids: np.ndarray) -> np.ndarray:
        """Labels (object array, same shape) of class ids; "" for -1 or an unknown id."""
        return labels_of(class_ids, *self._label_table())

    def _label_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sorted class ids, their labels, the labels with "" appended); add and remove replace the
        arrays rather than change them, so a caller may keep the tuple."""
        if self._label_pad[0] is not self._labels:
            self._label_pad = (self._labels, np.append(self._labels, np.array([MISSING_LABEL], dtype=object)))
        return self._classes, self._labels, self._label_pad[1]

    # ------------------------------------------------------- backend, storage
    def use_backend(self, backend: str) -> RoutedIndex:
        """Switch the scan backend in place (builds its structures); returns self."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        with self._lock.write():
            new_cfg = dataclasses.replace(self.cfg, backend=backend)
            check_backend_storage(backend, new_cfg.storage, new_cfg.pq_residual)
            self._prepare(backend)
            self.cfg = new_cfg
        return self

    def with_storage(
        self,
        storage: str,
        *,
        pq_m: int | None = None,
        pq_bits: int | None = None,
        pq_residual: bool | None = None,
        backend: str | None = None,
    ) -> RoutedIndex:
        """A new index with the same router and entries but another storage form (codec re-trained)."""
        with self._lock.read():
            residual = self.cfg.pq_residual if pq_residual is None else pq_residual
            cfg = dataclasses.replace(
                self.cfg,
                storage=storage,
                pq_m=pq_m if pq_m is not None else self.cfg.pq_m,
                pq_bits=pq_bits if pq_bits is not None else self.cfg.pq_bits,
                pq_residual=residual,
                backend=backend_for(storage, backend or self.cfg.backend, residual),
            )
            codec = train_codec(self._vectors, cfg, self.centroids, self._entry_row, self._entry_list)
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
        mutation.add(self, prototypes, class_ids, labels)

    def remove(self, class_ids: np.ndarray) -> int:
        """Drop every prototype of the given classes; returns how many prototypes were removed."""
        return mutation.remove(self, class_ids)

    def rebuild_router(self, progress: bool = False) -> RoutedIndex:
        """Re-cluster all live prototypes (after drift: `needs_rebuild`) and re-train the codec; returns self."""
        mutation.rebuild_router(self, progress)
        return self

    # ---------------------------------------------------------------- save/load
    def save(self, directory: Path, extra_manifest: dict | None = None) -> None:
        """Write the index to `directory` (new or empty) with a checksummed manifest."""
        save_index(self, directory, extra_manifest)

    @classmethod
    def load(cls, directory: Path, backend: str | None = None) -> RoutedIndex:
        """Read an index written by `save`; any missing or altered file raises IndexIntegrityError.

        `backend` overrides the saved scan backend.
        """
        return cls(**read_index(directory, backend))
