"""Dynamic batching on vs off: perf_analyzer concurrency sweeps of `classify` and `retriever`.

Builds two repositories from the same artifacts that differ only in `dynamic_batching`,
serves each in turn on the same machine, and sweeps concurrency with perf_analyzer. Writes
the CSV, a Markdown table and a PNG plot, and prints the throughput ratio at each level.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path

from megaclass.export.config import ExportConfig, ServingConfig
from megaclass.export.repository.generate import ModelShapes, build_repository
from megaclass.loadtest.benchmarks.cpu_budget import (
    FLOOR_MODELS,
    CpuBudget,
    compare_to_floor,
    encoder_us_per_image,
    floor_repository,
    measure_cpu_budget,
    ratio_ceiling,
    search_us_per_query,
)
from megaclass.loadtest.benchmarks.cpu_budget import markdown_table as budget_table
from megaclass.loadtest.perf import PerfPoint, run_perf, write_csv
from megaclass.loadtest.reporting import copy_into_docs, pyplot, update_doc_section
from megaclass.loadtest.reporting import markdown_table as render_table
from megaclass.python_backend.server.triton_server import free_port, running_server

BATCHING_HEADER = ["concurrency", "no batching", "p50/p95/p99", "dynamic batching", "p50/p95/p99", "ratio"]


def with_batching(serving: ServingConfig, on: bool) -> ServingConfig:
    """The same settings with dynamic batching on or off for both members."""
    return dataclasses.replace(
        serving,
        encoder=dataclasses.replace(serving.encoder, dynamic_batching=on),
        retriever=dataclasses.replace(serving.retriever, dynamic_batching=on),
    )


def sample_inputs(out_dir: Path, shapes: ModelShapes, export: ExportConfig, n: int = 16) -> dict[str, Path]:
    """perf_analyzer input files: random glyph-like images for classify, unit vectors for retriever."""
    import numpy as np

    from megaclass.loadtest.perf import write_input_data

    rng = np.random.default_rng(0)
    images = (rng.random((n, 1, shapes.image_size, shapes.image_size)) > 0.8).astype(np.float32)
    emb = rng.normal(size=(n, shapes.embedding_dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return {
        "classify": write_input_data(out_dir / "input-classify.json", [{export.input_name: x} for x in images]),
        "retriever": write_input_data(out_dir / "input-retriever.json", [{"EMBEDDING": e} for e in emb]),
    }


def sweep(
    onnx_path: Path,
    index_dir: Path,
    shapes: ModelShapes,
    serving: ServingConfig,
    export: ExportConfig,
    out_dir: Path,
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64),
    measurement_ms: int = 3000,
    models: tuple[str, ...] = ("classify", "retriever"),
    stability_percent: float = 25.0,
    budget_concurrency: int | None = None,
) -> tuple[list[dict], dict[str, CpuBudget]]:
    """Rows: mode, model, concurrency, throughput, p50/p95/p99 (ms); and, with `budget_concurrency`,
    the CPU budget of `classify` at that concurrency per mode (see cpu_budget.py)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = sample_inputs(out_dir, shapes, export)
    rows = []
    budgets: dict[str, CpuBudget] = {}
    for mode in ("off", "on"):
        repo = out_dir / f"repository-batching-{mode}"
        build_repository(repo, onnx_path, index_dir, shapes, with_batching(serving, mode == "on"), export)
        ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
        with running_server(repo, work_dir=out_dir / "triton", **ports) as server:
            for model in models:
                points: list[PerfPoint] = run_perf(
                    model, server.grpc_url, concurrency=concurrency, input_data=inputs[model],
                    measurement_ms=measurement_ms, stability_percent=stability_percent,
                )  # fmt: skip
                write_csv(points, out_dir / f"perf-{model}-batching-{mode}.csv")
                for p in points:
                    rows.append(
                        {"mode": mode, "model": model, "concurrency": p.concurrency, "throughput": p.throughput,
                         "p50_ms": p.p50_us / 1e3, "p95_ms": p.p95_us / 1e3, "p99_ms": p.p99_us / 1e3,
                         "stability_percent": p.stability_percent}
                    )  # fmt: skip
            if budget_concurrency:
                budgets[f"batching {mode}"] = measure_cpu_budget(
                    server, "classify", budget_concurrency, input_data=inputs["classify"]
                )
    if budget_concurrency:
        budgets |= floor_budgets(out_dir, shapes, serving, export, inputs["classify"], budget_concurrency)
    (out_dir / "batching.json").write_text(json.dumps(rows, indent=2))
    return rows, budgets


def floor_budgets(
    out_dir: Path, shapes: ModelShapes, serving: ServingConfig, export: ExportConfig, inputs: Path, concurrency: int
) -> dict[str, CpuBudget]:
    """The CPU budget of the two do-nothing floors (`cpu_budget.floor_repository`), batched and scaled
    like `classify` (the encoder's settings, which the one-hop classify takes), measured the same way."""
    repo = floor_repository(
        out_dir / "repository-floor", shapes.image_size, serving.encoder.max_batch_size, serving.encoder.instances,
        batching=True, top_k=serving.default_top_k,
    )  # fmt: skip
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    with running_server(repo, work_dir=out_dir / "triton-floor", **ports) as server:
        return {f"{m} (floor), on": measure_cpu_budget(server, m, concurrency, input_data=inputs) for m in FLOOR_MODELS}


def markdown_table(rows: list[dict]) -> str:
    """One table per model: on vs off per concurrency, with the throughput ratio."""
    lines = []
    for model in sorted({r["model"] for r in rows}):
        by = {(r["mode"], r["concurrency"]): r for r in rows if r["model"] == model}
        table = []
        for c in sorted({c for _, c in by}):
            off, on = by[("off", c)], by[("on", c)]
            table.append([
                str(c), f"{off['throughput']:.0f}", _latencies(off), f"{on['throughput']:.0f}", _latencies(on),
                f"{on['throughput'] / off['throughput']:.2f}×",
            ])  # fmt: skip
        lines += [
            f"**{model}** (infer/s; latency ms p50 / p95 / p99)",
            "",
            render_table(BATCHING_HEADER, table, "rrlrlr"),
        ]
        lines.append("")
    return "\n".join(lines)


def _latencies(row: dict) -> str:
    return f"{row['p50_ms']:.1f} / {row['p95_ms']:.1f} / {row['p99_ms']:.1f}"


def budget_section(
    budgets: dict[str, CpuBudget],
    onnx_path: Path,
    image_size: int,
    serving: ServingConfig,
    index_dir: Path | None = None,
) -> str:
    """The CPU budget table of `classify`, the ratio ceiling it implies and, where the floors were
    measured, each process's per-request cost beyond its compute against the floor's."""
    on = budgets["batching on"]
    batch = round(on.mean_batch) if on.mean_batch >= 1 else on.concurrency // max(1, serving.encoder.instances)
    batch = max(1, min(serving.encoder.max_batch_size, batch))
    compute = encoder_us_per_image(onnx_path, batch, image_size)
    ceiling = ratio_ceiling(budgets["batching off"], on, compute)
    text = (
        f"**Where the CPU goes**, `classify` at concurrency {on.concurrency} (CPU time of each process over a "
        f"{on.window_s:.0f} s window ÷ requests the server completed; the load generator shares the {on.cores} cores):\n\n"
        + budget_table(budgets)
        + f"\n\nThe encoder's own compute is {compute:.0f} µs per image (ONNX Runtime, one thread, batch {batch}"
        + (f", the mean batch `classify` ran with batching on: {on.mean_batch:.1f}" if on.mean_batch else "")
        + "). If both Python models cost nothing beyond it, the server core and the load generator at their batched "
        f"cost would still cap the ratio at **{ceiling:.2f}×** (unbatched total ÷ (tritonserver + load generator "
        f"+ encoder compute)).\n"
    )
    floor = budgets.get("classify_floor (floor), on")
    if floor is None or index_dir is None:
        return text
    search = search_us_per_query(index_dir, _queries(onnx_path, image_size), batch, serving.default_top_k)
    rows = [
        [c.part, f"{c.model_us:.0f}", f"{c.compute_us:.0f}", f"{c.model_us - c.compute_us:.0f}", f"{c.floor_us:.0f}",
         f"{c.ratio:.2f}×", "yes" if c.ratio <= 1.2 else "no"]
        for c in compare_to_floor(on, floor, compute + search)
    ]  # fmt: skip
    in_stub = (
        f", and as the stub measured it while serving: {on.compute_us:.0f} µs per image (its thread's CPU time in "
        "the encoder run and the search, the `megaclass_compute_seconds_total` metric)"
        if on.compute_us > 0
        else ""
    )
    return (
        text + "\n**Against the floor** (batching on): each process's CPU per `classify` request less the model's own "
        f"compute, timed alone (encoder {compute:.0f} + search {search:.0f} µs per image at batch {batch}, one "
        f"thread){in_stub}, against the same process serving `classify_floor`, a Python-backend model with "
        "classify's input and four outputs that returns a constant answer (`cpu_budget.floor_repository`), "
        "batched and scaled alike:\n\n"
        + render_table(
            ["process", "classify µs", "its compute µs", "beyond compute µs", "floor µs", "ratio", "within 20 %"], rows
        )
        + "\n"
    )


def _queries(onnx_path: Path, image_size: int, n: int = 64):
    """Embeddings of the perf_analyzer-like images: realistic queries for timing the search."""
    import numpy as np

    from megaclass.python_backend.serving.encoder_runtime import OnnxEncoder

    x = (np.random.default_rng(1).random((n, 1, image_size, image_size)) > 0.8).astype(np.float32)
    return OnnxEncoder(onnx_path, 1).embed(x)


def plot(rows: list[dict], path: Path) -> None:
    """Throughput and p99 latency against concurrency, on vs off, per model."""
    plt = pyplot()
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    for j, model in enumerate(models):
        for mode, style in (("off", "o--"), ("on", "o-")):
            pts = sorted((r for r in rows if r["model"] == model and r["mode"] == mode), key=lambda r: r["concurrency"])
            xs = [r["concurrency"] for r in pts]
            axes[0, j].plot(xs, [r["throughput"] for r in pts], style, label=f"dynamic batching {mode}")
            axes[1, j].plot(xs, [r["p99_ms"] for r in pts], style, label=f"dynamic batching {mode}")
        axes[0, j].set(title=f"{model}: throughput", xlabel="concurrency", ylabel="inferences / s", xscale="log")
        axes[1, j].set(title=f"{model}: p99 latency", xlabel="concurrency", ylabel="ms", xscale="log")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
            ax.legend()
    fig.suptitle(f"perf_analyzer, gRPC, {platform.machine()} CPU ({_cores()} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cores() -> int:
    import os

    return os.cpu_count() or 1


def run_batching_bench(
    cfg,
    out_dir: Path,
    concurrency: tuple[int, ...],
    measurement_ms: int,
    doc: Path | None,
    stability_percent: float = 25.0,
    budget_concurrency: int | None = 32,
) -> list[dict]:
    """Build (or reuse) the demo's artifacts, sweep with batching off and on, report."""
    from megaclass.export.pipeline import build_artifacts

    art, _, _ = build_artifacts(cfg)
    shapes = ModelShapes(art.image_size, art.embedding_dim)
    rows, budgets = sweep(
        art.onnx_path, art.index_dir, shapes, cfg.serving, cfg.export, out_dir, concurrency, measurement_ms,
        stability_percent=stability_percent, budget_concurrency=budget_concurrency,
    )  # fmt: skip
    plot(rows, out_dir / "batching.png")
    table = markdown_table(rows)
    if budgets:
        table += "\n" + budget_section(budgets, art.onnx_path, art.image_size, cfg.serving, art.index_dir) + "\n"
    print(table)
    if doc is not None:
        image = copy_into_docs(out_dir / "batching.png", doc)
        s = cfg.serving
        text = (
            "## Dynamic batching on vs off (perf_analyzer)\n\n"
            f"Machine: {platform.machine()} CPU, {_cores()} cores, no GPU; Triton 2.51 (nvidia-pytriton wheel), "
            "gRPC, one request = one image (classify) or one embedding (retriever). Same repository built twice, "
            f"differing only in `dynamic_batching` (encoder max batch {s.encoder.max_batch_size}, retriever "
            f"{s.retriever.max_batch_size}, queue delay {s.encoder.max_queue_delay_us} µs, "
            f"{s.encoder.instances} instance each). Reproduce: `.venv/bin/megaclass bench batching`.\n\n"
            + table
            + f"\n![throughput and p99 latency, batching on vs off]({image})\n"
        )
        update_doc_section(doc, "batching", text)
    return rows
