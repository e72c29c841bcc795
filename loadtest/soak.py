"""A bounded soak run: steady Locust load on the Triton stack while the memory (RSS) of every
server process — tritonserver and each Python-backend stub — is sampled; reports the error
count and each process's RSS growth after the warm-up.

    megaclass loadtest soak --duration 10m            # a synthetic stack, served for the run
    megaclass loadtest soak --repository model_repository --duration 10m --users 8

Target (issue 8): zero errors, and RSS growth under 5 % from the end of the warm-up to the end.
With fewer than `SoakSettings.min_samples` RSS samples after the warm-up the verdict is "not
measured" (never "met" on no evidence), and every sampling error is counted and reported.
`run_soak` takes a running `TritonServer` too (the CI test runs a short soak on its stack).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from megaclass.loadtest.reporting import markdown_table

TARGET_GROWTH_PERCENT = 5.0
SOAK_TABLE_HEADER = (
    "process", "RSS after warm-up (MB)", "RSS at the end (MB)", "growth", "growth over the second half",
)  # fmt: skip


def parse_duration(text: str) -> float:
    """'10m', '90s', '1h', '1m30s' or plain seconds -> seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"bad duration {text!r}: use e.g. 600, 90s, 10m, 1h or 1m30s")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


@dataclass(frozen=True)
class SoakSettings:
    """One soak run."""

    duration_s: float = 600.0
    warmup_s: float = 60.0  # growth is measured from here; Locust's statistics are reset here too
    users: int = 8
    sample_every_s: float = 5.0
    user_classes: tuple[str, ...] = ("TritonGrpcUser", "TritonHttpUser")
    batch_mix: str | None = None  # None: the locustfile's default mix
    model_mix: str | None = None
    images: Path | None = None
    min_samples: int = 3  # RSS samples after the warm-up needed for a verdict; fewer: "not measured"

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or not 0 <= self.warmup_s < self.duration_s or self.sample_every_s <= 0:
            raise ValueError(f"need 0 <= warm-up < duration and a positive sampling period: {self}")
        if self.users < 1:
            raise ValueError("users must be at least 1")
        if self.min_samples < 2:
            raise ValueError("min_samples must be at least 2: growth needs a first and a last sample")


@dataclass
class RssSample:
    t: float  # seconds since the load started
    rss: dict[str, int]  # process name -> bytes


@dataclass
class SoakResult:
    settings: dict
    started: str
    machine: str
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p99_ms: float
    samples: list[RssSample] = field(default_factory=list)
    sampling_errors: list[str] = field(default_factory=list)  # "<t> s: <error>" per failed sample

    def samples_after(self, warmup_s: float) -> list[RssSample]:
        return [s for s in self.samples if s.t >= warmup_s]

    def growth(self, warmup_s: float) -> dict[str, tuple[float, float, float]]:
        """Per process: (RSS MB at the end of the warm-up, RSS MB at the end, growth %); {} without
        two samples after the warm-up."""
        after = self.samples_after(warmup_s)
        if len(after) < 2:
            return {}
        first, last = after[0], after[-1]
        out = {}
        for name, start in first.rss.items():
            end = last.rss.get(name)
            if end is None:  # the process is gone (a stub restarted): report it as missing
                out[name] = (start / 2**20, float("nan"), float("nan"))
            else:
                out[name] = (start / 2**20, end / 2**20, 100.0 * (end - start) / start)
        return out

    def late_growth(self) -> dict[str, float]:
        """Per process: growth in % over the second half of the run (a leak keeps growing there;
        a pool that grows once early does not)."""
        if not self.samples:
            return {}
        half = self.samples[-1].t / 2
        mid = next(s for s in self.samples if s.t >= half)
        last = self.samples[-1]
        return {n: 100.0 * (last.rss[n] - v) / v for n, v in mid.rss.items() if n in last.rss}

    def verdict(self, warmup_s: float, min_samples: int | None = None) -> tuple[str, str]:
        """("met" | "missed" | "not measured", why). Failed requests miss the target whatever the samples."""
        min_samples = int(self.settings.get("min_samples", 3)) if min_samples is None else min_samples
        errors = f"; {len(self.sampling_errors)} sampling error(s), first: {self.sampling_errors[0]}" if (
            self.sampling_errors) else ""  # fmt: skip
        n = len(self.samples_after(warmup_s))
        if self.failures:
            return "missed", f"{self.failures} failed of {self.requests} requests{errors}"
        if n < min_samples:
            return "not measured", f"{n} RSS sample(s) after the warm-up, {min_samples} needed{errors}"
        growth = self.growth(warmup_s)
        worst = max(growth.items(), key=lambda kv: kv[1][2] if kv[1][2] == kv[1][2] else float("inf"))
        ok = all(g == g and g < TARGET_GROWTH_PERCENT for _, _, g in growth.values())
        why = f"0 failed of {self.requests} requests; largest RSS growth {worst[0]} {worst[1][2]:+.1f} %{errors}"
        return ("met" if ok else "missed"), why


def sample_rss(server) -> dict[str, int]:
    """RSS in bytes of tritonserver and of each live Python-backend stub (by instance name)."""
    import psutil

    from megaclass.python_backend.server.watchdog import stub_identity

    main = psutil.Process(server.process.pid)
    out = {"tritonserver": main.memory_info().rss}
    for child in main.children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and (ident := stub_identity(child.cmdline())):
                out[ident[1]] = child.memory_info().rss
        except psutil.Error:
            continue
    return out


class _Sampler(threading.Thread):
    def __init__(self, server, every_s: float):
        super().__init__(daemon=True, name="soak-rss-sampler")
        self.server, self.every_s = server, every_s
        self.samples: list[RssSample] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while True:
            t = time.monotonic() - self.t0
            try:
                self.samples.append(RssSample(t, sample_rss(self.server)))
            except Exception as exc:  # the server restarting, say: counted and reported, never hidden
                self.errors.append(f"{t:.1f} s: {type(exc).__name__}: {exc}")
            if self.stop.wait(self.every_s):
                return


def fitting_batch_mix(server) -> str:
    """The locustfile's default batch mix without the batch sizes the served models refuse."""
    import urllib.request

    from megaclass.loadtest.locust_run import DEFAULT_BATCH_MIX, parse_mix

    limit = None
    for model in ("classify", "retriever"):
        with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{model}/config", timeout=10) as r:
            size = int(json.loads(r.read()).get("max_batch_size", 0))
        limit = size if limit is None else min(limit, size)
    sizes, weights = parse_mix(DEFAULT_BATCH_MIX)
    kept = [(b, w) for b, w in zip(sizes, weights, strict=True) if not limit or b <= limit]
    return ",".join(f"{b}:{w:g}" for b, w in kept)


def run_soak(server, settings: SoakSettings, out_dir: Path) -> SoakResult:
    """Load `server` with Locust for `settings.duration_s`, sampling RSS; Locust's files go to `out_dir`."""
    from megaclass.loadtest.locust_run import LocustSettings, run_locust
    from megaclass.loadtest.reporting import machine_description

    extra = {"batch_mix": settings.batch_mix or fitting_batch_mix(server)}
    if settings.model_mix:
        extra["model_mix"] = settings.model_mix
    locust = LocustSettings(
        host=f"http://{server.http_url}",
        grpc_url=server.grpc_url,
        users=settings.users,
        spawn_rate=float(settings.users),
        run_time_s=settings.duration_s,
        user_classes=settings.user_classes,
        images=settings.images,
        warmup_s=settings.warmup_s,
        **extra,
    )
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = machine_description()
    sampler = _Sampler(server, settings.sample_every_s)
    sampler.start()
    try:
        run = run_locust(locust, Path(out_dir), "soak")
    finally:
        sampler.stop.set()
        sampler.join(30)
    total = run.total
    return SoakResult(
        settings={k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        started=started,
        machine=machine,
        requests=total.requests,
        failures=total.failures,
        rps=total.rps,
        p50_ms=total.p50_ms,
        p99_ms=total.p99_ms,
        samples=sampler.samples,
        sampling_errors=sampler.errors,
    )


def soak_markdown(result: SoakResult, warmup_s: float, command: str, note: str = "") -> str:
    """The figures as a Markdown section for docs/reliability.md."""
    status, why = result.verdict(warmup_s)
    s = result.settings
    lines = [
        "### Soak run",
        "",
        f"`{command}` — {result.started}; {result.machine}{'. ' + note if note else ''}.",
        "",
        f"Locust: {s['users']} users ({', '.join(s['user_classes'])}), {s['duration_s']:.0f} s with "
        f"{s['warmup_s']:.0f} s of warm-up; {result.requests} requests after the warm-up, {result.failures} failed; "
        f"{result.rps:.1f} req/s, p50 {result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f} ms. "
        f"RSS sampled every {s['sample_every_s']:g} s ({len(result.samples)} samples).",
        "",
    ]
    late = result.late_growth()
    rows = [
        [name, f"{start:.1f}", f"{end:.1f}", f"{growth:+.2f} %", f"{late.get(name, float('nan')):+.2f} %"]
        for name, (start, end, growth) in sorted(result.growth(warmup_s).items())
    ]
    lines.append(markdown_table(SOAK_TABLE_HEADER, rows))
    lines += ["", f"Target (zero errors, growth < {TARGET_GROWTH_PERCENT:g} %): {status} — {why}."]
    return "\n".join(lines) + "\n"


def write_outputs(result: SoakResult, warmup_s: float, out_dir: Path, command: str, note: str = "") -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "soak.json").write_text(json.dumps(asdict(result), indent=2))
    with open(out_dir / "soak_rss.csv", "w") as f:
        names = sorted({n for s in result.samples for n in s.rss})
        f.write("t_s," + ",".join(f"{n}_mb" for n in names) + "\n")
        for s in result.samples:
            f.write(f"{s.t:.1f}," + ",".join(f"{s.rss.get(n, 0) / 2**20:.2f}" for n in names) + "\n")
    (out_dir / "soak.md").write_text(soak_markdown(result, warmup_s, command, note))
    return {"json": out_dir / "soak.json", "rss": out_dir / "soak_rss.csv", "markdown": out_dir / "soak.md"}


# --- command line -----------------------------------------------------------------------------------


def _serve(args: argparse.Namespace, work: Path):
    """Start tritonserver on --repository, or on a synthetic stack built under `work`."""
    from megaclass.python_backend.server.triton_server import free_port, start_server

    images = None
    if args.repository:
        repository = Path(args.repository)
    else:
        from megaclass.loadtest.benchmarks.serving_artifacts import prepare_artifacts
        from megaclass.loadtest.benchmarks.serving_config import load_bench_config

        bench, cfg = load_bench_config(None, {"classes": args.classes})
        art = prepare_artifacts(work / "artifacts", bench, cfg)
        repository, images = art.repository, art.images
    server = start_server(
        repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), work_dir=work / "triton",
        models=("encoder", "retriever", "classify"), explicit=True,
    )  # fmt: skip
    return server, images


def cmd_soak(args: argparse.Namespace) -> int:
    try:
        duration = parse_duration(args.duration)
        warmup = parse_duration(args.warmup) if args.warmup else min(300.0, duration / 5)
        settings = SoakSettings(
            duration_s=duration, warmup_s=warmup, users=args.users, sample_every_s=parse_duration(args.sample_every)
        )
    except ValueError as exc:
        print(f"megaclass loadtest soak: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    server, images = _serve(args, out / "work")
    try:
        if images is not None:
            settings = SoakSettings(**{**asdict(settings), "images": images})
        print(f"soaking {server.grpc_url} (gRPC) and {server.http_url} (HTTP) for {duration:.0f} s ...", flush=True)
        result = run_soak(server, settings, out)
    finally:
        server.stop()
    command = "megaclass loadtest soak " + " ".join(sys.argv[3:])
    written = write_outputs(result, warmup, out, command.strip(), args.note)
    print(soak_markdown(result, warmup, command.strip(), args.note))
    if args.docs:
        from megaclass.loadtest.reporting import update_doc_section

        update_doc_section(Path(args.docs), "soak", written["markdown"].read_text(), title="# Reliability")
        print(f"section updated in {args.docs}")
    status, _ = result.verdict(warmup)
    return {"met": 0, "missed": 3}.get(status, 4)
