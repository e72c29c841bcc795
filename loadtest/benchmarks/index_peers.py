"""Peer ANN libraries in `megaclass bench index`: ScaNN, USearch and hnswlib, each where installed.

scripts/setup.sh installs them (requirements-bench.txt); where one is missing the benchmark says so. Every peer is searched for `k × mult`
prototypes and their classes aggregated exactly as FAISS's are (`faiss_class_search`), swept on its
own search parameter with the same protocol (`sweep_param`: tuned on the tuning half, measured on the
evaluation half) and timed with the others (interleaved).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from megaclass.loadtest.benchmarks.index_methods import (
    HNSW_EF_CONSTRUCTION,
    MethodRun,
    Timed,
    Workload,
    hnsw_ef_grid,
    sweep_param,
)
from megaclass.python_backend.index.aggregation import aggregate_classes

PEER_MODULES = {"scann": "scann", "usearch": "usearch.index", "hnswlib": "hnswlib"}
SCANN_LEAVES_SEARCHED = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def available_peers() -> dict[str, str | None]:
    """Each peer library's installed version, None where it does not import."""
    found: dict[str, str | None] = {}
    for dist, module in PEER_MODULES.items():
        try:
            importlib.import_module(module)
            found[dist] = importlib.metadata.version(dist)
        except Exception:  # noqa: BLE001 - a peer that does not import is simply absent
            found[dist] = None
    return found


def _class_search(
    knn: Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]], w: Workload
) -> Callable[[np.ndarray, int, int], np.ndarray]:
    """(xq, k, param) -> top-k classes, from a prototype search `knn(xq, n, param) -> (scores, rows)`
    whose scores are inner products (higher is better) and rows -1 where missing."""

    def search(xq: np.ndarray, k: int, param: int) -> np.ndarray:
        scores, rows = knn(xq, k * w.mult, param)
        rows = rows.astype(np.int64)
        cand = np.where((rows >= 0) & (rows < len(w.ids)), w.ids[np.clip(rows, 0, len(w.ids) - 1)], -1)
        return aggregate_classes(scores.astype(np.float32), cand, k)[0]

    return search


def _run(
    name: str, setting: str, w: Workload, search: Callable, params: list[int], target: float, plot_batch: int,
    build_s: float, nbytes: float,
) -> Timed:  # fmt: skip
    chosen, recall, curve = sweep_param(search, params, w, target, plot_batch)
    run = MethodRun(name, f"{setting}={chosen}", recall, build_s, nbytes / w.num_classes, float("nan"), {}, curve)
    return run, lambda x: search(x, w.top_k, chosen)


def scann_run(w: Workload, target: float, plot_batch: int, threads: int) -> Timed:
    """ScaNN as its README recommends: a tree of ~√N leaves, anisotropic asymmetric hashing (2 dims per
    block), exact re-ordering; swept on leaves searched with a re-order depth of 10 × the candidates."""
    from scann import scann_ops_pybind

    n, d = w.xb.shape
    leaves = max(2, int(round(np.sqrt(n))))
    hits = w.top_k * w.mult
    t0 = time.perf_counter()
    searcher = (
        scann_ops_pybind.builder(w.xb, hits, "dot_product")
        .tree(num_leaves=leaves, num_leaves_to_search=max(1, leaves // 20), training_sample_size=n)
        .score_ah(2, anisotropic_quantization_threshold=0.2)
        .reorder(10 * hits)
        .set_n_training_threads(threads)
        .build()
    )
    build_s = time.perf_counter() - t0
    searcher.set_num_threads(threads)
    mini = max(1, plot_batch // threads)

    def knn(xq: np.ndarray, m: int, leaves_searched: int) -> tuple[np.ndarray, np.ndarray]:
        rows, scores = searcher.search_batched_parallel(
            xq, final_num_neighbors=m, leaves_to_search=leaves_searched, pre_reorder_num_neighbors=10 * m,
            batch_size=mini,
        )  # fmt: skip
        return np.asarray(scores), np.asarray(rows)

    params = [p for p in SCANN_LEAVES_SEARCHED if p <= leaves]
    nbytes = n * (d // 2 * 0.5 + 4 * d)  # 4-bit AH codes (2 dims per 16-centroid block) + float32 re-order rows
    return _run(f"ScaNN leaves={leaves}", "leaves_to_search", w, _class_search(knn, w), params, target,
                plot_batch, build_s, nbytes)  # fmt: skip


def usearch_run(w: Workload, m: int, target: float, plot_batch: int, threads: int) -> Timed:
    """USearch HNSW with `m` links, exact float32 vectors, efConstruction 200, swept on expansion_search."""
    from usearch.index import Index

    n, d = w.xb.shape
    t0 = time.perf_counter()
    index = Index(ndim=d, metric="ip", dtype="f32", connectivity=m, expansion_add=HNSW_EF_CONSTRUCTION)
    index.add(np.arange(n), w.xb, threads=threads)
    build_s = time.perf_counter() - t0

    def knn(xq: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        index.expansion_search = ef
        found = index.search(xq, k, threads=threads)
        keys = np.asarray(found.keys).astype(np.int64).reshape(len(xq), -1)
        dist = np.asarray(found.distances, dtype=np.float32).reshape(len(xq), -1)
        # one query gives a Matches (no counts), several a BatchMatches
        counts = np.asarray(getattr(found, "counts", [keys.shape[1]])).reshape(-1, 1)
        valid = np.arange(keys.shape[1])[None, :] < counts
        return np.where(valid, 1.0 - dist, -np.inf), np.where(valid, keys, -1)

    efs = hnsw_ef_grid(w)
    return _run(f"USearch HNSW M={m}", "ef", w, _class_search(knn, w), efs, target, plot_batch, build_s,
                float(index.memory_usage))  # fmt: skip


def hnswlib_run(w: Workload, m: int, target: float, plot_batch: int, threads: int) -> Timed:
    """hnswlib HNSW with `m` links, efConstruction 200, swept on ef."""
    import hnswlib

    n, d = w.xb.shape
    t0 = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=d)
    index.init_index(max_elements=n, M=m, ef_construction=HNSW_EF_CONSTRUCTION, random_seed=100)
    index.set_num_threads(threads)
    index.add_items(w.xb, np.arange(n))
    build_s = time.perf_counter() - t0

    def knn(xq: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        index.set_ef(ef)
        rows, dist = index.knn_query(xq, k=k, num_threads=threads)
        return 1.0 - dist, rows

    efs = hnsw_ef_grid(w)
    nbytes = n * (4 * d + 8 * m + 16)  # vectors, level-0 links (2M), labels
    return _run(f"hnswlib HNSW M={m}", "ef", w, _class_search(knn, w), efs, target, plot_batch, build_s, nbytes)


def peer_runs(
    w: Workload, target: float, plot_batch: int, threads: int, hnsw_ms: Sequence[int]
) -> tuple[list[Timed], dict]:
    """Every installed peer's tuned run (the HNSW peers at each link count in `hnsw_ms`), and which
    peers were present (name -> version or None)."""
    present = available_peers()
    makers: list[tuple[str, Callable[[], Timed]]] = [("scann", lambda: scann_run(w, target, plot_batch, threads))]
    for m in hnsw_ms:
        makers.append(("usearch", lambda m=m: usearch_run(w, m, target, plot_batch, threads)))
        makers.append(("hnswlib", lambda m=m: hnswlib_run(w, m, target, plot_batch, threads)))
    timed: list[Timed] = []
    for name, make in makers:
        if present[name] is not None:
            timed.append(make())
            print(f"  {timed[-1][0].name}: {timed[-1][0].setting} recall {timed[-1][0].recall:.3f}", flush=True)
    return timed, present


def describe_peers(present: dict[str, Any]) -> str:
    """One line for the report: which peers ran, which were absent."""
    ran = [f"{k} {v}" for k, v in present.items() if v]
    absent = [k for k, v in present.items() if not v]
    text = "peers: " + (", ".join(ran) or "none installed")
    return text + (f" (absent: {', '.join(absent)}; scripts/setup.sh installs them)" if absent else "")
