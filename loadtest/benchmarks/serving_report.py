"""The head-to-head's outputs: the CSV of points, throughput and latency plots, and the Markdown
section for docs/benchmarks.md (what was compared, how, the table and the verdict)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from megaclass.loadtest.benchmarks.cpu_split import generator_ceiling
from megaclass.loadtest.benchmarks.serving_bench import H2HPoint, H2HRun, best_baseline, verdict
from megaclass.loadtest.benchmarks.serving_config import BASELINES, FLOORS, TARGET_LABELS
from megaclass.loadtest.reporting import (
    Block,
    Figure,
    Heading,
    Paragraph,
    Table,
    copy_into_docs,
    format_ms,
    pyplot,
    to_markdown,
    update_doc_section,
    write_csv,
)

RESULT_HEADER = [
    "target", "concurrency", "images/s", "vs best FastAPI", "p50 ms", "p90 ms", "p99 ms", "failures", "mean encoder batch",
]  # fmt: skip


def _concurrency_axis(ax, points: Sequence[H2HPoint]) -> None:
    from matplotlib.ticker import NullLocator

    levels = sorted({p.concurrency for p in points})
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.xaxis.set_minor_locator(NullLocator())


def plot_points(points: Sequence[H2HPoint], out_dir: Path, stem: str = "serving_h2h") -> list[Path]:
    """Throughput vs concurrency, and p50/p99 vs concurrency, one line per target."""
    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = list(dict.fromkeys(p.target for p in points))
    paths = [out_dir / f"{stem}_throughput.png", out_dir / f"{stem}_latency.png"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, t in enumerate(targets):
        ps = sorted((p for p in points if p.target == t), key=lambda p: p.concurrency)
        ax.plot([p.concurrency for p in ps], [p.images_per_s for p in ps], marker="o", color=f"C{i}",
                label=TARGET_LABELS[t])  # fmt: skip
    _concurrency_axis(ax, points)
    ax.set(xlabel="concurrency (closed-loop Locust users)", ylabel="images / s", title="Throughput")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, t in enumerate(targets):
        ps = sorted((p for p in points if p.target == t), key=lambda p: p.concurrency)
        c = [p.concurrency for p in ps]
        ax.plot(c, [p.p50_ms for p in ps], ":", marker=".", color=f"C{i}", label=f"{TARGET_LABELS[t]} p50")
        ax.plot(c, [p.p99_ms for p in ps], "-", marker="o", color=f"C{i}", label=f"{TARGET_LABELS[t]} p99")
    _concurrency_axis(ax, points)
    ax.set_yscale("log")
    ax.set(xlabel="concurrency (closed-loop Locust users)", ylabel="latency (ms)", title="Latency: p50 (dotted), p99")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def result_rows(points: Sequence[H2HPoint]) -> list[list[str]]:
    """One table row per target and concurrency level, with the throughput ratio to the best baseline there."""
    levels = sorted({p.concurrency for p in points})
    by = {(p.target, p.concurrency): p for p in points}
    rows = []
    for t in dict.fromkeys(p.target for p in points):
        for c in levels:
            p = by.get((t, c))
            if p is None:
                continue
            base = best_baseline(points, c)
            ratio = f"{p.rps / base.rps:.2f}x" if base and base.rps else "–"
            batch = "–" if math.isnan(p.mean_encoder_batch) else f"{p.mean_encoder_batch:.1f}"
            rows.append([TARGET_LABELS[t], str(c), f"{p.images_per_s:.0f}", ratio, format_ms(p.p50_ms),
                         format_ms(p.p90_ms), format_ms(p.p99_ms), str(p.failures), batch])  # fmt: skip
    return rows


CPU_HEADER = [
    "target", "req/s", "server µs", "load generator µs", "total µs", "load generator's ceiling req/s", "÷ best FastAPI",
]  # fmt: skip


def cpu_rows(points: Sequence[H2HPoint], concurrency: int, cores: int | None = None) -> list[list[str]]:
    """CPU per request at `concurrency` for each target measured: the server's, the load generator's, and
    the ceiling the load generator alone sets on these cores (cpu_split.generator_ceiling), also as a
    multiple of the best FastAPI configuration's throughput there."""
    base = best_baseline(points, concurrency)
    rows = []
    for p in points:
        if p.concurrency != concurrency or math.isnan(p.generator_cpu_us):
            continue
        ceiling = generator_ceiling(p.generator_cpu_us, cores)
        ratio = f"{ceiling / base.rps:.2f}x" if base and base.rps else "–"
        rows.append([TARGET_LABELS[p.target], f"{p.rps:.0f}", f"{p.server_cpu_us:.0f}", f"{p.generator_cpu_us:.0f}",
                     f"{p.server_cpu_us + p.generator_cpu_us:.0f}", f"{ceiling:.0f}", ratio])  # fmt: skip
    return rows


def floor_of(target: str) -> str:
    """The floor target served over the same protocol as a Triton target (triton-http -> floor-http)."""
    return "floor-" + target.split("-", 1)[1]


def ceiling_paragraph(
    points: Sequence[H2HPoint], concurrency: int, factor: float = 3.0, cores: int | None = None
) -> str:
    """What bounds each Triton protocol at `concurrency`, against the `factor` x target: the load generator's
    own CPU (cpu_split.generator_ceiling) and what Triton serves when `classify` does no work (its floor)."""
    base = best_baseline(points, concurrency)
    at = {p.target: p for p in points if p.concurrency == concurrency}
    triton = [t for t in at if t not in BASELINES + FLOORS]
    if base is None or not base.rps or not triton:
        return ""
    parts, reachable = [], False
    for t in triton:
        bounds, why = [], []
        if not math.isnan(at[t].generator_cpu_us):
            ceiling = generator_ceiling(at[t].generator_cpu_us, cores)
            bounds.append(ceiling)
            why.append(
                f"the load generator alone spends {at[t].generator_cpu_us:.0f} µs per request: {ceiling:.0f} req/s"
            )
        floor = at.get(floor_of(t))
        if floor is not None:
            bounds.append(floor.rps)
            why.append(f"a do-nothing classify served {floor.rps:.0f} req/s")
        if not bounds:
            reachable = True
            continue
        best = min(bounds)
        reachable = reachable or best >= factor * base.rps
        parts.append(f"{TARGET_LABELS[t]}: at most {best:.0f} req/s = {best / base.rps:.2f}x ({'; '.join(why)})")
    if not parts:
        return ""
    verdict_text = (
        f"so these bounds do not rule {factor:g}x out"
        if reachable
        else f"so {factor:g}x cannot be reached on this machine with this load generator, whatever the model costs"
    )
    return (
        f"**What bounds Triton here** (concurrency {concurrency}, against the best FastAPI's {base.rps:.0f} req/s; "
        "the server and Locust share the cores, so every request costs both): "
        + "; ".join(parts)
        + f" — {verdict_text}. CPU: each process tree's CPU time over a window inside the measured part, divided "
        "by the requests served in it (`cpu_split`); the floor: Triton serving a `classify` with the same input "
        "and outputs that returns a constant answer, batched and scaled alike (`cpu_budget.floor_repository`)."
    )


def method_paragraphs(run: H2HRun) -> list[Block]:
    """How the run was made: the shared setup, the baseline, and Triton's repository."""
    b, art = run.bench, run.artifacts
    enc, ret = run.cfg.serving.encoder, run.cfg.serving.retriever
    return [
        Paragraph(
            f"Same encoder and index for both ({art.source}; {art.num_classes} classes, {art.embedding_dim}-d "
            f"embeddings, {art.image_size}x{art.image_size} images), the same {b.image_count} glyph images, "
            f"{b.batch_size} image(s) per request, the same load generator: Locust, {b.locust_processes} process(es) sharing "
            f"the users (capped at the concurrency), one closed-loop user per unit of concurrency (no think time), {b.warmup_s:g} s warm-up then {b.duration_s:g} s "
            "measured per point. Each server runs alone; Locust shares the machine with it. Latencies are "
            "measured in Locust's users (client side), exactly: every response time after the warm-up."
        ),
        Paragraph(
            "**Baseline**: uvicorn running a FastAPI app that loads the ONNX Runtime session and the "
            "routed index once and, per request, reads the raw float32 tensor, runs the encoder and the search, "
            f"and returns JSON (handler `{b.baseline_handler}`: the model runs in Starlette's thread pool, so "
            "requests overlap where ONNX Runtime and FAISS release the GIL). No batching across requests. "
            "`baseline` keeps ONNX Runtime's default session options, as a user writes it (one intra-op thread "
            "per core, spinning while it waits); `baseline-tuned` sets "
            f"`intra_op_num_threads={b.tuned_baseline_threads}`, the one option that lets concurrent requests "
            "share the cores instead of fighting over them; `baseline-tuned-workers` adds "
            f"{b.baseline_workers} uvicorn worker processes (each its own session and index, one per core). "
            "Triton is judged against the best of them at each concurrency ('vs best FastAPI')."
        ),
        Paragraph(
            f"**Triton**: `classify` as {_form_text(run)}, built by `build_repository` from "
            f"`loadtest/benchmarks/bench_serving.toml`: encoder max batch {enc.max_batch_size}, preferred "
            f"{list(enc.preferred_batch_sizes)}, queue delay {enc.max_queue_delay_us} µs, {enc.instances} "
            f"instance(s); retriever max batch {ret.max_batch_size}, queue delay {ret.max_queue_delay_us} µs, "
            f"{ret.instances} instance(s) (the one-hop model is batched and scaled like the encoder). 'Mean "
            "encoder batch' is the average batch the model running the encoder executed (Triton's statistics). "
            "Where Triton's advantage comes from on this CPU: each instance is a process with its libraries "
            "sized to its share of the cores (instances x threads = cores), so no thread oversubscription; "
            "the C++ HTTP/gRPC front end runs beside the model processes; and dynamic batching pays the "
            "per-call overheads (Python-backend IPC, ONNX Runtime session run, FAISS call) once per batch."
        ),
    ]


def _form_text(run: H2HRun) -> str:
    from megaclass.python_backend.serving.config import classify_form

    if classify_form(run.cfg.serving) == "one-hop":
        return (
            "the one-hop Python-backend model (the same ONNX file with ONNX Runtime and the same index in one process)"
        )
    return (
        "the ensemble (Python-backend encoder running the same ONNX file with ONNX Runtime -> Python-backend "
        "retriever running the same index)"
    )


def section_markdown(run: H2HRun, plot_paths: Sequence[str], command: str) -> str:
    """The docs/benchmarks.md section of a head-to-head run."""
    ok, why = verdict(run.points)
    captions = ["Throughput vs concurrency", "Latency vs concurrency"]
    blocks = [
        Heading("Serving head-to-head: Triton vs a FastAPI service", 2),
        Paragraph(
            f"Produced by `{command}` on {run.started}. Machine: {run.machine}." + (f" {run.note}" if run.note else "")
        ),
        Paragraph(
            f"**Result: {'target met' if ok else 'target missed'}** — {why}. "
            "The target (issue #17), against the best FastAPI configuration at each concurrency: at concurrency 1 "
            "a p50 at most 1.3x FastAPI's, at concurrency 32 at least 3x its throughput with a lower p99, no failures."
        ),
        *method_paragraphs(run),
        Table(RESULT_HEADER, result_rows(run.points)),
        *(Figure(p, cap) for p, cap in zip(plot_paths, captions, strict=False)),
        *_cpu_blocks(run.points),
        Paragraph(
            "Caveats: a small CPU machine, client and server on the same cores, so absolute numbers are low and "
            "noisy; on a GPU the gap from batching is much larger. Each point's Locust CSV/HTML and exact "
            "latencies are kept under the command's `--out` folder (default `runs/bench-serving/locust/`, "
            "not committed)."
        ),
    ]
    return to_markdown(blocks)


def _cpu_blocks(points: Sequence[H2HPoint]) -> list[Block]:
    """The CPU table and the bounds at the highest concurrency measured."""
    if not points:
        return []
    concurrency = max(p.concurrency for p in points)
    rows = cpu_rows(points, concurrency)
    if not rows:
        return []
    return [
        Paragraph(
            f"**CPU per request at concurrency {concurrency}** (µs; server and load generator share the machine's "
            f"{len(os.sched_getaffinity(0))} cores):"
        ),
        Table(CPU_HEADER, rows),
        Paragraph(ceiling_paragraph(points, concurrency)),
    ]


def write_outputs(run: H2HRun, out_dir: Path, doc: Path | None, command: str) -> dict[str, Path]:
    """CSV and plots under `out_dir`; with `doc`, plots beside it and its section updated."""
    out_dir = Path(out_dir)
    write_csv(run.points, out_dir / "head_to_head.csv")
    plots = plot_points(run.points, out_dir / "plots")
    written = {"csv": out_dir / "head_to_head.csv", **{p.stem: p for p in plots}}
    if doc is not None:
        section = section_markdown(run, [copy_into_docs(p, doc) for p in plots], command)
        update_doc_section(doc, "serving-head-to-head", section)
        written["doc"] = doc
    (out_dir / "head_to_head.md").write_text(section_markdown(run, [f"plots/{p.name}" for p in plots], command))
    written["md"] = out_dir / "head_to_head.md"
    return written
