"""Where each microsecond of a request goes inside Triton, per model: queue wait, compute input,
compute infer (the model's own `execute`, Python stub included) and compute output, from Triton's
per-model statistics over a perf_analyzer run at a fixed concurrency, divided by the requests.

Read beside the client's p50: what the stages do not account for is the front end (HTTP/gRPC),
the ensemble scheduler and the transport. Executions per request show the mean batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from megaclass.loadtest.perf import run_perf
from megaclass.loadtest.reporting import markdown_table as render_table

STAGES = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class Breakdown:
    """One model under load at one concurrency: client-side numbers and Triton's stages per request."""

    label: str
    model: str
    concurrency: int
    throughput: float  # requests/s (perf_analyzer)
    p50_us: float  # client side
    p99_us: float
    stages_us: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> stage -> µs per request
    mean_batch: dict[str, float] = field(default_factory=dict)  # model -> requests per execution


def model_statistics(grpc_url: str) -> dict[str, dict[str, float]]:
    """Per model (all versions summed): successful requests, executions and each stage's total ns."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        stats = client.get_inference_statistics("", as_json=True).get("model_stats", [])
    finally:
        client.close()
    out: dict[str, dict[str, float]] = {}
    for m in stats:
        s = out.setdefault(m["name"], {"requests": 0.0, "executions": 0.0, **dict.fromkeys(STAGES, 0.0)})
        inf = m.get("inference_stats", {})
        s["requests"] += float(inf.get("success", {}).get("count", 0))
        s["executions"] += float(m.get("execution_count", 0))
        for stage in STAGES:
            s[stage] += float(inf.get(stage, {}).get("ns", 0))
    return out


def measure_breakdown(
    label: str, grpc_url: str, model: str, concurrency: int, input_data: Path, measurement_ms: int = 4000
) -> Breakdown:
    """Load `model` at `concurrency` with perf_analyzer; Triton's stages per request of each model that ran."""
    before = model_statistics(grpc_url)
    (point,) = run_perf(
        model, grpc_url, concurrency=[concurrency], input_data=input_data, measurement_ms=measurement_ms,
        stability_percent=50, max_trials=4,
    )  # fmt: skip
    after = model_statistics(grpc_url)
    stages, batches = {}, {}
    for name, s in after.items():
        b = before.get(name, dict.fromkeys(s, 0.0))
        done = s["requests"] - b["requests"]
        if done <= 0:
            continue
        stages[name] = {stage: (s[stage] - b[stage]) / done / 1e3 for stage in STAGES}
        runs = s["executions"] - b["executions"]
        batches[name] = done / runs if runs > 0 else float("nan")
    return Breakdown(label, model, concurrency, point.throughput, point.p50_us, point.p99_us, stages, batches)


def markdown_table(rows: list[Breakdown]) -> str:
    """One row per (configuration, concurrency, model that ran): the stages in µs per request."""
    header = ["configuration", "c", "req/s", "client p50 µs", "model", "queue", "input", "infer", "output", "batch"]
    table = []
    for r in rows:
        for name in sorted(r.stages_us, key=lambda n: (n != r.model, n)):
            s = r.stages_us[name]
            first = name == r.model
            table.append([
                r.label if first else "", str(r.concurrency) if first else "", f"{r.throughput:.0f}" if first else "",
                f"{r.p50_us:.0f}" if first else "", name, *(f"{s[k]:.0f}" for k in STAGES),
                f"{r.mean_batch.get(name, float('nan')):.1f}",
            ])  # fmt: skip
    return render_table(header, table, "lrrrlrrrrr")


def run_breakdown(
    repository: Path, label: str, out_dir: Path, concurrency: tuple[int, ...] = (1, 32), measurement_ms: int = 4000
) -> list[Breakdown]:
    """Serve `repository` (tritonserver, free ports) and break `classify` down at each concurrency;
    writes `<label>.json` and `<label>.md` under `out_dir`. The stubs run the `megaclass` package the
    server's environment imports (PYTHONPATH can point it at another checkout: a "before" run)."""
    import dataclasses
    import json

    from megaclass.export.config import ExportConfig
    from megaclass.export.repository.generate import ModelShapes, parse_config
    from megaclass.loadtest.benchmarks.batching_bench import sample_inputs
    from megaclass.python_backend.server.triton_server import free_port, running_server

    out_dir = Path(out_dir)
    config = parse_config((Path(repository) / "retriever" / "config.pbtxt").read_text())
    encoder = parse_config((Path(repository) / "encoder" / "config.pbtxt").read_text())
    shapes = ModelShapes(int(encoder.input[0].dims[-1]), int(config.input[0].dims[-1]))
    inputs = sample_inputs(out_dir, shapes, ExportConfig())
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    with running_server(Path(repository), work_dir=out_dir / f"triton-{label}", **ports) as server:
        rows = [
            measure_breakdown(label, server.grpc_url, "classify", c, inputs["classify"], measurement_ms)
            for c in concurrency
        ]
    (out_dir / f"{label}.json").write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    (out_dir / f"{label}.md").write_text(markdown_table(rows) + "\n")
    return rows
