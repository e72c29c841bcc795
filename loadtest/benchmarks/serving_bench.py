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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from megaclass.export.config import MegaclassConfig
from megaclass.loadtest.benchmarks.serving_artifacts import BenchArtifacts, prepare_artifacts
from megaclass.loadtest.benchmarks.serving_config import BASELINES, TARGET_LABELS, TARGETS, HeadToHeadConfig
from megaclass.loadtest.benchmarks.serving_targets import (
    encoder_batch_counts,
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
            threads = bench.baseline_threads if target == "baseline" else bench.tuned_baseline_threads
            server = serve_baseline(art, bench, work, threads)
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
                )
                before = encoder_batch_counts(endpoint.grpc) if endpoint.grpc else {}
                result = run_locust(settings, out_dir / "locust", f"{target}-c{c}")
                after = encoder_batch_counts(endpoint.grpc) if endpoint.grpc else {}
                t, m = result.total, result.measured()
                if m is None or m.requests == 0 or result.returncode not in (0, 1):
                    log(f"locust exit {result.returncode}, measured {m}; its output:\n{result.output_tail}")
                p50, p90, p99 = result.percentiles_ms((50, 90, 99))
                point = H2HPoint(
                    target, c,
                    m.requests if m else t.requests, m.failures if m else t.failures,
                    m.rps if m else t.rps, m.rows_per_s if m else result.images_per_s,
                    p50, p90, p99,
                    mean_batch(before, after) if endpoint.grpc else float("nan"),
                )  # fmt: skip
                run.points.append(point)
                log(
                    f"{target:<12} c={c:<3} {point.rps:8.1f} req/s  p50 {point.p50_ms:6.1f} ms  "
                    f"p99 {point.p99_ms:6.1f} ms  failures {point.failures}"
                    + (f"  mean encoder batch {point.mean_encoder_batch:.1f}" if endpoint.grpc else "")
                )
    return run


def read_csv(path: Path) -> list[H2HPoint]:
    """The points of a `head_to_head.csv` (as `reporting.write_csv` writes them)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    types = {f.name: f.type for f in dataclasses.fields(H2HPoint)}
    conv = {"str": str, "int": int, "float": float}
    return [H2HPoint(**{k: conv[types[k]](v) for k, v in r.items()}) for r in rows]


def verdict(points: Sequence[H2HPoint], concurrency: int = 32, factor: float = 2.0) -> tuple[bool, str]:
    """Does the best Triton target at `concurrency` serve >= factor x the baseline with a lower p99?"""
    at = {p.target: p for p in points if p.concurrency == concurrency}
    base = at.get("baseline")
    tritons = [p for t, p in at.items() if t not in BASELINES]
    if base is None or not tritons:
        return False, f"no baseline and Triton points at concurrency {concurrency}"
    lines, ok = [], False
    for p in tritons:
        ratio = p.rps / base.rps if base.rps else float("inf")
        good = ratio >= factor and p.p99_ms < base.p99_ms and p.failures == 0
        ok = ok or good
        lines.append(
            f"{TARGET_LABELS[p.target]}: {ratio:.2f}x the baseline's throughput, p99 {p.p99_ms:.0f} ms vs "
            f"{base.p99_ms:.0f} ms ({'meets' if good else 'misses'} the target)"
        )
    return ok, "; ".join(lines)
