"""What a lent GPU machine checks and times in one short call (`scripts/gpu_check.sh` runs this).

1. The routed index's torch backend on the GPU against the same index scanned by FAISS on the
   machine's CPU cores and against exact search on the GPU (synthetic clustered embeddings):
   search recall@10 and queries per second at batches of 1, 64 and 1024.
2. The Triton server from the nvidia-pytriton wheel serving the `gpu-torch` repository: the
   PyTorch encoder on the GPU hands its output to the retriever through DLPack, the retriever
   searches the index on the GPU. Closed-loop gRPC load (`closed_loop.py`) over a concurrency
   sweep, dynamic batching on, then off at the same concurrency.

Results: `gpu_check.json` and `gpu_check.md` (the section for docs/benchmarks.md) in `--out`.
Usage: python -m megaclass.loadtest.benchmarks.gpu_check --out DIR [--classes N] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from megaclass.loadtest.reporting import markdown_table
from megaclass.python_backend.serving.thread_budget import usable_cores

INDEX_HEADER = ["method", "recall@10", "QPS b=1", "QPS b=64", "QPS b=1024", "p99 ms b=64"]
SERVING_HEADER = ["mode", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "failures"]


def log(*args: Any) -> None:
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def gpu_name() -> str:
    import torch

    if not torch.cuda.is_available():
        return "no GPU (dry run on the CPU)"
    p = torch.cuda.get_device_properties(0)
    return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"


def index_on_gpu(work: Path, classes: int, dim: int, top_k: int = 10, target: float = 0.95) -> dict[str, Any]:
    """Routed index (torch on CUDA) vs the same index scanned by FAISS on the CPU vs exact on the GPU."""
    import faiss
    import torch

    from megaclass.export.config import IndexConfig
    from megaclass.loadtest.benchmarks.index_data import synthetic_embeddings
    from megaclass.python_backend.index.routed_index import RoutedIndex
    from megaclass.python_backend.index.tuning import search_recall_at_k, smallest_reaching, time_search

    t0 = time.perf_counter()
    xb, ids, xq = synthetic_embeddings(classes, dim, num_queries=4096, seed=0)
    log(f"index: {len(xb)} prototypes x {dim} generated in {time.perf_counter() - t0:.1f} s")
    labels = {int(c): f"c{int(c)}" for c in np.unique(ids)}
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = IndexConfig(backend="torch", device=dev, kmeans_iters=10)
    t0 = time.perf_counter()
    index = RoutedIndex.build(xb, ids, labels, cfg)
    build_s = time.perf_counter() - t0
    log(f"index: built nlist={index.nlist} in {build_s:.1f} s")
    index.save(work / "index")
    truth = index.exact_search(xq, top_k).class_ids

    def recall(nprobe: int) -> float:
        return search_recall_at_k(index.search(xq, top_k, nprobe=nprobe).class_ids, truth)

    grid = [1, 2, 4, 8, 16, 32, 64, 128, 256, index.nlist]
    nprobe, seen = smallest_reaching(recall, [g for g in grid if g <= index.nlist], target)
    nprobe = nprobe or index.nlist
    log(f"index: nprobe {nprobe} reaches recall {seen[nprobe]:.3f}")

    xb_gpu = torch.from_numpy(xb).to(dev)
    row_class = torch.from_numpy(ids).to(dev)

    def exact_gpu(x: np.ndarray) -> np.ndarray:
        s = torch.from_numpy(x).to(dev) @ xb_gpu.T
        top = torch.topk(s, top_k, dim=1).indices  # one prototype per class in this set
        return row_class[top].cpu().numpy()

    exact_recall = search_recall_at_k(exact_gpu(xq), truth)
    methods = {
        "routed, torch on the GPU": lambda x: index.search(x, top_k, nprobe=nprobe),
        "exact, torch on the GPU": exact_gpu,
    }
    rows: dict[str, dict[str, Any]] = {m: {"timings": {}} for m in methods}
    for name, fn in methods.items():
        for b in (1, 64, 1024):
            q = xq[:256] if b == 1 else xq
            rows[name]["timings"][b] = time_search(fn, q, b, repeats=2)
        log(f"index: {name}: {rows[name]['timings']}")
    rows["routed, torch on the GPU"]["recall"] = seen[nprobe]
    rows["exact, torch on the GPU"]["recall"] = exact_recall
    index.use_backend("faiss")
    threads = faiss.omp_get_max_threads()
    cpu = f"routed, FAISS scan on {threads} CPU threads"
    rows[cpu] = {"recall": recall(nprobe), "timings": {}}
    for b in (1, 64, 1024):
        q = xq[:256] if b == 1 else xq
        rows[cpu]["timings"][b] = time_search(lambda x: index.search(x, top_k, nprobe=nprobe), q, b, repeats=1)
    log(f"index: {cpu}: {rows[cpu]['timings']}")
    return {"classes": classes, "dim": dim, "nlist": index.nlist, "nprobe": nprobe, "build_s": build_s, "rows": rows}


def serving_on_gpu(
    work: Path, index_dir: Path, dim: int, concurrency: list[int], seconds: float, image_size: int = 32
) -> dict[str, Any]:
    """Triton (pytriton wheel) with the gpu-torch repository: sweep with dynamic batching on, then off."""
    import torch

    from megaclass.export.repository.generate import ModelShapes, build_repository, use_cpu_instances
    from megaclass.loadtest.closed_loop import run_closed_loop
    from megaclass.python_backend.server.triton_server import free_port, start_server
    from megaclass.python_backend.serving.config import ExportConfig, ModelServingConfig, ServingConfig
    from megaclass.python_backend.serving.encoder_model import GlyphEncoder, save_encoder

    torch.manual_seed(0)
    weights = save_encoder(GlyphEncoder(embedding_dim=dim, width=32).eval(), work / "encoder.pt", image_size=image_size)
    images = np.random.default_rng(0).random((1, 1, image_size, image_size), dtype=np.float32)
    out: dict[str, Any] = {"points": []}
    batched = ModelServingConfig(max_batch_size=256, preferred_batch_sizes=(64, 128, 256), max_queue_delay_us=500)
    for label, model_cfg, levels in [
        ("dynamic batching", batched, concurrency),
        ("no batching", replace(batched, dynamic_batching=False), [c for c in concurrency if c >= 32]),
    ]:
        serving = ServingConfig(target="gpu-torch", encoder=model_cfg, retriever=model_cfg, trt_fp16=True)
        repo = work / f"repo-{len(out['points'])}"
        build_repository(repo, weights, index_dir, ModelShapes(image_size, dim), serving, ExportConfig(), encoded_images=False)  # fmt: skip
        if not torch.cuda.is_available():
            use_cpu_instances(repo)  # a dry run of the same models on the CPU
        t0 = time.perf_counter()
        server = start_server(
            repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), work_dir=work / "triton"
        )
        log(f"serving ({label}): server ready in {time.perf_counter() - t0:.1f} s")
        try:
            out.setdefault("answer", answer_over_http(server.http_url, images))
            log(f"serving: one answer over HTTP: {out['answer']}")
            for c in levels:
                p = run_closed_loop(server.grpc_url, "classify", {"IMAGE": images}, c, duration_s=seconds)
                out["points"].append({"mode": label, **p.as_dict()})
                log(f"serving ({label}) c={c}: {p.rps:.0f} req/s p50 {p.p50_ms:.2f} p99 {p.p99_ms:.2f} ms, "
                    f"failures {p.failures} {p.first_error}")  # fmt: skip
        finally:
            server.stop()
    return out


def answer_over_http(http_url: str, images: np.ndarray) -> dict[str, Any]:
    """One classify request as plain KServe-v2 JSON (no client library): what the server answers."""
    import urllib.error
    import urllib.request

    body = {"inputs": [{"name": "IMAGE", "shape": list(images.shape), "datatype": "FP32", "data": images.ravel().tolist()}]}  # fmt: skip
    url = f"http://{http_url}/v2/models/classify/infer"
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            outs = {o["name"]: o["data"] for o in json.load(resp)["outputs"]}
    except urllib.error.HTTPError as exc:
        return {"error": exc.read().decode()[:500]}
    return {"labels": outs["LABELS"][:3], "scores": outs["SCORES"][:3], "version": outs["INDEX_VERSION"][0]}


def markdown(report: dict[str, Any]) -> str:
    """The docs/benchmarks.md section."""
    lines = [f"Device: {report['device']}; host CPU: {report['cpu']}.", ""]
    idx = report.get("index")
    if idx:
        lines += [
            f"**Index**: {idx['classes']:,} synthetic classes x {idx['dim']} (clustered, `synthetic_embeddings`), "
            f"nlist {idx['nlist']}, nprobe {idx['nprobe']} (smallest reaching recall@10 >= 0.95), "
            f"build {idx['build_s']:.0f} s (k-means by FAISS on the CPU).",
            "",
        ]
        rows = [
            [name, f"{r['recall']:.3f}", *(f"{r['timings'][b]['qps']:,.0f}" for b in (1, 64, 1024)),
             f"{r['timings'][64]['p99_ms']:.2f}"]
            for name, r in idx["rows"].items()
        ]  # fmt: skip
        lines += [markdown_table(INDEX_HEADER, rows), ""]
    srv = report.get("serving")
    if srv:
        lines += [
            "**Serving** (`classify` ensemble, one 32x32 image per request, gRPC closed loop from the same "
            "machine, `gpu-torch` repository: PyTorch encoder FP16 on the GPU -> DLPack -> retriever searching "
            "the index above on the GPU):",
            "",
        ]
        rows = [
            [p["mode"], str(p["concurrency"]), f"{p['rps']:,.0f}", f"{p['p50_ms']:.2f}", f"{p['p95_ms']:.2f}",
             f"{p['p99_ms']:.2f}", str(p["failures"])]
            for p in srv["points"]
        ]  # fmt: skip
        lines.append(markdown_table(SERVING_HEADER, rows))
        by = {(p["mode"], p["concurrency"]): p["rps"] for p in srv["points"]}
        ratios = [
            f"c={c}: {by[('dynamic batching', c)] / by[('no batching', c)]:.2f}x"
            for (m, c) in by
            if m == "no batching" and by[(m, c)] > 0
        ]
        if ratios:
            lines += ["", "Dynamic batching vs none, same server and load: " + ", ".join(ratios) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/megaclass-gpu-check")
    ap.add_argument("--classes", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--concurrency", default="1,8,32,64,128")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: index, serving")
    args = ap.parse_args(argv)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    cpu = f"{platform.processor() or platform.machine()}, {usable_cores()} cores"
    report: dict[str, Any] = {"device": gpu_name(), "cpu": cpu}

    def save() -> None:
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
        (out / "gpu_check.md").write_text(markdown(report))

    skip = set(args.skip.split(","))
    if "index" not in skip:
        try:
            report["index"] = index_on_gpu(work, args.classes, args.dim)
        except Exception as exc:  # keep going: the serving part is checked even so
            import traceback

            report["index_error"] = traceback.format_exc()
            log(f"index part failed: {exc!r}")
        save()
    if "serving" not in skip:
        index_dir = work / "index"
        if not (index_dir / "manifest.json").exists():
            report["index"] = index_on_gpu(work, args.classes, args.dim)
        report["serving"] = serving_on_gpu(
            work, index_dir, args.dim, [int(c) for c in args.concurrency.split(",")], args.seconds
        )
        save()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
