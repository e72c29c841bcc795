"""`megaclass bench index`: the routed index against FAISS IVF-Flat, HNSW-Flat and exact search.

All methods run in one process on the same data, queries and thread count. For each method the
parameter that trades speed for recall is swept (IVF: nprobe; HNSW: efSearch; routed index: nprobe
and re-rank depth, chosen by `tune` on a separate tuning half of the queries); recall is search
recall@k of the top-k *classes* against exact search on the evaluation half. Reported per method at
its fastest setting reaching the target recall plus a small margin on the tuning half (so that the
held-out half, a different sample, meets the target too): queries per second and p50/p99 batch latency at each
batch size, build time, bytes per class, and the fraction of the memory-bandwidth floor reached
(bytes read per query × QPS ÷ measured copy bandwidth).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from megaclass.export.config import IndexConfig
from megaclass.python_backend.index.native import pq4 as pq4
from megaclass.python_backend.index.routed_index import RoutedIndex, aggregate_classes, default_nlist
from megaclass.python_backend.index.tuning import (
    nprobe_grid,
    search_margin,
    search_recall_at_k,
    smallest_reaching,
    time_interleaved,
    time_search,
    tune,
)

# Every method is tuned to the target plus this on the tuning half: recall on 2,048 other queries
# differs by a few thousandths (seen: 0.950 tuned, 0.946 held out), and the target is for the held-out half.
TUNE_MARGIN = 0.005
# Final timing: passes per method (best counts), interleaved round-robin over all methods. On a shared
# VM the machine's speed drifts by 10-20 % over seconds; five rounds give every method its quiet pass.
FINAL_ROUNDS = 5

# Routed settings the benchmark tries (IndexConfig fields; "nlist_scale": clusters as a multiple of
# the default 4 sqrt(N), FAISS's IVF then also runs at that count).
ROUTED_CONFIGS: tuple[dict[str, Any], ...] = (
    {"storage": "pq", "spill": 1, "pq_m": 64, "pq_residual": True, "backend": "native"},
    {"storage": "pq", "spill": 1, "pq_m": 64, "pq_residual": True, "backend": "native", "nlist_scale": 0.5},
    {"storage": "pq", "spill": 1, "pq_m": 64},
    {"storage": "sq8", "spill": 1},
    {"storage": "flat", "spill": 0},
)


# ------------------------------------------------------------------------------------- data
def synthetic_embeddings(
    num_classes: int,
    dim: int = 128,
    *,
    num_queries: int = 4096,
    group_size: int = 500,
    spread: float = 1.0,
    query_noise: float = 0.8,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered unit vectors that look like class embeddings, and queries near random classes.

    Classes fall into num_classes / group_size groups (Zipf-sized: a few large, many small) whose
    centres lie on the sphere; a class prototype is its group centre plus `spread` × an anisotropic
    unit perturbation (variance decaying as 1/i over a random basis, as in trained embeddings). A
    query is a random class's prototype plus `query_noise` × an isotropic unit vector (cos ≈ 0.78).
    Returns (prototypes float32 [N, dim], class ids int64 [N], queries float32 [num_queries, dim]).
    """
    rng = np.random.default_rng(seed)
    groups = max(1, num_classes // group_size)
    spec = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    centres = (rng.standard_normal((groups, dim)).astype(np.float32) * spec) @ basis
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weight = 1.0 / np.arange(1, groups + 1) ** 0.7
    group = rng.choice(groups, size=num_classes, p=weight / weight.sum())
    out = np.empty((num_classes, dim), np.float32)
    for s in range(0, num_classes, 200_000):
        n = min(200_000, num_classes - s)
        e = (rng.standard_normal((n, dim)).astype(np.float32) * spec) @ basis
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        x = centres[group[s : s + n]] + spread * e
        out[s : s + n] = x / np.linalg.norm(x, axis=1, keepdims=True)
    own = rng.integers(0, num_classes, num_queries)
    e = rng.standard_normal((num_queries, dim)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    xq = out[own] + query_noise * e
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    return out, np.arange(num_classes, dtype=np.int64), xq.astype(np.float32)


def copy_bandwidth_gbs(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Best large-array copy rate on this machine, GB/s of bytes read (a copy also writes as many)."""
    a = np.ones(nbytes // 4, np.float32)
    b = np.empty_like(a)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9


def set_threads(threads: int) -> Callable[[], None]:
    """Use `threads` threads in FAISS (OpenMP), torch (if imported) and BLAS; returns a function that restores."""
    import faiss

    undo: list[Callable[[], None]] = []
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    undo.append(lambda: faiss.omp_set_num_threads(before))
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        t_before = torch.get_num_threads()
        torch.set_num_threads(threads)
        undo.append(lambda: torch.set_num_threads(t_before))
    try:
        from threadpoolctl import threadpool_limits

        undo.append(threadpool_limits(threads).restore_original_limits)
    except ImportError:
        pass
    return lambda: [u() for u in reversed(undo)] and None


def _fingerprint(*arrays: np.ndarray, **params: Any) -> str:
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for a in arrays:
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a[:: max(1, len(a) // 4096)]).tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------- baselines
def _faiss_method(index: Any, class_ids: np.ndarray, mult: int, set_param: Callable[[int], None]):
    """A search function over a FAISS index that returns top-k classes (prototype hits aggregated)."""

    def search(xq: np.ndarray, k: int, param: int) -> np.ndarray:
        set_param(param)
        dist, ids = index.search(xq, k * mult)
        cand = np.where(ids >= 0, class_ids[np.maximum(ids, 0)], -1)
        return aggregate_classes(dist, cand, k)[0]

    return search


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


def _sweep(
    search: Callable[[np.ndarray, int, int], np.ndarray],
    params: Sequence[int],
    tuning: tuple[np.ndarray, np.ndarray],
    evaluation: tuple[np.ndarray, np.ndarray],
    k: int,
    target: float,
    batch: int,
    extra: int = 2,
) -> tuple[int | None, list[tuple[int, float, float]]]:
    """Smallest param reaching the target recall on the tuning queries (grid walk, then bisection:
    `smallest_reaching`), plus `extra` grid points past it for the plot; each point's recall and QPS
    are measured on the evaluation queries, as for the routed index (its `tune` sees only the tuning half).
    Returns (param, [(param, evaluation recall, QPS at batch)])."""
    (xt, tt), (xq, truth) = tuning, evaluation
    chosen, seen = smallest_reaching(lambda p: search_recall_at_k(search(xt, k, p), tt), params, target)
    more = [p for p in params if chosen is not None and p > chosen][:extra]
    out = []
    for p in sorted({*seen, *more}):
        recall = search_recall_at_k(search(xq, k, p), truth)
        qps = time_search(lambda x, p=p: search(x, k, p), xq, batch, repeats=1)["qps"]
        out.append((p, recall, qps))
    return chosen, out


def _ivf_run(
    xb: np.ndarray,
    ids: np.ndarray,
    mult: int,
    nlist: int,
    xq: np.ndarray,
    truth: np.ndarray,
    tuning: tuple[np.ndarray, np.ndarray],
    top_k: int,
    target: float,
    plot_batch: int,
    cache: Path | None,
) -> tuple[MethodRun, Callable[[np.ndarray], Any]]:
    """FAISS IndexIVFFlat with `nlist` clusters (k-means on the same sample size per cluster as ours)."""
    import faiss

    n, d = xb.shape

    def make_ivf() -> Any:
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.max_points_per_centroid = IndexConfig().kmeans_sample
        ivf.cp.seed = 0
        ivf.train(xb)
        ivf.add(xb)
        return ivf

    ivf, build_s = _cached_faiss(cache / f"ivf{nlist}.faiss" if cache else None, make_ivf)
    sizes = np.array([ivf.invlists.list_size(i) for i in range(nlist)])

    def set_nprobe(p: int) -> None:
        ivf.nprobe = p

    search = _faiss_method(ivf, ids, mult, set_nprobe)
    chosen, pts = _sweep(search, nprobe_grid(nlist), tuning, (xq, truth), top_k, target, plot_batch)
    chosen = chosen or pts[-1][0]
    recall = next(r for p, r, _ in pts if p == chosen)
    _, probes = ivf.quantizer.search(xq[:256], chosen)  # entries a query scans at this nprobe
    scanned = float(sizes[probes].sum(axis=1).mean())
    num_classes = len(np.unique(ids))
    return MethodRun(
        f"FAISS IndexIVFFlat C={nlist}", f"nprobe={chosen}", recall, build_s, (4 * d + 8) * n / num_classes,
        scanned * 4 * d, {}, [(r, q) for _, r, q in pts],
    ), lambda x: search(x, top_k, chosen)  # fmt: skip


def routed_nlist(rc: dict[str, Any], default: int) -> int:
    """Clusters of routed config `rc`: its "nlist", or "nlist_scale" x the default, or the default."""
    if rc.get("nlist"):
        return int(rc["nlist"])
    return max(1, int(round(default * float(rc.get("nlist_scale", 1.0)))))


_ROUTER_FIELDS = ("nlist", "spill", "balance", "kmeans_iters", "kmeans_sample", "soar_lambda", "seed")


def _cached_routed(
    xb: np.ndarray, ids: np.ndarray, labels: dict[int, str], cfg: IndexConfig, backend: str, cache: Path | None
) -> tuple[RoutedIndex, float]:
    """Build (or load) the routed index; a cached index with the same router only gets a new codec."""
    if cache is None:
        t0 = time.perf_counter()
        return RoutedIndex.build(xb, ids, labels, cfg), time.perf_counter() - t0
    params = dataclasses.asdict(cfg)
    router_key = _fingerprint(**{k: params[k] for k in _ROUTER_FIELDS})
    path = cache / f"routed-{router_key}-{_fingerprint(**{**params, 'backend': ''})}"
    if (path / "manifest.json").exists():
        index = RoutedIndex.load(path, backend=backend)
        return index, float(index.manifest.get("build_seconds", float("nan")))
    same_router = sorted(cache.glob(f"routed-{router_key}-*/manifest.json"))
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
        index = RoutedIndex.build(xb, ids, labels, cfg)
        build_s = time.perf_counter() - t0
    index.save(path)
    if backend != index.cfg.backend:
        index.use_backend(backend)
    return index, build_s


def _routed_run(
    rc: dict[str, Any],
    xb: np.ndarray,
    ids: np.ndarray,
    labels: dict[int, str],
    nlist: int,
    xq: np.ndarray,
    truth: np.ndarray,
    xq_tune: np.ndarray,
    truth_tune: np.ndarray,
    top_k: int,
    target: float,
    plot_batch: int,
    cache: Path | None,
) -> tuple[MethodRun, Callable[[np.ndarray], Any]]:
    """The routed index with config `rc` (IndexConfig fields), tuned on the tuning half."""
    d = xb.shape[1]
    backend = rc.get("backend", "faiss")
    rc = {k: v for k, v in rc.items() if k != "nlist_scale"} | {"nlist": routed_nlist(rc, nlist)}
    cfg = IndexConfig(**rc)
    tag = "-".join(f"{k}={v}" for k, v in sorted(rc.items()) if k != "backend")
    index, build_s = _cached_routed(xb, ids, labels, cfg, backend, cache)
    t = tune(index, xq_tune, target_recall=target, top_k=top_k, truth=truth_tune, batch=plot_batch, repeats=5)

    def search(x: np.ndarray, nprobe: int = t.nprobe, margin: float | None = t.probe_margin) -> Any:
        return index.search(x, top_k, nprobe=nprobe, rerank=t.rerank, probe_margin=search_margin(margin))

    res = search(xq)
    recall = search_recall_at_k(res.class_ids, truth)
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
            r = search_recall_at_k(search(xq, nprobe, margin).class_ids, truth)
            qps = time_search(lambda x, n=nprobe, m=margin: search(x, n, m), xq, plot_batch, repeats=1)["qps"]
            curve.append((r, qps))
    setting = f"nprobe={t.nprobe} rerank={t.rerank}"
    if t.probe_margin is not None:
        setting = f"nprobe≤{t.nprobe} margin={t.probe_margin:.3g} ({res.stats['probes_per_query']:.1f} probed) rerank={t.rerank}"
    return MethodRun(
        f"routed {tag} ({backend})", setting, recall, build_s,
        sum(mem.values()) / index.num_classes, per_query,
        {}, curve,
    ), search  # fmt: skip


def _time_batches(
    fn: Callable[[np.ndarray], Any], xq: np.ndarray, batch_sizes: Sequence[int], slow: bool = False
) -> dict[int, dict]:
    """QPS and latency per batch size (batch 1: the first 512 queries, one pass). `slow`: exact
    search, timed on fewer queries (64 single queries, 4 batches of 64, one pass per size)."""
    out = {}
    for b in batch_sizes:
        n = (64 if b == 1 else max(b, 4 * b if b < 1024 else b)) if slow else (len(xq) if b > 1 else 512)
        out[b] = time_search(fn, xq[: min(n, len(xq))], b, repeats=1 if slow or b == 1 else 3)
    return out


# ---------------------------------------------------------------------------------- the run
def run_index_benchmark(
    prototypes: np.ndarray,
    class_ids: np.ndarray,
    labels: dict[int, str],
    queries: np.ndarray,
    *,
    name: str,
    top_k: int = 10,
    batch_sizes: Sequence[int] = (1, 64, 1024),
    threads: int = 2,
    target_recall: float = 0.95,
    nlist: int | None = None,
    routed_configs: Sequence[dict[str, Any]] = ROUTED_CONFIGS,
    hnsw_m: int = 32,
    hnsw: bool = True,
    out_dir: Path = Path(".cache/megaclass/bench/index"),
    cache_dir: Path | None = Path(".cache/megaclass/bench/index-cache"),
    plot_batch: int = 64,
) -> dict[str, Any]:
    """Run every method on one data set; returns a report dict (also written as JSON, table and PNG)."""

    restore = set_threads(threads)
    try:
        return _run(
            prototypes, class_ids, labels, queries, name=name, top_k=top_k, batch_sizes=batch_sizes,
            threads=threads, target_recall=target_recall, nlist=nlist, routed_configs=routed_configs,
            hnsw_m=hnsw_m, hnsw=hnsw, out_dir=out_dir, cache_dir=cache_dir, plot_batch=plot_batch,
        )  # fmt: skip
    finally:
        restore()


def _run(
    prototypes: np.ndarray,
    class_ids: np.ndarray,
    labels: dict[int, str],
    queries: np.ndarray,
    *,
    name: str,
    top_k: int,
    batch_sizes: Sequence[int],
    threads: int,
    target_recall: float,
    nlist: int | None,
    routed_configs: Sequence[dict[str, Any]],
    hnsw_m: int,
    hnsw: bool,
    out_dir: Path,
    cache_dir: Path | None,
    plot_batch: int,
) -> dict[str, Any]:
    import faiss

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    xb = np.ascontiguousarray(prototypes, dtype=np.float32)
    ids = np.asarray(class_ids, dtype=np.int64)
    n, d = xb.shape
    num_classes = len(np.unique(ids))
    mult = int(np.unique(ids, return_counts=True)[1].max())
    nlist = nlist or default_nlist(n)
    # Tuning and evaluation halves drawn at random (a file's queries may come in runs of one font or class).
    half = len(queries) // 2
    order = np.random.default_rng(0).permutation(len(queries))
    xq_tune, xq = np.ascontiguousarray(queries[order[:half]]), np.ascontiguousarray(queries[order[half:]])
    key = _fingerprint(xb, ids, queries, k=top_k)
    cache = Path(cache_dir) / f"{name}-{key}" if cache_dir else None
    bw_bytes = 256 << 20 if xb.nbytes > 64 << 20 else 64 << 20
    bandwidth = copy_bandwidth_gbs(bw_bytes)
    print(f"[bench index] {name}: {n} prototypes, {num_classes} classes, dim {d}, nlist {nlist}, "
          f"{len(xq)} eval + {len(xq_tune)} tuning queries, {threads} threads, copy {bandwidth:.1f} GB/s", flush=True)  # fmt: skip

    # exact search: ground truth and the flat baseline
    flat = faiss.IndexFlatIP(d)
    t0 = time.perf_counter()
    flat.add(xb)
    flat_build = time.perf_counter() - t0
    exact = _faiss_method(flat, ids, mult, lambda p: None)
    truth_file = cache / f"truth-top{top_k}.npy" if cache else None
    if truth_file is not None and truth_file.exists():
        both = np.load(truth_file, allow_pickle=False)
    else:
        both = exact(np.ascontiguousarray(queries), top_k, 0)
        if truth_file is not None:
            truth_file.parent.mkdir(parents=True, exist_ok=True)
            np.save(truth_file, both, allow_pickle=False)
    truth_tune, truth = both[order[:half]], both[order[half:]]
    runs: list[MethodRun] = []
    runs.append(
        MethodRun("exact (IndexFlatIP)", "-", 1.0, flat_build, 4 * d * n / num_classes, 4 * d * n / 64,
                  _time_batches(lambda x: exact(x, top_k, 0), xq, batch_sizes, slow=True), [])
    )  # fmt: skip
    print(f"  exact: {runs[-1].timings}", flush=True)

    # FAISS IVF-Flat at 4√N clusters and at every cluster count a routed config uses (same C)
    tune_target = min(1.0, target_recall + TUNE_MARGIN)
    ivf_lists = sorted({nlist, *(routed_nlist(rc, nlist) for rc in routed_configs)})
    timed: list[tuple[MethodRun, Callable[[np.ndarray], Any]]] = []
    for c in ivf_lists:
        timed.append(
            _ivf_run(xb, ids, mult, c, xq, truth, (xq_tune, truth_tune), top_k, tune_target, plot_batch, cache)
        )
        print(f"  {timed[-1][0].name}: {timed[-1][0].setting} recall {timed[-1][0].recall:.3f}", flush=True)

    if hnsw:

        def make_hnsw() -> Any:
            h = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            h.add(xb)
            return h

        h, h_build = _cached_faiss(cache / f"hnsw{hnsw_m}.faiss" if cache else None, make_hnsw)

        def set_ef(p: int) -> None:
            h.hnsw.efSearch = p

        h_search = _faiss_method(h, ids, mult, set_ef)
        efs = [e for e in (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024) if e >= top_k * mult]
        chosen_ef, pts = _sweep(h_search, efs, (xq_tune, truth_tune), (xq, truth), top_k, tune_target, plot_batch)
        chosen_ef = chosen_ef or pts[-1][0]
        recall = next(r for p, r, _ in pts if p == chosen_ef)
        faiss.cvar.hnsw_stats.reset()
        h_search(xq[:256], top_k, chosen_ef)
        ndis = faiss.cvar.hnsw_stats.ndis / 256
        h_bytes = faiss.serialize_index(h).nbytes / num_classes
        timed.append((
            MethodRun(f"FAISS IndexHNSWFlat M={hnsw_m}", f"efSearch={chosen_ef}", recall, h_build, h_bytes,
                      ndis * 4 * d, {}, [(r, q) for _, r, q in pts]),
            lambda x: h_search(x, top_k, chosen_ef),
        ))  # fmt: skip
        print(f"  hnsw: {timed[-1][0].setting} recall {recall:.3f}", flush=True)

    for rc in routed_configs:
        timed.append(_routed_run(rc, xb, ids, labels, nlist, xq, truth, xq_tune, truth_tune, top_k, tune_target,
                                 plot_batch, cache))  # fmt: skip
        print(f"  {timed[-1][0].name}: {timed[-1][0].setting} recall {timed[-1][0].recall:.3f}", flush=True)

    bandwidth = max(bandwidth, copy_bandwidth_gbs(bw_bytes))  # again: the best of both, less load-dependent
    # Final timings: every method's passes interleaved, so background load hits them alike.
    for b in batch_sizes:
        n_b = len(xq) if b > 1 else min(len(xq), 512)
        times = time_interleaved([f for _, f in timed], xq[:n_b], b, FINAL_ROUNDS if b > 1 else 2)
        for (run, _), t in zip(timed, times, strict=True):
            run.timings[b] = t
    for run, _ in timed:
        runs.append(run)
        print(f"  {run.name}: {run.setting} {run.timings}", flush=True)

    report = {
        "name": name,
        "machine": machine_description(),
        "threads": threads,
        "copy_bandwidth_gbs": bandwidth,
        "prototypes": n,
        "classes": num_classes,
        "dim": d,
        "nlist": nlist,
        "top_k": top_k,
        "target_recall": target_recall,
        "tune_target": tune_target,
        "final_rounds": FINAL_ROUNDS,
        "eval_queries": len(xq),
        "runs": [dataclasses.asdict(r) for r in runs],
    }
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=1, default=float))
    table = markdown_table(report)
    (out_dir / f"{name}.md").write_text(table)
    plot(report, out_dir / f"{name}.png", plot_batch)
    print(table, flush=True)
    return report


def machine_description() -> str:
    """CPU model, cores and memory of this machine, in words."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except OSError:
        mem = float("nan")
    return f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()}"


def markdown_table(report: dict[str, Any]) -> str:
    """One row per method: setting, recall, QPS and p50/p99 per batch size, build, bytes/class, floor %."""
    runs = report["runs"]
    batches = sorted({int(b) for r in runs for b in r["timings"]})
    ivfs = [r for r in runs if r["name"].startswith("FAISS IndexIVF") and "64" in map(str, r["timings"])]
    ivf = max(ivfs, key=lambda r: {str(b): v for b, v in r["timings"].items()}["64"]["qps"], default=None)
    head = ["method", "setting", f"recall@{report['top_k']}"]
    head += [f"QPS b={b}" for b in batches] + [f"p50/p99 ms b={b}" for b in batches]
    head += ["× best IVF (b=64)", "build s", "bytes/class", "bw floor %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    bw = report["copy_bandwidth_gbs"] * 1e9
    for r in runs:
        t = {int(b): v for b, v in r["timings"].items()}
        ratio = (
            t[64]["qps"] / {int(b): v for b, v in ivf["timings"].items()}[64]["qps"]
            if ivf and 64 in t
            else float("nan")
        )
        floor = 100 * t.get(64, t[batches[-1]])["qps"] * r["bytes_per_query"] / bw
        row = [r["name"], r["setting"], f"{r['recall']:.3f}"]
        row += [f"{t[b]['qps']:.0f}" for b in batches]
        row += [f"{t[b]['p50_ms']:.2f} / {t[b]['p99_ms']:.2f}" for b in batches]
        row += [f"{ratio:.2f}", f"{r['build_s']:.0f}", f"{r['bytes_per_class']:.0f}", f"{floor:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path, batch: int = 64) -> None:
    """Recall vs QPS at `batch` for every swept method (log QPS)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in report["runs"]:
        pts = sorted(r["curve"]) or [(r["recall"], r["timings"][batch]["qps"] if batch in r["timings"] else
                                      r["timings"][str(batch)]["qps"])]  # fmt: skip
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=r["name"])
    ax.axvline(report["target_recall"], color="grey", ls="--", lw=1)
    ax.set_xlabel(f"search recall@{report['top_k']} (classes, vs exact)")
    ax.set_ylabel(f"queries / s (batch {batch}, {report['threads']} threads)")
    ax.set_yscale("log")
    ax.set_title(f"{report['name']}: {report['classes']} classes × {report['dim']}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bench_index(
    *,
    prototypes: Path | None = None,
    labels: Path | None = None,
    queries: Path | None = None,
    name: str | None = None,
    num_classes: int = 1_000_000,
    dim: int = 128,
    num_queries: int = 4096,
    top_k: int = 10,
    threads: int = 2,
    target_recall: float = 0.95,
    batch_sizes: Sequence[int] = (1, 64, 1024),
    routed_configs: Sequence[dict[str, Any]] = ROUTED_CONFIGS,
    hnsw: bool = True,
    out_dir: Path = Path(".cache/megaclass/bench/index"),
    cache_dir: Path | None = Path(".cache/megaclass/bench/index-cache"),
    doc: Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """`megaclass bench index`: on the user's files (P.npy, labels.txt, Q.npy) or the synthetic set.

    Without files: `synthetic_embeddings(num_classes, dim)`. Queries are split in half: tuning and
    evaluation. With `doc`, the table and plot go into its "index-<name>" section.
    """
    from megaclass.python_backend.index.file_ops import read_label_file, read_vectors

    if prototypes is not None:
        if labels is None or queries is None:
            raise ValueError("--prototypes needs --labels and --queries")
        xb = read_vectors(prototypes, "prototypes")
        ids, names = read_label_file(labels, len(xb))
        xq = read_vectors(queries, "queries")
        name = name or Path(prototypes).stem
        source = f"`--prototypes {prototypes} --labels {labels} --queries {queries}`"
    else:
        xb, ids, xq = synthetic_embeddings(num_classes, dim, num_queries=num_queries, seed=seed)
        names = {int(i): str(i) for i in ids}
        name = name or f"synthetic-{num_classes}x{dim}"
        source = f"`synthetic_embeddings({num_classes}, {dim}, seed={seed})`, {num_queries} queries"
    report = run_index_benchmark(
        xb, ids, names, xq, name=name, top_k=top_k, batch_sizes=batch_sizes, threads=threads,
        target_recall=target_recall, routed_configs=routed_configs, hnsw=hnsw, out_dir=out_dir,
        cache_dir=cache_dir,
    )  # fmt: skip
    if doc is not None:
        write_doc_section(report, Path(doc), Path(out_dir) / f"{name}.png", source)
    return report


def write_doc_section(report: dict[str, Any], doc: Path, png: Path, source: str) -> None:
    """Put the table and plot into `doc` (section `index-<name>`), plot copied to `doc`'s img/ folder."""
    from megaclass.loadtest.report import update_doc_section

    img = doc.parent / "img" / f"index-{report['name']}.png"
    img.parent.mkdir(parents=True, exist_ok=True)
    img.write_bytes(Path(png).read_bytes())
    text = (
        f"## Routed index vs FAISS: {report['name']}\n\n"
        f"Machine: {report['machine']}; {report['threads']} threads for every method; measured copy bandwidth "
        f"{report['copy_bandwidth_gbs']:.1f} GB/s. Data: {source}; {report['prototypes']} prototypes, "
        f"{report['classes']} classes, dim {report['dim']}. Recall: search recall@{report['top_k']} of classes "
        f"against exact search on {report['eval_queries']} held-out queries (settings tuned on another "
        f"{report['eval_queries']}, the two halves drawn at random, for every method alike). Each method at "
        f"its fastest setting reaching recall {report.get('tune_target', report['target_recall']):.3f} on the "
        f"tuning half (the target {report['target_recall']} plus a margin, so that it holds on the held-out half). "
        f"QPS = queries / wall time over all batches (best of {report.get('final_rounds', 3)} passes, every "
        "method's passes interleaved round-robin); p50/p99 = per-batch latency. "
        "bw floor % = QPS × bytes read per query ÷ copy bandwidth.\n\n"
        + markdown_table(report)
        + f"\n![recall vs QPS]({img.relative_to(doc.parent)})\n"
    )
    update_doc_section(doc, f"index-{report['name']}", text)


def glyph_embedding_files(
    encoder_onnx: Path,
    out_dir: Path,
    *,
    glyph_dir: Path = Path(".cache/megaclass/glyphs"),
    num_queries: int = 4096,
    seed: int = 0,
    batch_size: int = 1024,
    prototypes_per_class: int = 4,
) -> tuple[Path, Path, Path]:
    """Glyph embeddings from an exported encoder (ONNX), as P.npy / L.txt / Q.npy for `bench_index`.

    Every class the installed fonts render (GlyphDataConfig defaults, no class limit) is embedded
    from its training-font samples and reduced to up to `prototypes_per_class` k-means centres
    (`export.prototypes.class_prototypes`; 0 keeps every sample as a prototype). The queries are
    `num_queries` samples of the held-out fonts. Labels are "U+XXXX" code points.
    """
    import onnxruntime as ort

    from megaclass.export.config import GlyphDataConfig
    from megaclass.export.data.glyphs import render_glyph_dataset, split_glyphs
    from megaclass.export.enrol.prototypes import class_prototypes
    from megaclass.python_backend.serving.preprocess import to_model_input

    out_dir = Path(out_dir)
    paths = out_dir / "P.npy", out_dir / "L.txt", out_dir / "Q.npy"
    if all(p.exists() for p in paths):
        return paths
    cfg = GlyphDataConfig(max_classes=None, seed=seed)
    ds = render_glyph_dataset(cfg, Path(glyph_dir))
    splits = split_glyphs(ds, cfg)
    session = ort.InferenceSession(str(encoder_onnx), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def embed(images: np.ndarray) -> np.ndarray:
        out = [
            session.run(None, {name: to_model_input(images[s : s + batch_size])})[0]
            for s in range(0, len(images), batch_size)
        ]
        x = np.concatenate(out).astype(np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    samples = embed(splits.train.images)
    cps = splits.train.codepoints[splits.train.class_index]
    if prototypes_per_class > 0:
        protos, cps = class_prototypes(samples, cps, prototypes_per_class, seed=seed)
    else:
        protos = samples
    rng = np.random.default_rng(seed)
    q = splits.held_out_fonts
    pick = np.sort(rng.choice(len(q.images), min(num_queries, len(q.images)), replace=False))
    queries = embed(q.images[pick])
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(paths[0], protos, allow_pickle=False)
    paths[1].write_text("".join(f"U+{int(c):04X}\n" for c in cps), encoding="utf-8")
    np.save(paths[2], queries, allow_pickle=False)
    return paths
