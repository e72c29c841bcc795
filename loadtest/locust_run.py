"""Bounded headless Locust runs of `locustfile.py`, and the statistics they write.

Locust runs in its own process (it monkey-patches the standard library with gevent), writes
`<prefix>_stats.csv`, `<prefix>_stats_history.csv`, `<prefix>_failures.csv` and an HTML
report; `read_stats` turns the stats CSV into typed rows.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
USER_CLASSES = ("TritonGrpcUser", "TritonHttpUser", "BaselineHttpUser")
DEFAULT_BATCH_MIX = "1:60,2:15,4:12,8:8,16:4,32:1"  # requests per batch size, in percent
DEFAULT_MODEL_MIX = "classify:4,retriever:1"


def parse_mix(text: str) -> tuple[list, list[float]]:
    """ "a:3,b:1" -> ([a, b], [3.0, 1.0]); integer keys become ints."""
    keys, weights = [], []
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, weight = part.partition(":")
        key = key.strip()
        keys.append(int(key) if key.isdigit() else key)
        try:
            weights.append(float(weight) if weight else 1.0)
        except ValueError:
            weights.append(-1.0)
    if not keys or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"bad mix {text!r}: expected key:weight,... with non-negative weights")
    return keys, weights


class LocustError(RuntimeError):
    """Locust could not run or wrote no statistics; the message quotes its output."""


@dataclass(frozen=True)
class LocustSettings:
    """One bounded headless run."""

    host: str = "http://127.0.0.1:8000"  # HTTP users (Triton HTTP or the baseline)
    grpc_url: str = "127.0.0.1:8001"
    users: int = 8
    spawn_rate: float = 8.0
    run_time_s: float = 60.0
    user_classes: tuple[str, ...] = ("TritonGrpcUser", "TritonHttpUser")
    batch_mix: str = DEFAULT_BATCH_MIX
    model_mix: str = DEFAULT_MODEL_MIX
    images: Path | None = None
    warmup_s: float = 0.0
    seed: int = 0
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        unknown = set(self.user_classes) - set(USER_CLASSES)
        if unknown or not self.user_classes:
            raise ValueError(f"user classes must be among {USER_CLASSES}, got {self.user_classes}")
        if self.users < 1 or self.spawn_rate <= 0 or self.run_time_s <= 0 or self.warmup_s < 0:
            raise ValueError(f"users, spawn rate and run time must be positive: {self}")
        parse_mix(self.batch_mix), parse_mix(self.model_mix)


@dataclass(frozen=True)
class LocustStat:
    """One row of Locust's `_stats.csv` (times in milliseconds)."""

    type: str
    name: str
    requests: int
    failures: int
    rps: float
    failures_per_s: float
    median_ms: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @property
    def batch_size(self) -> int | None:
        """The batch size from a request name "<model> b=<n>"."""
        return _batch_of(self.name)


def _batch_of(name: str) -> int | None:
    _, _, b = name.partition(" b=")
    return int(b) if b.isdigit() else None


@dataclass(frozen=True)
class Measured:
    """The measured part of a run, counted by our users (not Locust's periodically written CSV)."""

    requests: int
    failures: int
    seconds: float
    rows_per_s: float  # images or embeddings per second

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


@dataclass(frozen=True)
class LocustResult:
    """What a run wrote, and its parsed statistics."""

    prefix: Path
    html: Path
    returncode: int
    stats: list[LocustStat]
    output_tail: str

    @property
    def total(self) -> LocustStat:
        return next(s for s in self.stats if s.name == "Aggregated")

    @property
    def images_per_s(self) -> float:
        """Throughput in rows (images or embeddings) per second, from the per-batch-size rows."""
        return sum(s.rps * (s.batch_size or 1) for s in self.stats if s.name != "Aggregated")

    def latencies_ms(self) -> dict[str, list[float]]:
        """Every successful response time after the warm-up, exactly, per "<type> <name>"."""
        return self._measurement().get("times_ms", {})

    def measured(self) -> Measured | None:
        """Exact counts and rates of the measured part (after the warm-up), from our own records;
        None when the run wrote none or never got past its warm-up."""
        m = self._measurement()
        info = m.get("measured")
        if not info or not info.get("warm") or info.get("seconds", 0) <= 0:
            return None
        times = m.get("times_ms", {})
        ok = sum(len(v) for v in times.values())
        rows = sum(len(v) * (_batch_of(name) or 1) for name, v in times.items())
        return Measured(ok + info["failures"], info["failures"], info["seconds"], rows / info["seconds"])

    def timeline(self) -> list[dict]:
        """Per second of the run: successes `ok`, failures `failed`, `p50_ms`, `p95_ms`."""
        return self._measurement().get("timeline", [])

    def _measurement(self) -> dict:
        path = Path(f"{self.prefix}_latencies.json")
        return json.loads(path.read_text()) if path.exists() else {}

    def percentiles_ms(self, qs: Sequence[float] = (50, 90, 99)) -> list[float]:
        """Exact percentiles over all requests (NaN without data)."""
        times = [t for ts in self.latencies_ms().values() for t in ts]
        if not times:
            return [float("nan")] * len(qs)
        import numpy as np

        return [float(v) for v in np.percentile(times, qs)]

    def files(self) -> dict[str, Path]:
        return {
            "stats": Path(f"{self.prefix}_stats.csv"),
            "latencies": Path(f"{self.prefix}_latencies.json"),
            "history": Path(f"{self.prefix}_stats_history.csv"),
            "failures": Path(f"{self.prefix}_failures.csv"),
            "html": self.html,
        }


def _num(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def read_stats(path: Path) -> list[LocustStat]:
    """Rows of a Locust `_stats.csv`."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        LocustStat(
            r["Type"],
            r["Name"],
            int(_num(r["Request Count"])),
            int(_num(r["Failure Count"])),
            _num(r["Requests/s"]),
            _num(r["Failures/s"]),
            _num(r["Median Response Time"]),
            _num(r["Average Response Time"]),
            _num(r["50%"]),
            _num(r["90%"]),
            _num(r["95%"]),
            _num(r["99%"]),
            _num(r["Max Response Time"]),
        )
        for r in rows
    ]


def locust_command(settings: LocustSettings, prefix: Path, html: Path) -> list[str]:
    """The locust command line for `settings`."""
    s = settings
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE),
        "--headless", "--only-summary",
        "-u", str(s.users), "-r", str(s.spawn_rate), "-t", f"{s.run_time_s:g}s",
        "--stop-timeout", "10",
        "--host", s.host, "--grpc-url", s.grpc_url,
        "--batch-mix", s.batch_mix, "--model-mix", s.model_mix,
        "--seed", str(s.seed), "--warmup", f"{s.warmup_s:g}",
        "--csv", str(prefix), "--csv-full-history", "--html", str(html),
        "--latency-file", f"{prefix}_latencies.json",
        "--loglevel", "WARNING",
    ]  # fmt: skip
    if s.images:
        cmd += ["--images", str(s.images)]
    return cmd + list(s.extra_args) + list(s.user_classes)


def run_locust(settings: LocustSettings, out_dir: Path, name: str = "locust") -> LocustResult:
    """Run Locust headless for `settings.run_time_s` seconds; CSV and HTML go to `out_dir/name*`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix, html = out_dir / name, out_dir / f"{name}.html"
    stale = [Path(f"{prefix}_{k}.csv") for k in ("stats", "stats_history", "failures", "exceptions")]
    for old in [html, Path(f"{prefix}_latencies.json"), *stale]:
        old.unlink(missing_ok=True)
    cmd = locust_command(settings, prefix, html)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=settings.run_time_s + 90)
    except subprocess.TimeoutExpired as exc:
        raise LocustError(f"locust did not finish within {settings.run_time_s + 90:.0f}s: {exc}") from exc
    tail = (proc.stdout + proc.stderr)[-4000:]
    stats_csv = Path(f"{prefix}_stats.csv")
    if not stats_csv.exists():
        raise LocustError(f"locust wrote no statistics (exit {proc.returncode}); its output:\n{tail}")
    stats = read_stats(stats_csv)
    if not any(s.name == "Aggregated" for s in stats):
        raise LocustError(f"no requests were made (exit {proc.returncode}); locust's output:\n{tail}")
    return LocustResult(prefix, html, proc.returncode, stats, tail)


def summary_table(stats: Sequence[LocustStat]) -> str:
    """A plain-text table of Locust rows."""
    lines = [f"{'name':<22} {'requests':>9} {'fails':>6} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"]
    for s in stats:
        label = f"{s.type} {s.name}".strip()
        lines.append(
            f"{label:<22} {s.requests:>9} {s.failures:>6} {s.rps:>8.1f} {s.p50_ms:>8.0f} {s.p95_ms:>8.0f} {s.p99_ms:>8.0f}"
        )
    return "\n".join(lines)
