"""perf_analyzer sweeps: run the tritonclient wheel's perf_analyzer and collect its CSV rows.

perf_analyzer links libcudart.so.12 even for CPU-only runs; the PyPI package
nvidia-cuda-runtime-cu12 provides it, and `perf_environment` puts it on LD_LIBRARY_PATH.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer is missing or failed; the message quotes its output."""


def perf_analyzer_binary() -> Path:
    """perf_analyzer next to this interpreter (installed by tritonclient[all]) or on PATH."""
    here = Path(sys.executable).parent / "perf_analyzer"
    found = here if here.exists() else shutil.which("perf_analyzer")
    if not found:
        raise PerfAnalyzerError("perf_analyzer not found: install tritonclient[all]==2.51.0 (make setup)")
    return Path(found)


def perf_environment() -> dict[str, str]:
    """Environment with libcudart (nvidia-cuda-runtime-cu12) on LD_LIBRARY_PATH."""
    env = dict(os.environ)
    try:
        import nvidia.cuda_runtime as cr

        libdir = str(Path(next(iter(cr.__path__))) / "lib")
        env["LD_LIBRARY_PATH"] = ":".join(filter(None, [libdir, env.get("LD_LIBRARY_PATH")]))
    except ImportError:
        pass
    return env


@dataclass(frozen=True)
class PerfPoint:
    """One perf_analyzer measurement."""

    model: str
    protocol: str
    concurrency: int
    throughput: float  # inferences per second
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float
    batch_size: int
    request_rate: float = 0.0  # requests per second asked for (request-rate sweeps); 0 in concurrency sweeps
    stability_percent: float = 0.0  # the stability bound perf_analyzer met for this point


def write_input_data(path: Path, samples: Sequence[dict[str, Any]]) -> Path:
    """perf_analyzer's `--input-data` JSON: one entry per sample, each input without its batch axis.

    Real inputs matter: perf_analyzer's own random data holds NaN/Inf for FP32 (rejected by
    our validation) and would fill optional inputs such as TOP_K with nonsense.
    """
    import json

    data = [
        {name: {"content": arr.reshape(-1).tolist(), "shape": list(arr.shape)} for name, arr in sample.items()}
        for sample in samples
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": data}))
    return path


def run_perf(
    model: str,
    url: str,
    *,
    protocol: str = "grpc",
    concurrency: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    batch_size: int = 1,
    shapes: dict[str, Sequence[int]] | None = None,
    measurement_ms: int = 3000,
    input_data: Path | None = None,
    stability_percent: float = 25.0,
    max_trials: int = 10,
    extra_args: Sequence[str] = (),
    timeout_s: float = 600,
    request_rates: Sequence[float] = (),
) -> list[PerfPoint]:
    """Sweep concurrency for `model`; one perf_analyzer run per level, latency in microseconds.

    With `request_rates`, sweep those request rates (requests per second, open loop) instead.

    perf_analyzer repeats a window until throughput and p99 agree within `stability_percent`
    over three windows (at most `max_trials` windows); a busy machine needs a looser bound.
    When a level does not stabilise, it is measured again with the bound doubled (twice), then
    with no real bound, rather than dropped; the bound used is kept in the point.
    """
    points = []
    loads = [("--request-rate-range", r) for r in request_rates] or [("--concurrency-range", c) for c in concurrency]
    for flag, level in loads:
        c = int(level) if flag == "--concurrency-range" else 16
        base = [
            str(perf_analyzer_binary()),
            "-m", model, "-u", url, "-i", protocol, "-b", str(batch_size),
            f"{flag}={level:g}",
            f"--measurement-interval={measurement_ms}",
            f"--max-trials={max_trials}",
            "--percentile=99",
            "--max-threads=" + str(max(16, c)),
            "-f", "/dev/stdout",
        ]  # fmt: skip
        if input_data is not None:
            base += ["--input-data", str(input_data)]
        for name, dims in (shapes or {}).items():
            base += ["--shape", f"{name}:{','.join(map(str, dims))}"]
        base += list(extra_args)
        bound = stability_percent
        while True:
            cmd = [*base, f"--stability-percentage={bound:g}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=perf_environment(), timeout=timeout_s)
            unstable = "stable measurement" in proc.stdout + proc.stderr
            if proc.returncode == 0 or not unstable or bound >= 1000:
                break
            bound = 1000 if bound >= 4 * stability_percent else bound * 2  # last try: take the windows as they are
        if proc.returncode != 0:
            raise PerfAnalyzerError(
                f"perf_analyzer failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
            )
        point = dataclasses.replace(_parse_csv(proc.stdout, model, protocol, batch_size), stability_percent=bound)
        if flag == "--request-rate-range":
            point = dataclasses.replace(point, request_rate=float(level))
        points.append(point)
    return points


def _parse_csv(stdout: str, model: str, protocol: str, batch_size: int) -> PerfPoint:
    """The CSV block perf_analyzer writes with `-f`: header 'Concurrency,Inferences/Second,...'."""
    starts = [i for i in (stdout.find("Concurrency,"), stdout.find("Request Rate,")) if i >= 0]
    if not starts:
        raise PerfAnalyzerError(f"no CSV in perf_analyzer output:\n{stdout[-2000:]}")
    rows = list(csv.DictReader(io.StringIO(stdout[min(starts) :])))
    r = rows[-1]
    return PerfPoint(
        model, protocol, int(float(r.get("Concurrency", 0) or 0)), float(r["Inferences/Second"]),
        float(r["p50 latency"]), float(r["p90 latency"]), float(r["p95 latency"]), float(r["p99 latency"]),
        batch_size,
    )  # fmt: skip


def write_csv(points: Sequence[PerfPoint], path: Path) -> None:
    """Keep the sweep as CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(PerfPoint.__dataclass_fields__)
        for p in points:
            w.writerow(p.__dict__.values())
