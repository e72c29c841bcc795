"""The scan backends: route a batch to its clusters, scan their codes, re-rank, aggregate classes.

- "faiss": FAISS's SIMD list scanners (one query at a time, OpenMP over queries), fast scan for PQ.
- "numpy": grouped scan, one BLAS product per cluster and batch (each list read once per batch).
- "torch": the grouped scan with `bmm`, on CUDA where present, else on the CPU.
- "native": 4-bit PQ storage only; route, scan, re-rank and class aggregation fused in one compiled
  call per batch (native/pq4.py).

Functions over a RoutedIndex's arrays and the structures each backend scans; the index calls them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from megaclass.python_backend.index import storage as storage_mod
from megaclass.python_backend.index.aggregation import aggregate_classes
from megaclass.python_backend.index.config import IndexConfig
from megaclass.python_backend.index.grouped_scan import grouped_scan_numpy, grouped_scan_torch
from megaclass.python_backend.index.layout import ADD_CHUNK, padded_layout
from megaclass.python_backend.index.router import drop_far_probes, route
from megaclass.python_backend.serving.device_arrays import is_torch_tensor

if TYPE_CHECKING:
    from megaclass.python_backend.index.routed_index import RoutedIndex

BACKENDS = ("faiss", "numpy", "torch", "native")
TOTALS = ("scanned", "coded", "exact", "probes")  # per-batch counts from `search_batch`
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_backend_storage(backend: str, storage: str, residual: bool = False) -> None:
    """PQ codes are scanned by FAISS or the native kernel; the grouped backends need flat/fp16/sq8."""
    if storage == "pq" and backend not in ("faiss", "native"):
        raise ValueError("pq storage is scanned by the faiss or native backend (use flat, fp16 or sq8)")
    if backend == "native" and storage != "pq":
        raise ValueError("the native backend scans 4-bit pq storage only (use storage='pq', pq_bits=4)")
    if residual and storage == "pq" and backend != "native":
        raise ValueError("residual PQ codes (pq_residual) are scanned by the native backend only")


def backend_for(storage: str, backend: str, residual: bool = False) -> str:
    """`backend` if it can scan `storage`, else one that can (native for residual PQ, else FAISS)."""
    try:
        check_backend_storage(backend, storage, residual)
        return backend
    except ValueError:
        return "native" if storage == "pq" and residual else "faiss"


def faiss_lists(index: RoutedIndex) -> tuple[faiss.IndexIVF, faiss.IndexIVF]:
    """The FAISS backend's inverted lists holding every entry of `index`: (editable, searched form)."""
    storage, codec, vectors, entry_row = index.cfg.storage, index.codec, index._vectors, index._entry_row
    ivf = storage_mod.make_faiss_ivf(storage, index.centroids, codec)
    for s in range(0, len(entry_row), ADD_CHUNK):
        rows = entry_row[s : s + ADD_CHUNK]
        storage_mod.faiss_add(ivf, storage, codec, vectors[rows], rows, index._entry_list[s : s + ADD_CHUNK])
    return ivf, storage_mod.search_form(ivf, storage)


def grouped_lists(index: RoutedIndex, backend: str) -> dict[str, Any]:
    """The numpy / torch backends' padded clusters of `index` (layout.padded_layout), as tensors for torch."""
    cfg = index.cfg
    check_backend_storage(backend, cfg.storage)
    grouped = padded_layout(index._entry_row, index._entry_list, index.nlist, index._vectors, cfg.storage, index.codec)
    grouped["backend"] = backend
    if backend == "torch":
        _to_torch(grouped, index.centroids, cfg)
    return grouped


def resolve_device(device: str) -> str:
    """The torch device for `device`: for "auto" CUDA when torch sees a GPU, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _to_torch(g: dict[str, Any], centroids: np.ndarray, cfg: IndexConfig) -> None:
    import torch

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    dev = torch.device(resolve_device(cfg.device))
    g["codes"] = torch.from_numpy(g["codes"]).to(dev)
    g["rows"] = torch.from_numpy(g["rows"]).to(dev)
    g["centroids"] = torch.from_numpy(centroids).to(dev)
    g["compute_dtype"] = torch.float16 if dev.type == "cuda" and cfg.storage != "flat" else torch.float32


def search_batch(
    index: RoutedIndex, xq: np.ndarray, nprobe: int, margin: float | None, fetch: int, top_k: int
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Route, scan, re-rank and aggregate a batch: (class ids, scores, batch totals of the entries
    scanned, the rows scored with codes, the rows scored exactly after the scan, the clusters probed)."""
    if len(xq) == 0:
        return np.zeros((0, top_k), np.int64), np.zeros((0, top_k), np.float32), dict.fromkeys(TOTALS, 0.0)
    cfg = index.cfg
    if cfg.backend == "native":
        class_ids, best, counts = index._native.search(
            xq, nprobe=nprobe, fetch=fetch, top_k=top_k, threads=cfg.threads or _CPUS, probe_margin=margin
        )
        return class_ids, best, dict(zip(TOTALS, counts.sum(axis=1).astype(float), strict=True))
    scores, rows, probes = scan_clusters(index, xq, nprobe, margin, fetch)
    exact = 0.0  # flat storage: the scan itself is exact
    if cfg.storage != "flat":
        exact = float((rows >= 0).sum())
        scores = exact_scores(index._vectors, xq, rows)
        keep = top_k * index._max_mult  # enough entries for top_k distinct classes
        if scores.shape[1] > keep:
            top = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
            scores = np.take_along_axis(scores, top, axis=1)
            rows = np.take_along_axis(rows, top, axis=1)
    cand = np.where(rows >= 0, index._row_class[np.maximum(rows, 0)], -1)
    class_ids, best = aggregate_classes(scores, cand, top_k)
    probed = probes[probes >= 0]
    totals = {
        "scanned": float(index._sizes[probed].sum()),
        "coded": 0.0,
        "exact": exact,
        "probes": float(probed.size),
    }
    return class_ids, best, totals


def scan_clusters(
    index: RoutedIndex, xq: np.ndarray, nprobe: int, margin: float | None, fetch: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best `fetch` (approximate) scores and entry rows per query from its `nprobe` clusters (those
    that `margin` drops: -1 in the probes returned)."""
    xs, const = storage_mod.scan_queries(index.cfg.storage, xq, index.codec)
    backend = index.cfg.backend
    if backend == "faiss":
        ivf, searched = index._faiss
        probes = faiss_route(ivf.quantizer, xq, nprobe, margin)
        scores, rows = search_preassigned(searched, xs, fetch, probes, nprobe)
        return scores + const[:, None], rows, probes
    g = index._grouped
    if backend == "numpy":
        probes = route(xq, index.centroids, nprobe, margin)
        scores, rows = grouped_scan_numpy(xs, probes, g["codes"], g["rows"], fetch)
    else:
        import torch

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


def exact_scores(vectors: np.ndarray, xq: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Exact inner products of each query with its candidate rows of `vectors` (-inf where rows is -1)."""
    ids = np.ascontiguousarray(np.maximum(rows, 0), dtype=np.int64)
    s = np.empty(ids.shape, dtype=np.float32)
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    # FAISS reads the candidate rows in place (4x faster than gathering them first).
    q, m = ids.shape
    faiss.fvec_inner_products_by_idx(
        faiss.swig_ptr(s), faiss.swig_ptr(xq), faiss.swig_ptr(vectors), faiss.swig_ptr(ids), vectors.shape[1], q, m
    )
    s[rows < 0] = -np.inf
    return s


def faiss_route(quantizer: faiss.Index, xq: np.ndarray, nprobe: int, margin: float | None) -> np.ndarray:
    """The `nprobe` best clusters per query (FAISS flat search, no Python wrapper overhead); those that
    `margin` drops are -1 (FAISS skips such lists)."""
    dist = np.empty((len(xq), nprobe), dtype=np.float32)
    ids = np.empty((len(xq), nprobe), dtype=np.int64)
    quantizer.search_c(len(xq), faiss.swig_ptr(xq), nprobe, faiss.swig_ptr(dist), faiss.swig_ptr(ids))
    return drop_far_probes(ids, dist, margin)


def search_preassigned(
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
