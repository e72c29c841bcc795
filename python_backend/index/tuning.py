"""Choose search settings (nprobe, probe margin, rerank) for a target search recall on a held-out query sample."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from megaclass.python_backend.index.routed_index import RoutedIndex
from megaclass.python_backend.index.router import top_clusters


def search_recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (ids -1 ignored): recall of approximate vs exact search."""
    hits, total = 0, 0
    for f, t in zip(found, truth, strict=True):
        t = set(t[t >= 0].tolist())
        hits += len(t & set(f[f >= 0].tolist()))
        total += len(t)
    return hits / max(total, 1)


def nprobe_grid(nlist: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, ... (about √2 apart) up to nlist."""
    out, x = [], 1.0
    while int(x) < nlist:
        if int(round(x)) not in out:
            out.append(int(round(x)))
        x *= 2**0.5
    return out + [nlist]


def smallest_reaching(
    recall_at: Callable[[int], float], grid: Sequence[int], target: float, lowest: int = 1
) -> tuple[int | None, dict[int, float]]:
    """Smallest integer setting >= `lowest` whose recall reaches `target`: walk `grid` (ascending), then
    bisect the integers between the last miss (or `lowest`) and the first hit (recall is taken to grow
    with the setting). Returns (setting or None, every recall evaluated)."""
    seen: dict[int, float] = {}
    lo, hi = None, None
    for p in grid:
        seen[p] = recall_at(p)
        if seen[p] >= target:
            hi = p
            break
        lo = p
    if hi is None:
        return None, seen
    lo = lowest - 1 if lo is None else lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        seen[mid] = recall_at(mid)
        lo, hi = (lo, mid) if seen[mid] >= target else (mid, hi)
    return hi, seen


def time_search(fn: Callable[[np.ndarray], Any], queries: np.ndarray, batch: int, repeats: int = 3) -> dict[str, float]:
    """Run `fn` over `queries` in batches: QPS (best of `repeats` passes), p50/p99 batch latency (ms)."""
    fn(queries[: min(batch, len(queries))])  # warm up
    best, lat = np.inf, []
    for _ in range(repeats):
        t_pass = 0.0
        for s in range(0, len(queries), batch):
            t0 = time.perf_counter()
            fn(queries[s : s + batch])
            dt = time.perf_counter() - t0
            lat.append(dt)
            t_pass += dt
        best = min(best, t_pass)
    lat_ms = np.array(lat) * 1e3
    return {
        "qps": len(queries) / best,
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
    }


def time_interleaved(
    fns: Sequence[Callable[[np.ndarray], Any]], queries: np.ndarray, batch: int, rounds: int = 3
) -> list[dict[str, float]]:
    """`time_search` for several functions, passes interleaved round-robin so that a change in the
    machine's background load hits them all alike. QPS: best pass; p50/p99 over all passes.

    Each pass starts with a pause and two untimed calls: the previous function's library threads
    (OpenMP, BLAS) keep spinning on the cores for milliseconds after it returns, and that would land
    on whichever function follows it (measured: -11 % for the native backend right after FAISS IVF)."""
    best = [np.inf] * len(fns)
    lat: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            time.sleep(_SETTLE_S)
            for _ in range(2):
                fn(queries[: min(batch, len(queries))])
            t_pass = 0.0
            for s in range(0, len(queries), batch):
                t0 = time.perf_counter()
                fn(queries[s : s + batch])
                dt = time.perf_counter() - t0
                lat[i].append(dt)
                t_pass += dt
            best[i] = min(best[i], t_pass)
    return [
        {
            "qps": len(queries) / b,
            "p50_ms": float(np.percentile(np.array(v) * 1e3, 50)),
            "p99_ms": float(np.percentile(np.array(v) * 1e3, 99)),
        }
        for b, v in zip(best, lat, strict=True)
    ]


_SETTLE_S = 0.05  # pause before each timed pass (OpenMP's default spin-wait lasts a few ms)


# Re-rank depths tried by `tune`, in multiples of top_k. Half steps up to 4: there the depth sets much of a
# query's cost, and recall at a fixed nprobe grows slowly with it (glyph set, nprobe 7: 0.954 at 30, 0.961
# at 35, 0.965 at 40), so a step of 10 can cost a tenth of the speed at the target.
RERANK_FACTORS = (1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 8, 16, 32)


def rerank_grid(top_k: int) -> list[int]:
    """The re-rank depths `tune` tries for `top_k` (RERANK_FACTORS x top_k, whole and distinct)."""
    return sorted({max(1, int(round(f * top_k))) for f in RERANK_FACTORS})


MARGIN_LEVELS = 32  # probe margins tried by `tune` (quantiles of the route-score gaps)


def search_margin(margin: float | None) -> float:
    """The `probe_margin` to search with for a tuned margin, None meaning fixed probing (search's None
    would mean the index's configured margin)."""
    return np.inf if margin is None else margin


def probe_margin_grid(index: RoutedIndex, queries: np.ndarray, nprobe: int, levels: int = MARGIN_LEVELS) -> list[float]:
    """Candidate probe margins, ascending: quantiles of the gaps between each query's best route score and
    its next `nprobe` - 1 (so the grid fits the data's score scale; the last one keeps every probe)."""
    scores, _ = top_clusters(np.ascontiguousarray(queries, dtype=np.float32), index.centroids, nprobe)
    gaps = (scores[:, :1] - scores[:, 1:]).ravel()
    if not gaps.size:
        return [0.0]
    return sorted({float(g) for g in np.quantile(gaps, np.linspace(0.0, 1.0, levels + 1)[1:])})


@dataclass
class TuneResult:
    """The chosen settings and every point measured on the way."""

    nprobe: int
    rerank: int
    recall: float
    qps: float
    reached: bool  # False: no setting reached the target; the best recall is returned
    probe_margin: float | None = None  # adaptive probing (RoutedIndex.search); None: always nprobe clusters
    curve: list[dict[str, float]] = field(default_factory=list)


def tune(
    index: RoutedIndex,
    queries: np.ndarray,
    *,
    target_recall: float = 0.95,
    top_k: int = 10,
    truth: np.ndarray | None = None,
    nprobes: Sequence[int] | None = None,
    reranks: Sequence[int] | None = None,
    batch: int = 64,
    repeats: int = 2,
    adaptive: bool = True,
) -> TuneResult:
    """Fastest (nprobe, probe margin, rerank) whose search recall@top_k on `queries` reaches `target_recall`.

    For each rerank depth, the smallest nprobe meeting the target is found (grid walk, then bisection);
    with `adaptive`, also the smallest probe margin (probe_margin_grid) that meets it with up to twice
    that nprobe, kept when it scans fewer entries. Those minimal points are timed (interleaved) at
    `batch` queries per call and the one with the most queries per second wins. `truth`: exact top-k
    class ids (computed by brute force when None). Recall is taken never to fall as nprobe or the margin
    grows (for fixed rerank).
    """
    truth = index.exact_search(queries, top_k).class_ids if truth is None else truth
    nprobes = list(nprobes or nprobe_grid(index.nlist))
    if index.cfg.storage == "flat":
        reranks = [0]
    else:
        reranks = list(reranks or rerank_grid(top_k))
    curve: list[dict[str, Any]] = []
    minimal: list[dict[str, Any]] = []
    margins_of: dict[int, list[float]] = {}  # per max nprobe, shared by the re-rank depths

    def measure(nprobe: int, rr: int, margin: float | None) -> dict[str, Any]:
        res = index.search(
            queries, top_k, nprobe=nprobe, rerank=rr, threshold=-np.inf, probe_margin=search_margin(margin)
        )
        return {
            "nprobe": nprobe,
            "rerank": rr,
            "probe_margin": margin,
            "recall": search_recall_at_k(res.class_ids, truth),
            "candidates": res.stats["candidates"],
            "probes": res.stats["probes_per_query"],
        }

    for rr in reranks:
        fixed, points = _smallest_point(lambda p, rr=rr: measure(p, rr, None), nprobes, target_recall)
        curve.extend(points)
        if fixed is None:
            continue
        minimal.append(fixed)
        if adaptive and fixed["nprobe"] > 1:
            top = min(2 * fixed["nprobe"], index.nlist)
            if top not in margins_of:
                margins_of[top] = probe_margin_grid(index, queries, top)
            margins = margins_of[top]
            levels = [p - 1 for p in nprobe_grid(len(margins))] if len(margins) > 1 else [0]
            point, tried = _smallest_point(
                lambda level, rr=rr, top=top, margins=margins: measure(top, rr, margins[level]), levels, target_recall
            )
            curve.extend(tried)
            if point is not None and point["candidates"] < fixed["candidates"]:
                minimal.append(point)
    reached = bool(minimal)
    if not reached:
        minimal = [max(curve, key=lambda p: p["recall"])]
    best = _fastest(index, queries, minimal, top_k=top_k, batch=batch, repeats=repeats)
    return TuneResult(
        int(best["nprobe"]),
        int(best["rerank"]),
        best["recall"],
        best["qps"],
        reached,
        probe_margin=best["probe_margin"],
        curve=curve,
    )


def _smallest_point(
    measure_at: Callable[[int], dict[str, Any]], grid: Sequence[int], target: float
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The point of the smallest setting on `grid` whose recall reaches `target` (smallest_reaching; None
    when none does) and every point measured on the way, in ascending order of the setting."""
    points: dict[int, dict[str, Any]] = {}

    def recall_at(setting: int) -> float:
        points[setting] = measure_at(setting)
        return points[setting]["recall"]

    chosen, _ = smallest_reaching(recall_at, grid, target)
    return (None if chosen is None else points[chosen]), [points[k] for k in sorted(points)]


def _fastest(
    index: RoutedIndex, queries: np.ndarray, points: list[dict[str, Any]], *, top_k: int, batch: int, repeats: int
) -> dict[str, Any]:
    """Time each point's settings (interleaved), add qps / p50_ms / p99_ms to it, return the fastest."""
    fns = [
        lambda x, p=p: index.search(
            x, top_k, nprobe=int(p["nprobe"]), rerank=int(p["rerank"]), probe_margin=search_margin(p["probe_margin"])
        )
        for p in points
    ]
    for p, t in zip(points, time_interleaved(fns, queries, batch, repeats), strict=True):
        p.update(t)
    return max(points, key=lambda p: p["qps"])
