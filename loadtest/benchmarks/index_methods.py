"""The methods the index benchmark compares, each tuned to a target recall and timed alike.

Exact search (FAISS IndexFlatIP, also the ground truth), FAISS IndexIVFFlat, FAISS IndexHNSWFlat
and the routed index. Every method returns the top-k *classes* (prototype hits aggregated per
class); each is tuned on the tuning half of the queries and measured on the evaluation half.
Built indexes are cached on disk by a fingerprint of their data and settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from megaclass.export.config import IndexConfig
from megaclass.python_backend.index.aggregation import aggregate_classes
from megaclass.python_backend.index.defaults import resolve as resolve_defaults
from megaclass.python_backend.index.native import pq4 as pq4
from megaclass.python_backend.index.routed_index import RoutedIndex
from megaclass.python_backend.index.tuning import (
    nprobe_grid,
    search_margin,
    search_recall_at_k,
    smallest_reaching,
    time_search,
    tune,
)

HNSW_EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
HNSW_MS = (16, 32, 48)  # every HNSW peer built at each link count; the table keeps each
HNSW_EF_CONSTRUCTION = 200  # every HNSW build (FAISS's own default is 40)


def hnsw_ef_grid(w: Workload) -> list[int]:
    """ef values to sweep for hnswlib and USearch, from the number of neighbours asked (top_k x
    prototypes per class): below it they search with ef = that number anyway (measured: the same
    recall and speed at "ef=1" as at 40), so a smaller value in the table would not be what ran.
    FAISS's efSearch is not raised (efSearch 13 for 40 neighbours: recall 0.956 at 50k QPS, 40: 0.998
    at 31k), so `hnsw_run` sweeps it from 1."""
    floor = w.top_k * w.mult
    return [floor, *(e for e in HNSW_EF_SEARCH if e > floor)]


IVF_SCALES = (1, 2, 4, 8, 16)  # FAISS IVF-Flat built at these multiples of sqrt(N) clusters


@dataclass
class MethodRun:
    """One method at its chosen setting."""

    name: str
    setting: str
    recall: float
    build_s: float
    bytes_per_class: float
    bytes_per_query: float  # data read per query at batch 64 (vectors/codes scanned; router excluded)
    timings: dict[int, dict[str, float]]  # batch size -> qps, p50_ms, p99_ms
    curve: list[tuple[float, float]]  # (recall, qps at the plot batch) of the swept settings


@dataclass(frozen=True)
class Workload:
    """One data set as every method sees it: prototypes, tuning and evaluation queries, exact answers."""

    xb: np.ndarray  # prototypes, float32 [N, d]
    ids: np.ndarray  # class of each prototype, int64 [N]
    labels: dict[int, str]
    xq: np.ndarray  # evaluation queries
    truth: np.ndarray  # exact top-k classes of xq
    xq_tune: np.ndarray  # tuning queries
    truth_tune: np.ndarray
    top_k: int
    cache: Path | None  # where built indexes are kept

    @cached_property
    def num_classes(self) -> int:
        return len(np.unique(self.ids))

    @cached_property
    def mult(self) -> int:
        """Most prototypes of one class: a prototype search asks for k × this hits."""
        return int(np.unique(self.ids, return_counts=True)[1].max())


Timed = tuple[MethodRun, Callable[[np.ndarray], Any]]  # a method's result and its search at the chosen setting


def fingerprint(*arrays: np.ndarray, **params: Any) -> str:
    """A short hash of arrays (shape and a sample of rows) and parameters: a cache key."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a[:: max(1, len(a) // 4096)]).tobytes())
    return h.hexdigest()[:16]


def time_batches(
    fn: Callable[[np.ndarray], Any], xq: np.ndarray, batch_sizes: Sequence[int], slow: bool = False
) -> dict[int, dict]:
    """QPS and latency per batch size (batch 1: the first 512 queries, one pass). `slow`: exact
    search, timed on fewer queries (64 single queries, 4 batches of 64, one pass per size)."""
    out = {}
    for b in batch_sizes:
        n = (64 if b == 1 else max(b, 4 * b if b < 1024 else b)) if slow else (len(xq) if b > 1 else 512)
        out[b] = time_search(fn, xq[: min(n, len(xq))], b, repeats=1 if slow or b == 1 else 3)
    return out


# ------------------------------------------------------------------------------- FAISS methods
def faiss_class_search(index: Any, class_ids: np.ndarray, mult: int, set_param: Callable[[int], None]):
    """A search function over a FAISS index that returns top-k classes (prototype hits aggregated)."""

    def search(xq: np.ndarray, k: int, param: int) -> np.ndarray:
        set_param(param)
        dist, ids = index.search(xq, k * mult)
        cand = np.where(ids >= 0, class_ids[np.maximum(ids, 0)], -1)
        return aggregate_classes(dist, cand, k)[0]

    return search


def exact_method(xb: np.ndarray, ids: np.ndarray, mult: int) -> tuple[Callable[..., np.ndarray], float]:
    """Exact search (IndexFlatIP): its class search `(xq, k, _) -> classes` and its build time."""
    import faiss

    flat = faiss.IndexFlatIP(xb.shape[1])
    t0 = time.perf_counter()
    flat.add(xb)
    return faiss_class_search(flat, ids, mult, lambda p: None), time.perf_counter() - t0


def exact_run(w: Workload, exact: Callable[..., np.ndarray], build_s: float, batch_sizes: Sequence[int]) -> MethodRun:
    """Exact search timed at every batch size (recall 1 by definition)."""
    n, d = w.xb.shape
    timings = time_batches(lambda x: exact(x, w.top_k, 0), w.xq, batch_sizes, slow=True)
    return MethodRun("exact (IndexFlatIP)", "-", 1.0, build_s, 4 * d * n / w.num_classes, 4 * d * n / 64, timings, [])


def _cached_faiss(path: Path | None, make: Callable[[], Any]) -> tuple[Any, float]:
    import faiss

    if path is not None and path.exists():
        return faiss.read_index(str(path)), float(json.loads(path.with_suffix(".json").read_text())["build_s"])
    t0 = time.perf_counter()
    index = make()
    build_s = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        faiss.write_index(index, str(path))
        path.with_suffix(".json").write_text(json.dumps({"build_s": build_s}))
    return index, build_s


def sweep_param(
    search: Callable[[np.ndarray, int, int], np.ndarray],
    params: Sequence[int],
    w: Workload,
    target: float,
    batch: int,
    extra: int = 2,
    lowest: int | None = None,
) -> tuple[int, float, list[tuple[float, float]]]:
    """Smallest param reaching the target recall on the tuning queries (grid walk, then bisection:
    `smallest_reaching`), plus `extra` grid points past it for the plot; each point's recall and QPS
    are measured on the evaluation queries, as for the routed index (its `tune` sees only the tuning half).
    Returns (param, its evaluation recall, [(evaluation recall, QPS at batch)]); the largest param
    tried when none reaches the target. The bisection never goes below `lowest` (default: the grid's first)."""
    chosen, seen = smallest_reaching(
        lambda p: search_recall_at_k(search(w.xq_tune, w.top_k, p), w.truth_tune),
        params,
        target,
        lowest=params[0] if lowest is None else lowest,
    )
    more = [p for p in params if chosen is not None and p > chosen][:extra]
    pts = []
    for p in sorted({*seen, *more}):
        recall = search_recall_at_k(search(w.xq, w.top_k, p), w.truth)
        qps = time_search(lambda x, p=p: search(x, w.top_k, p), w.xq, batch, repeats=1)["qps"]
        pts.append((p, recall, qps))
    chosen = chosen or pts[-1][0]
    recall = next(r for p, r, _ in pts if p == chosen)
    return chosen, recall, [(r, q) for _, r, q in pts]


def ivf_run(w: Workload, nlist: int, target: float, plot_batch: int) -> Timed:
    """FAISS IndexIVFFlat with `nlist` clusters (k-means on the same sample size per cluster as ours)."""
    import faiss

    n, d = w.xb.shape

    def make_ivf() -> Any:
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.max_points_per_centroid = IndexConfig().kmeans_sample
        ivf.cp.seed = 0
        ivf.train(w.xb)
        ivf.add(w.xb)
        return ivf

    ivf, build_s = _cached_faiss(w.cache / f"ivf{nlist}.faiss" if w.cache else None, make_ivf)
    sizes = np.array([ivf.invlists.list_size(i) for i in range(nlist)])

    def set_nprobe(p: int) -> None:
        ivf.nprobe = p

    search = faiss_class_search(ivf, w.ids, w.mult, set_nprobe)
    chosen, recall, curve = sweep_param(search, nprobe_grid(nlist), w, target, plot_batch)
    _, probes = ivf.quantizer.search(w.xq[:256], chosen)  # entries a query scans at this nprobe
    scanned = float(sizes[probes].sum(axis=1).mean())
    return MethodRun(
        f"FAISS IndexIVFFlat C={nlist}", f"nprobe={chosen}", recall, build_s, (4 * d + 8) * n / w.num_classes,
        scanned * 4 * d, {}, curve,
    ), lambda x: search(x, w.top_k, chosen)  # fmt: skip


def hnsw_run(w: Workload, m: int, target: float, plot_batch: int) -> Timed:
    """FAISS IndexHNSWFlat with `m` links per node, efConstruction 200, efSearch swept."""
    import faiss

    d = w.xb.shape[1]

    def make_hnsw() -> Any:
        h = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
        h.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        h.add(w.xb)
        return h

    h, build_s = _cached_faiss(w.cache / f"hnsw{m}-efc{HNSW_EF_CONSTRUCTION}.faiss" if w.cache else None, make_hnsw)

    def set_ef(p: int) -> None:
        h.hnsw.efSearch = p

    search = faiss_class_search(h, w.ids, w.mult, set_ef)
    chosen, recall, curve = sweep_param(search, HNSW_EF_SEARCH, w, target, plot_batch, lowest=1)
    faiss.cvar.hnsw_stats.reset()
    search(w.xq[:256], w.top_k, chosen)
    ndis = faiss.cvar.hnsw_stats.ndis / 256
    bytes_per_class = faiss.serialize_index(h).nbytes / w.num_classes
    return MethodRun(
        f"FAISS IndexHNSWFlat M={m}", f"efSearch={chosen}", recall, build_s, bytes_per_class, ndis * 4 * d, {}, curve
    ), lambda x: search(x, w.top_k, chosen)


# ------------------------------------------------------------------------------- the routed index
_ROUTER_FIELDS = ("nlist", "spill", "balance", "kmeans_iters", "kmeans_sample", "soar_lambda", "seed")


def routed_nlist(rc: dict[str, Any], default: int) -> int:
    """Clusters of routed config `rc`: its "nlist", or "nlist_scale" x the default, or the default."""
    if rc.get("nlist"):
        return int(rc["nlist"])
    return max(1, int(round(default * float(rc.get("nlist_scale", 1.0)))))


def _cached_routed(w: Workload, cfg: IndexConfig, backend: str | None) -> tuple[RoutedIndex, float]:
    """Build (or load) the routed index; a cached index with the same router only gets a new codec."""
    if w.cache is None:
        t0 = time.perf_counter()
        return RoutedIndex.build(w.xb, w.ids, w.labels, cfg), time.perf_counter() - t0
    params = dataclasses.asdict(cfg)
    router_key = fingerprint(**{k: params[k] for k in _ROUTER_FIELDS})
    path = w.cache / f"routed-{router_key}-{fingerprint(**{**params, 'backend': ''})}"
    if (path / "manifest.json").exists():
        index = RoutedIndex.load(path, backend=backend)
        return index, float(index.manifest.get("build_seconds", float("nan")))
    same_router = sorted(w.cache.glob(f"routed-{router_key}-*/manifest.json"))
    t0 = time.perf_counter()
    if same_router:
        base = RoutedIndex.load(same_router[0].parent)
        router_s = float(base.manifest["router"].get("seconds", base.manifest.get("build_seconds", 0.0)))
        base.cfg = dataclasses.replace(
            base.cfg, opq=cfg.opq, rerank=cfg.rerank, pq_residual=cfg.pq_residual, backend=cfg.backend
        )
        index = base.with_storage(cfg.storage, pq_m=cfg.pq_m, pq_bits=cfg.pq_bits)
        build_s = router_s + time.perf_counter() - t0
        index.manifest["build_seconds"] = build_s
    else:
        index = RoutedIndex.build(w.xb, w.ids, w.labels, cfg)
        build_s = time.perf_counter() - t0
    index.save(path)
    if backend is not None and backend != index.cfg.backend:
        index.use_backend(backend)
    return index, build_s


def routed_run(rc: dict[str, Any], w: Workload, nlist: int, target: float, plot_batch: int) -> Timed:
    """The routed index with config `rc` (IndexConfig fields), tuned on the tuning half."""
    d = w.xb.shape[1]
    backend = rc.get("backend")  # None: the "auto" default, made concrete at build
    options = bool(rc)
    rc = {k: v for k, v in rc.items() if k != "nlist_scale"} | {"nlist": routed_nlist(rc, nlist)}
    tag = "-".join(f"{k}={v}" for k, v in sorted(rc.items()) if k != "backend") if options else "defaults"
    cfg = resolve_defaults(IndexConfig(**rc), len(w.xb), d)  # concrete, so the cache keys are too
    index, build_s = _cached_routed(w, cfg, backend)
    t = tune(index, w.xq_tune, target_recall=target, top_k=w.top_k, truth=w.truth_tune, batch=plot_batch, repeats=5)

    def search(x: np.ndarray, nprobe: int = t.nprobe, margin: float | None = t.probe_margin) -> Any:
        return index.search(x, w.top_k, nprobe=nprobe, rerank=t.rerank, probe_margin=search_margin(margin))

    res = search(w.xq)
    recall = search_recall_at_k(res.class_ids, w.truth)
    mem = index.memory_bytes()
    code = mem["codes"] / max(index.num_entries, 1)
    # Bytes read per query: scanned codes, the native backend's row codes (per coded row), float32 rows.
    per_query = res.stats["candidates"] * code + res.stats["exact_per_query"] * 4 * d
    if "native_tables" in mem:
        per_query += res.stats["coded_per_query"] * pq4.row_record_bytes(d)
    curve = []  # the tuned line: nprobe swept (fixed probing) or the margin swept (adaptive)
    for p in t.curve:
        if p["rerank"] == t.rerank and (p["probe_margin"] is None) == (t.probe_margin is None):
            nprobe, margin = int(p["nprobe"]), p["probe_margin"]
            r = search_recall_at_k(search(w.xq, nprobe, margin).class_ids, w.truth)
            qps = time_search(lambda x, n=nprobe, m=margin: search(x, n, m), w.xq, plot_batch, repeats=1)["qps"]
            curve.append((r, qps))
    setting = f"nprobe={t.nprobe} rerank={t.rerank}"
    if t.probe_margin is not None:
        setting = f"nprobe≤{t.nprobe} margin={t.probe_margin:.3g} ({res.stats['probes_per_query']:.1f} probed) rerank={t.rerank}"
    return MethodRun(
        f"routed {tag} ({index.cfg.backend})", setting, recall, build_s,
        sum(mem.values()) / index.num_classes, per_query,
        {}, curve,
    ), search  # fmt: skip
