"""The retrieval table of the GPU check: at each size, exact search on the GPU (FP16 GEMM + top-k), the
routed index scanned on the GPU (batched gathers), the retriever as served (the plan chosen by the
memory budget) and the routed FAISS scan on the host's CPU cores; recall@10 against exact FP32 search
and queries per second at batches of 1, 64 and 1024. Runs on the CPU too (a dry run, small sizes).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

BATCHES = (1, 64, 1024)
HEADER = ["classes", "method", "recall@10", "QPS b=1", "QPS b=64", "QPS b=1024", "p99 ms b=64"]


def log(*args: Any) -> None:
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def _timings(fn: Any, queries: Any, repeats: int) -> dict[int, dict[str, float]]:
    from megaclass.python_backend.index.tuning import time_search

    return {b: time_search(fn, queries[:256] if b == 1 else queries, b, repeats=repeats) for b in BATCHES}


def retrieval_at(classes: int, dim: int, budget_mb: int, device: str, save_to: Path | None = None,
                 target: float = 0.95, top_k: int = 10) -> dict[str, Any]:  # fmt: skip
    """One size's rows: {method: {recall, timings, ...}} plus the index's shape and the served plan."""
    import faiss
    import torch

    from megaclass.export.config import IndexConfig
    from megaclass.loadtest.benchmarks.index_data import synthetic_embeddings
    from megaclass.python_backend.index.defaults import FAISS_FLAT
    from megaclass.python_backend.index.gpu_retrieval import load_retriever
    from megaclass.python_backend.index.routed_index import RoutedIndex
    from megaclass.python_backend.index.torch_search import ExactTorchSearch, RoutedTorchSearch
    from megaclass.python_backend.index.tuning import search_recall_at_k, smallest_reaching
    from megaclass.python_backend.serving.config import GpuRetrievalConfig

    t0 = time.perf_counter()
    xb, ids, xq = synthetic_embeddings(classes, dim, num_queries=4096, seed=0)
    index = RoutedIndex.build(
        xb, ids, {int(c): f"c{int(c)}" for c in np.unique(ids)}, IndexConfig(kmeans_iters=8, **FAISS_FLAT)
    )
    build_s = time.perf_counter() - t0
    log(f"retrieval {classes:,}: nlist {index.nlist}, built in {build_s:.0f} s")
    xq_dev = torch.from_numpy(xq).to(device)
    truth = ExactTorchSearch(xb, ids, device, torch.float32).search(xq_dev, top_k)[0]
    exact = ExactTorchSearch(xb, ids, device)  # FP16 on CUDA
    routed = RoutedTorchSearch(index, device)
    recall_at = lambda n: search_recall_at_k(routed.search(xq_dev, top_k, n)[0], truth)  # noqa: E731
    grid = [g for g in (1, 2, 4, 8, 16, 32, 64, 128, 256) if g < index.nlist] + [index.nlist]
    nprobe, seen = smallest_reaching(recall_at, grid, target)
    nprobe = nprobe or index.nlist
    served, plan = load_retriever(index, device, GpuRetrievalConfig(memory_budget_mb=budget_mb))
    index.cfg = dataclasses.replace(index.cfg, nprobe=nprobe)  # the served routed plan probes as tuned
    if save_to is not None:  # the index the serving part serves
        index.save(save_to)
    rows: dict[str, dict[str, Any]] = {}
    methods = {
        f"exact, torch {device} ({str(exact.dtype).removeprefix('torch.')})": (lambda x: exact.search(x, top_k)[0], xq_dev),
        f"routed, torch {device}": (lambda x: routed.search(x, top_k, nprobe)[0], xq_dev),
        f"retriever as served ({plan.mode})": (lambda x: served.search(x, top_k).class_ids, xq_dev),
    }  # fmt: skip
    index.use_backend("faiss")
    methods[f"routed, FAISS on {faiss.omp_get_max_threads()} CPU threads"] = (
        lambda x: index.search(x, top_k, nprobe=nprobe).class_ids, xq)  # fmt: skip
    for name, (fn, queries) in methods.items():
        rows[name] = {"recall": search_recall_at_k(fn(queries), truth), "timings": _timings(fn, queries, 2)}
        log(f"retrieval {classes:,}: {name}: recall {rows[name]['recall']:.3f}, "
            f"QPS {[round(t['qps']) for t in rows[name]['timings'].values()]}")  # fmt: skip
    return {"classes": classes, "dim": dim, "nlist": index.nlist, "nprobe": nprobe, "build_s": build_s,
            "plan": plan.as_dict(), "recall_by_nprobe": seen, "rows": rows}  # fmt: skip


def retrieval_table(
    sizes: list[int], dim: int, budget_mb: int, save: dict[int, Path] | None = None
) -> list[dict[str, Any]]:
    """`retrieval_at` for each size (a failed size is reported, the rest still run); the indexes of
    the sizes in `save` are written to the folders given."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = []
    for n in sizes:
        try:
            out.append(retrieval_at(n, dim, budget_mb, device, (save or {}).get(n)))
        except Exception as exc:  # e.g. out of memory at the largest size: keep the others
            log(f"retrieval {n:,} failed: {exc!r}")
            out.append({"classes": n, "error": repr(exc)[:500]})
        finally:
            if device == "cuda":
                torch.cuda.empty_cache()
    return out


def retrieval_markdown(table: list[dict[str, Any]], budget_mb: int) -> list[str]:
    """The table and the issue's two retrieval checks, as Markdown lines."""
    from megaclass.loadtest.reporting import markdown_table

    rows, checks = [], []
    for t in table:
        if "error" in t:
            rows.append([f"{t['classes']:,}", "failed: " + t["error"][:80], "", "", "", "", ""])
            continue
        for name, r in t["rows"].items():
            tm = r["timings"]
            rows.append([f"{t['classes']:,}", name, f"{r['recall']:.3f}", *(f"{tm[b]['qps']:,.0f}" for b in BATCHES),
                         f"{tm[64]['p99_ms']:.2f}"])  # fmt: skip
        qps = {name.split(",")[0].split(" (")[0]: r["timings"][64]["qps"] for name, r in t["rows"].items()}
        served = next(r for n, r in t["rows"].items() if n.startswith("retriever as served"))
        mode = t["plan"]["mode"]
        ratio_exact = served["timings"][64]["qps"] / qps["exact"]
        cpu = next(r for n, r in t["rows"].items() if "FAISS" in n)["timings"][64]["qps"]
        checks.append(f"- {t['classes']:,} x {t['dim']}: served plan **{mode}** ({t['plan']['reason']}), nlist "
                      f"{t['nlist']}, nprobe {t['nprobe']}; at batch 64 the served retriever runs "
                      f"{ratio_exact:.2f}x exact-on-device QPS and {served['timings'][64]['qps'] / cpu:.1f}x the "
                      f"FAISS scan on the CPU, recall@10 {served['recall']:.3f}.")  # fmt: skip
    lines = [f"Memory budget for exact search: {budget_mb} MiB per retriever instance "
             f"(`serving.gpu_retrieval.memory_budget_mb`); recall@10 against exact FP32 search.", "",
             markdown_table(HEADER, rows), "", *checks]  # fmt: skip
    return lines
