"""Bounded headless Locust runs of `locustfile.py`, and the statistics they write.

Locust runs in its own process (it monkey-patches the standard library with gevent), writes
`<prefix>_stats.csv`, `<prefix>_stats_history.csv`, `<prefix>_failures.csv` and an HTML
report; `read_stats` turns the stats CSV into typed rows.
"""

from __future__ import annotations

import csv
import dataclasses
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
    # Locust processes sharing the users (one process drives about 1,000 requests/s; beyond that the
    # generator, not the server, sets the pace). Their records are merged exactly (`merge_runs`).
    processes: int = 1

    def __post_init__(self) -> None:
        unknown = set(self.user_classes) - set(USER_CLASSES)
        if unknown or not self.user_classes:
            raise ValueError(f"user classes must be among {USER_CLASSES}, got {self.user_classes}")
        if self.users < 1 or self.spawn_rate <= 0 or self.run_time_s <= 0 or self.warmup_s < 0:
            raise ValueError(f"users, spawn rate and run time must be positive: {self}")
        if not 1 <= self.processes <= self.users:
            raise ValueError(f"processes must be between 1 and the number of users: {self}")
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
    """Run Locust headless for `settings.run_time_s` seconds; CSV and HTML go to `out_dir/name*`.
    With `settings.processes` > 1 that many Locust processes share the users and their records are
    merged into the same files (`merge_runs`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / name
    parts = [settings] if settings.processes == 1 else _split(settings)
    prefixes = [prefix] if len(parts) == 1 else [out_dir / f"{name}-p{i}" for i in range(len(parts))]
    for p in [prefix, *prefixes]:
        stale = [Path(f"{p}_{k}.csv") for k in ("stats", "stats_history", "failures", "exceptions")]
        for old in [Path(f"{p}.html"), Path(f"{p}_latencies.json"), *stale]:
            old.unlink(missing_ok=True)
    timeout = settings.run_time_s + 90
    procs = [
        subprocess.Popen(
            locust_command(s, p, Path(f"{p}.html")), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for s, p in zip(parts, prefixes, strict=True)
    ]
    outputs, codes = [], []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            for q in procs:
                q.kill()
            raise LocustError(f"locust did not finish within {timeout:.0f}s: {exc}") from exc
        outputs.append(out[-4000:])
        codes.append(proc.returncode)
    tail = "\n".join(outputs)[-4000:]
    code = max(codes, key=abs)
    results = [_result_of(p, Path(f"{p}.html"), c, t) for p, c, t in zip(prefixes, codes, outputs, strict=True)]
    if len(results) == 1:
        return results[0]
    merge_runs([r.prefix for r in results], prefix)
    return LocustResult(prefix, results[0].html, code, read_stats(Path(f"{prefix}_stats.csv")), tail)


def _split(settings: LocustSettings) -> list[LocustSettings]:
    """`settings.processes` settings sharing the users and spawn rate, each with its own seed."""
    n = settings.processes
    users = [settings.users // n + (i < settings.users % n) for i in range(n)]
    return [
        dataclasses.replace(
            settings, users=u, spawn_rate=settings.spawn_rate * u / settings.users, seed=settings.seed + i, processes=1
        )
        for i, u in enumerate(users)
    ]


def _result_of(prefix: Path, html: Path, returncode: int, tail: str) -> LocustResult:
    stats_csv = Path(f"{prefix}_stats.csv")
    if not stats_csv.exists():
        raise LocustError(f"locust wrote no statistics (exit {returncode}); its output:\n{tail}")
    stats = read_stats(stats_csv)
    if not any(s.name == "Aggregated" for s in stats):
        raise LocustError(f"no requests were made (exit {returncode}); locust's output:\n{tail}")
    return LocustResult(prefix, html, returncode, stats, tail)


def merge_runs(prefixes: Sequence[Path], out_prefix: Path) -> None:
    """Merge the records of Locust processes that ran side by side into `out_prefix`'s
    `_latencies.json` and `_stats.csv`: every exact response time pooled, failures summed, the
    measured seconds averaged (they ran over the same interval), percentiles recomputed exactly
    from the pooled times, and the per-second timeline summed (its p50/p95 weighted by count)."""
    import numpy as np

    records = [json.loads(Path(f"{p}_latencies.json").read_text()) for p in prefixes]
    times: dict[str, list[float]] = {}
    for r in records:
        for key, ts in r.get("times_ms", {}).items():
            times.setdefault(key, []).extend(ts)
    infos = [r.get("measured", {}) for r in records]
    seconds = float(np.mean([i.get("seconds", 0.0) for i in infos])) if infos else 0.0
    measured = {
        "seconds": seconds,
        "failures": sum(i.get("failures", 0) for i in infos),
        "warm": all(i.get("warm", False) for i in infos),
    }
    by_second: dict[int, dict] = {}
    for r in records:
        for row in r.get("timeline", []):
            m = by_second.setdefault(row["t"], {"t": row["t"], "ok": 0, "failed": 0, "p50_ms": None, "p95_ms": None})
            for q in ("p50_ms", "p95_ms"):
                if row[q] is not None:
                    prev = m[q] if m[q] is not None else 0.0
                    m[q] = (prev * m["ok"] + row[q] * row["ok"]) / max(m["ok"] + row["ok"], 1)
            m["ok"] += row["ok"]
            m["failed"] += row["failed"]
    merged = {"times_ms": times, "measured": measured, "timeline": [by_second[t] for t in sorted(by_second)]}
    Path(f"{out_prefix}_latencies.json").write_text(json.dumps(merged))
    stats = [s for p in prefixes for s in read_stats(Path(f"{p}_stats.csv"))]
    _write_merged_stats(stats, times, Path(f"{out_prefix}_stats.csv"))


def _write_merged_stats(stats: Sequence[LocustStat], times: dict[str, list[float]], path: Path) -> None:
    """One stats row per request name (counts and rates summed over the processes; times exact)."""
    import numpy as np

    rows: dict[tuple[str, str], dict] = {}
    for s in stats:
        row = rows.setdefault((s.type, s.name), {"requests": 0, "failures": 0, "rps": 0.0, "fps": 0.0})
        row["requests"] += s.requests
        row["failures"] += s.failures
        row["rps"] += s.rps
        row["fps"] += s.failures_per_s
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(_STATS_COLUMNS)
        for (kind, name), row in rows.items():
            ts = [t for k, v in times.items() for t in v] if name == "Aggregated" else times.get(f"{kind} {name}", [])
            p50, p90, p95, p99 = np.percentile(ts, [50, 90, 95, 99]).tolist() if ts else [float("nan")] * 4
            mean, top = (float(np.mean(ts)), float(np.max(ts))) if ts else (float("nan"), float("nan"))
            w.writerow(
                [
                    kind,
                    name,
                    row["requests"],
                    row["failures"],
                    row["rps"],
                    row["fps"],
                    p50,
                    mean,
                    p50,
                    p90,
                    p95,
                    p99,
                    top,
                ]
            )


_STATS_COLUMNS = [
    "Type", "Name", "Request Count", "Failure Count", "Requests/s", "Failures/s", "Median Response Time",
    "Average Response Time", "50%", "90%", "95%", "99%", "Max Response Time",
]  # fmt: skip


def summary_table(stats: Sequence[LocustStat]) -> str:
    """A plain-text table of Locust rows."""
    lines = [f"{'name':<22} {'requests':>9} {'fails':>6} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"]
    for s in stats:
        label = f"{s.type} {s.name}".strip()
        lines.append(
            f"{label:<22} {s.requests:>9} {s.failures:>6} {s.rps:>8.1f} {s.p50_ms:>8.0f} {s.p95_ms:>8.0f} {s.p99_ms:>8.0f}"
        )
    return "\n".join(lines)
