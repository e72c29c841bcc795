"""The serving part of the GPU check: the `gpu-torch` repository (PyTorch encoder FP16 with CUDA graphs
-> DLPack -> the retriever's GPU search) on the pytriton wheel's tritonserver. The batching sweep
chooses batch size, queue delay and encoder instances (`loadtest/batching_sweep.py`), the chosen
setting is saturated (`loadtest/saturate.py`), and Triton's per-model statistics give the retriever's
share of server compute time at the best concurrency. Runs on the CPU too (a dry run, CPU instances).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

HEADER = ["concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "failures"]


def log(*args: Any) -> None:
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def compute_ns(url: str) -> dict[str, float]:
    """Triton's cumulative compute time per model (input + infer + output, nanoseconds)."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(as_json=True)
    out = {}
    for m in stats.get("model_stats", []):
        s = m.get("inference_stats", {})
        out[m["name"]] = sum(
            float(s.get(k, {}).get("ns", 0)) for k in ("compute_input", "compute_infer", "compute_output")
        )
    return out


def gpu_torch_builder(work: Path, index_dir: Path, dim: int, image_size: int = 32) -> Any:
    """A repository builder (for `sweep_batching`) over an untrained encoder and `index_dir`."""
    import torch

    from megaclass.export.repository.generate import ModelShapes, build_repository, use_cpu_instances
    from megaclass.python_backend.serving.config import ExportConfig
    from megaclass.python_backend.serving.encoder_model import GlyphEncoder, save_encoder

    torch.manual_seed(0)
    weights = save_encoder(GlyphEncoder(embedding_dim=dim, width=32).eval(), work / "encoder.pt", image_size=image_size)

    def build(serving: Any, folder: Path) -> Path:
        repo = folder / "repository"
        build_repository(repo, weights, index_dir, ModelShapes(image_size, dim), serving, ExportConfig(), encoded_images=False)  # fmt: skip
        if not torch.cuda.is_available():
            use_cpu_instances(repo)  # a dry run of the same models on the CPU
        return repo

    return build


def serving_on_gpu(work: Path, index_dir: Path, dim: int, budget_mb: int, grid: Any, sweep_levels: list[int],
                   levels: list[int], seconds: float, config_out: Path | None = None,
                   processes: int = 8) -> dict[str, Any]:  # fmt: skip
    """Sweep, then saturate the chosen setting; returns its points, the best one and the compute shares."""
    from megaclass.loadtest.batching_sweep import sweep_batching, write_serving_sections
    from megaclass.loadtest.saturate import best_point, model_inputs, run_saturating, saturate
    from megaclass.python_backend.server.triton_server import free_port, start_server
    from megaclass.python_backend.serving.config import GpuRetrievalConfig, ServingConfig

    build = gpu_torch_builder(work, index_dir, dim)
    inputs = model_inputs({"IMAGE": [1, 32, 32]})
    base = ServingConfig(target="gpu-torch", gpu_retrieval=GpuRetrievalConfig(memory_budget_mb=budget_mb))
    chosen, sweep = sweep_batching(build, base, grid, work / "sweep", inputs, sweep_levels, seconds, progress=log,
                                   processes=processes)  # fmt: skip
    if config_out is not None:
        write_serving_sections(config_out, chosen, note="chosen by the GPU check's batching sweep")
    repo = build(chosen, work / "chosen")
    server = start_server(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                          work_dir=work / "chosen" / "triton")  # fmt: skip
    try:
        points = saturate(server.grpc_url, "classify", inputs, levels, seconds, processes=processes, progress=log)
        best = best_point(points) or points[-1]
        before = compute_ns(server.grpc_url)
        final = run_saturating(server.grpc_url, "classify", inputs, best.concurrency, seconds, processes=processes)
        after = compute_ns(server.grpc_url)
    finally:
        server.stop()
    used = {m: after.get(m, 0.0) - before.get(m, 0.0) for m in ("encoder", "retriever")}
    share = used["retriever"] / max(sum(used.values()), 1.0)
    log(f"serving: best c={final.concurrency}: {final.rps:,.0f} req/s p99 {final.p99_ms:.2f} ms, retriever {share:.1%}")
    enc = chosen.encoder
    return {
        "chosen": {"max_batch_size": enc.max_batch_size, "max_queue_delay_us": enc.max_queue_delay_us,
                   "encoder_instances": enc.instances},
        "sweep": [asdict(p) for p in sweep],
        "points": [p.as_dict() for p in points],
        "final": final.as_dict(),
        "retriever_compute_share": share,
        "compute_ns": used,
    }  # fmt: skip


def serving_markdown(srv: dict[str, Any]) -> list[str]:
    """The sweep, the saturation curve of the chosen setting and the issue's serving checks."""
    from megaclass.loadtest.reporting import markdown_table

    c, f = srv["chosen"], srv["final"]
    sweep_rows = [[str(p["max_batch_size"]), str(p["max_queue_delay_us"]), str(p["encoder_instances"]),
                   str(p["concurrency"]), f"{p['rps']:,.0f}", f"{p['p99_ms']:.2f}", str(p["failures"])]
                  for p in srv["sweep"]]  # fmt: skip
    rows = [[str(p["concurrency"]), f"{p['rps']:,.0f}", f"{p['p50_ms']:.2f}", f"{p['p95_ms']:.2f}",
             f"{p['p99_ms']:.2f}", str(p["failures"])] for p in srv["points"]]  # fmt: skip
    return [
        "Batching sweep (each setting on a fresh server, best concurrency of its levels):", "",
        markdown_table(["max batch", "queue delay us", "encoder instances", "concurrency", "req/s", "p99 ms",
                        "failures"], sweep_rows), "",
        f"Chosen: max batch {c['max_batch_size']}, queue delay {c['max_queue_delay_us']} us, "
        f"{c['encoder_instances']} encoder instances. Saturation of the chosen setting:", "",
        markdown_table(HEADER, rows), "",
        f"At its best concurrency ({f['concurrency']}): **{f['rps']:,.0f} req/s** "
        f"({f['rps'] / 916:.1f}x the earlier 916 req/s), p99 {f['p99_ms']:.2f} ms, {f['failures']} failures; "
        f"the retriever took {srv['retriever_compute_share']:.1%} of the server's compute time (Triton's "
        "per-model statistics, encoder + retriever).",
    ]  # fmt: skip
