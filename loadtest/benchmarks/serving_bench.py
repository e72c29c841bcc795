"""The head-to-head: the Triton `classify` ensemble against the FastAPI service a user would
write instead (`baseline_service`), same encoder, same index, same images, same load
generator (Locust, one closed-loop user per unit of concurrency), same machine, one command.

`run_head_to_head` serves each target in turn (never two at once), sweeps the concurrency
levels with a bounded headless Locust run per point, and returns one `H2HPoint` per target and
level; `serving_report.write_outputs` keeps the CSV, the plots and a Markdown section for
docs/benchmarks.md. The settings: `serving_config`; what is served: `serving_artifacts`; serving
each target: `serving_targets`.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from megaclass.export.config import MegaclassConfig
from megaclass.loadtest.benchmarks.cpu_split import CpuWindow
from megaclass.loadtest.benchmarks.serving_artifacts import BenchArtifacts, prepare_artifacts
from megaclass.loadtest.benchmarks.serving_config import (
    BASELINES,
    FLOORS,
    TARGET_LABELS,
    TARGETS,
    HeadToHeadConfig,
    baseline_settings,
)
from megaclass.loadtest.benchmarks.serving_targets import (
    encoder_batch_counts,
    floor_repository_for,
    mean_batch,
    serve_baseline,
    serve_triton,
)
from megaclass.loadtest.locust_run import LocustSettings, run_locust
from megaclass.loadtest.reporting import machine_description


@dataclass(frozen=True)
class H2HPoint:
    """One target at one concurrency level: what Locust measured after the warm-up."""

    target: str
    concurrency: int
    requests: int
    failures: int
    rps: float
    images_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_encoder_batch: float  # Triton only (NaN for the baseline)
    # CPU µs per request over a window of the measured part (cpu_split): the server's process tree, and
    # the load generator's (NaN: not measured)
    server_cpu_us: float = math.nan
    generator_cpu_us: float = math.nan


@dataclass
class H2HRun:
    """A whole head-to-head: its settings, what was served, and every point."""

    bench: HeadToHeadConfig
    cfg: MegaclassConfig
    artifacts: BenchArtifacts
    points: list[H2HPoint] = field(default_factory=list)
    started: str = ""
    machine: str = ""
    note: str = ""


def run_head_to_head(
    out_dir: Path,
    bench: HeadToHeadConfig,
    cfg: MegaclassConfig,
    repository: Path | None = None,
    note: str = "",
    log=print,
) -> H2HRun:
    """Prepare, serve each target in turn, sweep the concurrency levels; returns every point."""
    out_dir = Path(out_dir)
    work = out_dir / "work"
    run = H2HRun(bench, cfg, prepare_artifacts(work, bench, cfg, repository), note=note)
    run.started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    run.machine = machine_description()
    art = run.artifacts
    log(f"serving {art.source}: {art.num_classes} classes, images {art.image_size}x{art.image_size}")
    for target in bench.targets:
        if target in BASELINES:
            server = serve_baseline(art, bench, work, *baseline_settings(bench, target))
        elif target in FLOORS:
            server = serve_triton(art, cfg, work, floor_repository_for(art, cfg, work))
        else:
            server = serve_triton(art, cfg, work)
        with server as endpoint:
            for c in bench.concurrency:
                settings = LocustSettings(
                    host=endpoint.http,
                    grpc_url=endpoint.grpc,
                    users=c,
                    spawn_rate=float(c),
                    run_time_s=bench.warmup_s + bench.duration_s,
                    warmup_s=bench.warmup_s,
                    user_classes=(TARGETS[target],),
                    batch_mix=f"{bench.batch_size}:1",
                    model_mix="classify:1",
                    images=art.images,
                    seed=bench.seed,
                    processes=min(bench.locust_processes, c),
                )
                before = encoder_batch_counts(endpoint.grpc) if endpoint.grpc else {}
                # Locust starts its clock after its imports (~2 s); the window stays inside the measured part.
                with CpuWindow(endpoint.pid, bench.warmup_s + 2.5, max(0.5, bench.duration_s - 4.0)) as window:
                    result = run_locust(settings, out_dir / "locust", f"{target}-c{c}")
                after = encoder_batch_counts(endpoint.grpc) if endpoint.grpc else {}
                t, m = result.total, result.measured()
                if m is None or m.requests == 0 or result.returncode not in (0, 1):
                    log(f"locust exit {result.returncode}, measured {m}; its output:\n{result.output_tail}")
                p50, p90, p99 = result.percentiles_ms((50, 90, 99))
                cpu = window.per_request(m.rps if m else t.rps) if endpoint.pid else None
                point = H2HPoint(
                    target, c,
                    m.requests if m else t.requests, m.failures if m else t.failures,
                    m.rps if m else t.rps, m.rows_per_s if m else result.images_per_s,
                    p50, p90, p99,
                    mean_batch(before, after) if endpoint.grpc else float("nan"),
                    cpu.server_us if cpu else math.nan, cpu.generator_us if cpu else math.nan,
                )  # fmt: skip
                run.points.append(point)
                log(
                    f"{target:<12} c={c:<3} {point.rps:8.1f} req/s  p50 {point.p50_ms:6.1f} ms  "
                    f"p99 {point.p99_ms:6.1f} ms  failures {point.failures}"
                    + (f"  mean encoder batch {point.mean_encoder_batch:.1f}" if endpoint.grpc else "")
                    + (
                        f"  CPU/request: server {point.server_cpu_us:.0f} µs, load generator {point.generator_cpu_us:.0f} µs"
                        if cpu
                        else ""
                    )
                )
    return run


def read_csv(path: Path) -> list[H2HPoint]:
    """The points of a `head_to_head.csv` (as `reporting.write_csv` writes them)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    types = {f.name: f.type for f in dataclasses.fields(H2HPoint)}
    conv = {"str": str, "int": int, "float": float}
    return [H2HPoint(**{k: conv[types[k]](v) for k, v in r.items()}) for r in rows]


def best_baseline(points: Sequence[H2HPoint], concurrency: int) -> H2HPoint | None:
    """The FastAPI configuration that served the most at `concurrency` (the one Triton is judged against)."""
    bases = [p for p in points if p.concurrency == concurrency and p.target in BASELINES]
    return max(bases, key=lambda p: p.rps, default=None)


def verdict(
    points: Sequence[H2HPoint],
    low: int = 1,
    high: int = 32,
    latency_factor: float = 1.3,
    throughput_factor: float = 3.0,
) -> tuple[bool, str]:
    """Issue #17's target against the best FastAPI configuration at each level: at concurrency `low`,
    every Triton protocol's p50 <= latency_factor x the best baseline's p50 (the lowest of them); at
    `high`, every protocol >= throughput_factor x the best baseline's throughput with a lower p99;
    no failures."""
    lines, ok = [], True
    lows = [p for p in points if p.concurrency == low and p.target in BASELINES]
    best_p50 = min(lows, key=lambda p: p.p50_ms, default=None)
    base = best_baseline(points, high)
    if best_p50 is None or base is None:
        return False, f"no baseline points at concurrency {low} and {high}"
    for t in dict.fromkeys(p.target for p in points if p.target not in BASELINES + FLOORS):
        at = {p.concurrency: p for p in points if p.target == t}
        if low not in at or high not in at:
            ok = False
            lines.append(f"{TARGET_LABELS[t]}: no points at concurrency {low} and {high}")
            continue
        lat = at[low].p50_ms / best_p50.p50_ms if best_p50.p50_ms else float("inf")
        thr = at[high].rps / base.rps if base.rps else float("inf")
        good_low = lat <= latency_factor and at[low].failures == 0
        good_high = thr >= throughput_factor and at[high].p99_ms < base.p99_ms and at[high].failures == 0
        ok = ok and good_low and good_high
        lines.append(
            f"{TARGET_LABELS[t]}: c={low} p50 {at[low].p50_ms:.2f} ms = {lat:.2f}x the best FastAPI's "
            f"({best_p50.p50_ms:.2f} ms) ({'meets' if good_low else 'misses'} <= {latency_factor:g}x); c={high} "
            f"{thr:.2f}x the best FastAPI's throughput, p99 {at[high].p99_ms:.0f} ms vs {base.p99_ms:.0f} ms "
            f"({'meets' if good_high else 'misses'} >= {throughput_factor:g}x with a lower p99)"
        )
    return ok and bool(lines), "; ".join(lines)
