"""The local scale-out run: Triton replicas on loopback behind nginx, driven by Locust.

`run_scaleout(ScaleoutConfig())` starts `replicas` real tritonserver processes (the bundled
Triton 2.51) on one model repository, then runs these phases, each with the same closed-loop
Locust load (`users` users, one request in flight each):

1. `direct`: Locust straight at replica 0 (what the proxy costs is the gap to phase 2);
2. `nginx xN` for N = 1 .. replicas: nginx balancing gRPC (or HTTP) over the first N replicas;
3. `failover`: nginx over all replicas, and after `kill_after_s` the last replica is killed
   (SIGKILL of its process group: the server and its Python-backend stubs, like a crashed
   container). The survivors must take over; the errors are counted and placed on the time
   line, and no request may hang (each has a client deadline, Locust must stop on time, and
   no request may still be in flight when it does).

Every phase is bounded in time (`phase_s`) and traffic stays on 127.0.0.1. Per phase the
report has throughput, latency percentiles, errors by kind, requests per replica and retries
(from nginx's access log), Triton's queue time per request per replica (the autoscaling
metric, computed as the prometheus-adapter rule does), and the CPU used by the replicas,
nginx, Locust and everything else on the machine, so a noisy run shows as one.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from megaclass.loadtest.scaleout.nginx import LoadBalancerConfig, Nginx, NginxError, Replica, start_nginx

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


@dataclass(frozen=True)
class ScaleoutConfig:
    """One scale-out run; every number bounds it (time, users, replicas)."""

    replicas: int = 2
    users: int = 16  # closed-loop Locust users (concurrent requests)
    phase_s: float = 15.0  # load time of each phase
    protocol: str = "grpc"  # grpc | http
    model: str = "classify"
    batch: int = 1  # images per request
    client_timeout_s: float = 10.0  # deadline of every request
    kill_after_s: float | None = None  # failover: kill a replica this long into the phase (None: phase_s / 2)
    direct_baseline: bool = True
    scaling: bool = True  # the nginx phases with 1 .. replicas replicas
    repeats: int = 1  # the scaling phases run this many times, interleaved (x1, x2, x1, x2, ...)
    failover: bool = True
    repository: Path | None = None  # None: build the tiny test repository
    work_dir: Path = Path("runs/scaleout")
    lb: LoadBalancerConfig = field(default_factory=LoadBalancerConfig)
    replica_start_timeout_s: float = 180.0

    def __post_init__(self) -> None:
        if self.protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {self.protocol!r}")
        if self.replicas < 1 or (self.failover and self.replicas < 2):
            raise ValueError("failover needs at least 2 replicas")
        if self.repeats < 1:
            raise ValueError("repeats must be at least 1")
        if self.kill_after_s is not None and not 0 < self.kill_after_s < self.phase_s:
            raise ValueError("kill_after_s must lie inside the phase")


# --- Triton metrics: queue time per request (what the HPA scales on) ------------------------
_METRIC = re.compile(r"^(nv_inference_queue_duration_us|nv_inference_request_success)\{([^}]*)\}\s+([0-9.eE+-]+)")


def parse_triton_counters(text: str) -> dict[tuple[str, str], float]:
    """{(metric, model): value} for the two counters of Triton's /metrics page."""
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            key = (m.group(1), labels.get("model", ""))
            out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def queue_time_per_request_us(before: dict, after: dict) -> float | None:
    """Pipeline queue time per request between two scrapes of one replica.

    For each model, Δnv_inference_queue_duration_us / Δnv_inference_request_success over the
    models that served requests (Δsuccess > 0), summed over the models: the time a request
    spent waiting in queues across the ensemble's steps. The prometheus-adapter rule in
    docker/k8s/prometheus-adapter-values.yaml computes the same with rate() per pod. None when
    the replica served nothing.
    """
    total, served = 0.0, False
    for (metric, model), value in after.items():
        if metric != "nv_inference_request_success":
            continue
        d_ok = value - before.get((metric, model), 0.0)
        if d_ok > 0:
            served = True
            q = "nv_inference_queue_duration_us"
            total += (after.get((q, model), 0.0) - before.get((q, model), 0.0)) / d_ok
    return total if served else None


def scrape(url: str, timeout_s: float = 2.0) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return parse_triton_counters(r.read().decode())
    except OSError:
        return None


# --- CPU accounting -------------------------------------------------------------------------
def _tree_cpu_s(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def _machine_cpu_s() -> float:
    import psutil

    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


# --- results ---------------------------------------------------------------------------------
@dataclass
class PhaseResult:
    """What one phase measured. Times in seconds from the start of the load, latency in ms."""

    name: str
    replicas: int
    target: str  # "replica-0" or "nginx"
    window_s: float
    requests: int
    ok: int
    errors: dict[str, int]
    ok_per_s: float
    latency_ms: dict[str, float]  # p50, p95, p99, max
    in_flight_at_stop: int
    locust_stop_s: float  # from SIGTERM to Locust's exit
    locust_exit: int | None  # None: Locust had to be killed (a hang)
    locust_stats: dict[str, float]  # Locust's own totals, a cross-check
    per_replica: dict[str, int]  # requests answered per replica (nginx access log)
    retried: int  # requests nginx sent to more than one replica
    lb_errors: int  # requests nginx answered with an error status itself
    queue_us_per_request: dict[str, float | None]
    cpu_cores: dict[str, float]  # average cores used: triton, nginx, locust, other, machine
    load_average: tuple[float, float]  # 1-minute load average before and after
    failover: dict | None = None

    @property
    def hung(self) -> bool:
        return self.locust_exit is None or self.in_flight_at_stop > 0 or self.errors.get("DEADLINE_EXCEEDED", 0) > 0


@dataclass
class ScaleoutReport:
    config: dict
    phases: list[PhaseResult]
    machine: dict

    def to_json(self) -> dict:
        return {
            "config": self.config,
            "machine": self.machine,
            "phases": [dataclasses.asdict(p) | {"hung": p.hung} for p in self.phases],
        }


def _percentiles(ms: np.ndarray) -> dict[str, float]:
    if ms.size == 0:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(ms.max())}


def read_events(prefix: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(end times, latency ms, outcome) of every request, and requests in flight at stop."""
    t, ms, kind, in_flight = [], [], [], 0
    for path in sorted(prefix.parent.glob(prefix.name + ".*")):
        with open(path) as f:
            head = json.loads(f.readline() or "{}")
            in_flight += int(head.get("in_flight_at_stop", 0))
            for line in f:
                a, b, c = line.split()
                t.append(float(a))
                ms.append(float(b))
                kind.append(c)
    return np.array(t), np.array(ms), np.array(kind, dtype=object), in_flight


def read_access_log(path: Path | None) -> list[tuple[float, int, list[str]]]:
    """(time, status, [replica addresses tried]) per request from the nginx access log."""
    rows = []
    if path is None or not path.exists():
        return rows
    for line in path.read_text().splitlines():
        parts = line.split("|")
        if len(parts) < 6:
            continue
        addrs = [a.strip() for a in parts[3].replace(" : ", ", ").split(",") if a.strip() and a.strip() != "-"]
        rows.append((float(parts[0]), int(parts[2]), addrs))
    return rows


def locust_totals(csv_prefix: Path) -> dict[str, float]:
    """Requests, failures and requests/s of the Aggregated row of Locust's stats CSV."""
    import csv

    path = Path(f"{csv_prefix}_stats.csv")
    if not path.exists():
        return {}
    for row in csv.DictReader(open(path)):
        if row.get("Name") == "Aggregated":
            return {
                "requests": float(row["Request Count"]),
                "failures": float(row["Failure Count"]),
                "requests_per_s": float(row["Requests/s"]),
            }
    return {}


# --- the run ---------------------------------------------------------------------------------
def tiny_repository(root: Path) -> Path:
    """The tiny real repository (projection encoder, 40 classes; megaclass.export.repository.tiny)."""
    repo = root / "repo"
    if (repo / "classify" / "config.pbtxt").exists():
        return repo
    from megaclass.export.config import ModelServingConfig, ServingConfig
    from megaclass.export.repository.tiny import build_tiny_repository

    small = ModelServingConfig(max_batch_size=16, preferred_batch_sizes=(8, 16), max_queue_delay_us=1000)
    root.mkdir(parents=True, exist_ok=True)
    build_tiny_repository(root, ServingConfig(encoder=small, retriever=small, default_top_k=5, max_top_k=20))
    return repo


@contextlib.contextmanager
def running_replicas(repository: Path, count: int, work_dir: Path, timeout_s: float) -> Iterator[list]:
    """`count` tritonservers on free loopback ports, started in parallel, stopped afterwards."""
    from megaclass.python_backend.server.triton_server import (
        TritonError,
        free_port,
        locate_triton,
        prepare_backend_dir,
        start_server,
    )

    work_dir.mkdir(parents=True, exist_ok=True)
    prepare_backend_dir(locate_triton(), work_dir)  # once: parallel starts in one process would race on it

    # A killed replica must stay down for the failover measurement (an orchestrator would restart
    # it later): no launcher watchdog, where the launcher has one.
    extra = {"watchdog": False} if "watchdog" in inspect.signature(start_server).parameters else {}

    def one(i: int):
        for attempt in range(3):  # a free port can be taken by someone else before the server binds it
            try:
                return start_server(
                    repository,
                    http_port=free_port(),
                    grpc_port=free_port(),
                    metrics_port=free_port(),
                    work_dir=work_dir,
                    ready_timeout_s=timeout_s,
                    **extra,
                )
            except TritonError as exc:
                if "already in use" not in str(exc) or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    with cf.ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(one, i) for i in range(count)]
        servers, errors = [], []
        for f in futures:
            try:
                servers.append(f.result())
            except Exception as exc:  # noqa: BLE001 - stop the others, then re-raise the first
                errors.append(exc)
    try:
        if errors:
            raise errors[0]
        yield servers
    finally:
        for s in servers:
            s.stop(timeout=15)


def kill_replica(server) -> None:
    """SIGKILL the replica's process group: tritonserver and its backend stubs at once."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)


def _success_total(servers) -> float:
    total = 0.0
    for s in servers:
        counters = scrape(s.metrics_url) if s.is_running() else None
        total += sum(v for (m, _), v in (counters or {}).items() if m == "nv_inference_request_success")
    return total


def _wait_for_load(servers, baseline: float, locust: subprocess.Popen, timeout_s: float) -> float:
    """Block until the replicas count requests beyond `baseline`; returns the time it happened."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if locust.poll() is not None:
            raise RuntimeError(f"Locust exited with code {locust.returncode} before sending load")
        if _success_total(servers) > baseline:
            return time.time()
        time.sleep(0.1)
    raise RuntimeError(f"no request reached the replicas within {timeout_s:.0f}s")


def run_phase(
    cfg: ScaleoutConfig,
    name: str,
    servers: Sequence,
    active: int,
    out_dir: Path,
    *,
    through_nginx: bool,
    kill_index: int | None = None,
) -> PhaseResult:
    """One bounded Locust run against replica 0 directly or nginx over the first `active` replicas."""
    from megaclass.python_backend.server.triton_server import free_port

    out_dir.mkdir(parents=True, exist_ok=True)
    used = list(servers[:active])
    nginx: Nginx | None = None
    if through_nginx:
        for attempt in range(3):  # as for the replicas: a free port may be taken before nginx binds it
            lb = dataclasses.replace(cfg.lb, grpc_port=free_port(), http_port=free_port())
            try:
                nginx = start_nginx([Replica(s.host, s.grpc_port, s.http_port) for s in used], lb, out_dir / "nginx")
                break
            except NginxError as exc:
                if "in use" not in str(exc) or attempt == 2:
                    raise
        assert nginx is not None
        host = nginx.grpc_url if cfg.protocol == "grpc" else nginx.http_url
    else:
        host = used[0].grpc_url if cfg.protocol == "grpc" else used[0].http_url
    events_prefix = out_dir / "requests"
    csv_prefix = out_dir / "locust"
    env = dict(
        os.environ,
        MEGACLASS_SO_PROTOCOL=cfg.protocol,
        MEGACLASS_SO_MODEL=cfg.model,
        MEGACLASS_SO_BATCH=str(cfg.batch),
        MEGACLASS_SO_TIMEOUT_S=str(cfg.client_timeout_s),
        MEGACLASS_SO_EVENTS=str(events_prefix),
    )
    stop_timeout = cfg.client_timeout_s + 2  # every request ends by its deadline before Locust gives up on it
    cmd = [
        str(Path(sys.executable).parent / "locust"), "-f", str(LOCUSTFILE), "--headless",
        "-u", str(cfg.users), "-r", str(max(cfg.users * 10, 1)), "--host", host,
        "-t", f"{int(cfg.phase_s + 60)}s",  # a safety net only: the phase is ended by SIGTERM below
        "--stop-timeout", str(int(stop_timeout)), "--only-summary", "--csv", str(csv_prefix),
    ]  # fmt: skip
    before = {i: scrape(s.metrics_url) or {} for i, s in enumerate(used)}
    baseline = _success_total(used)
    load_before = os.getloadavg()[0]
    failover: dict | None = None
    with open(out_dir / "locust.log", "w") as log:
        locust = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        t0 = _wait_for_load(used, baseline, locust, timeout_s=60)
        # CPU counters from the moment the load arrives, all at once
        machine0, locust0 = _machine_cpu_s(), _tree_cpu_s(locust.pid)
        ours_before = {i: _tree_cpu_s(s.process.pid) for i, s in enumerate(used)}
        nginx_before = _tree_cpu_s(nginx.process.pid) if nginx else 0.0
        if kill_index is not None:
            kill_after = cfg.kill_after_s if cfg.kill_after_s is not None else cfg.phase_s / 2
            time.sleep(kill_after)
            t_kill = time.time()
            ours_before.pop(kill_index, None)  # its CPU cannot be read after the kill
            kill_replica(used[kill_index])
            failover = {"killed": f"replica-{kill_index}", "kill_at_s": t_kill - t0}
            time.sleep(cfg.phase_s - kill_after)
        else:
            time.sleep(cfg.phase_s)
        t1 = time.time()
        cpu = {
            "triton": sum(_tree_cpu_s(used[i].process.pid) - c for i, c in ours_before.items()),
            "nginx": (_tree_cpu_s(nginx.process.pid) - nginx_before) if nginx else 0.0,
            "locust": _tree_cpu_s(locust.pid) - locust0,
            "machine": _machine_cpu_s() - machine0,
        }
        locust.send_signal(signal.SIGTERM)
        try:
            locust.wait(timeout=stop_timeout + 15)
            exit_code: int | None = locust.returncode
        except subprocess.TimeoutExpired:
            os.killpg(locust.pid, signal.SIGKILL)
            locust.wait()
            exit_code = None
        stop_s = time.time() - t1
    finally:
        if locust.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(locust.pid, signal.SIGKILL)
            locust.wait()
        if nginx:
            nginx.stop()
    after = {i: scrape(s.metrics_url) if s.is_running() else None for i, s in enumerate(used)}

    t, ms, kind, in_flight = read_events(events_prefix)
    in_window = (t >= t0) & (t <= t1)
    ok = kind == "ok"
    window = t1 - t0
    errors = dict(Counter(k for k in kind if k != "ok"))
    access = read_access_log(nginx.access_log if nginx else None)
    port_to_replica = {
        f"{s.host}:{s.grpc_port if cfg.protocol == 'grpc' else s.http_port}": f"replica-{i}" for i, s in enumerate(used)
    }
    per_replica = Counter(
        port_to_replica.get(addrs[-1], addrs[-1]) for _, status, addrs in access if addrs and status < 500
    )
    if not through_nginx:
        per_replica = Counter({"replica-0": int(ok.sum())})
    cpu_cores = {k: v / window for k, v in cpu.items()}
    cpu_cores["other"] = max(cpu_cores["machine"] - cpu_cores["triton"] - cpu_cores["nginx"] - cpu_cores["locust"], 0.0)
    if failover is not None:
        t_kill = t0 + failover["kill_at_s"]
        err_t = t[~ok]
        after_kill = (t >= t_kill) & in_window
        before_kill = (t < t_kill) & in_window
        failover |= {
            "errors_total": int((~ok).sum()),
            "errors_after_kill": int((~ok & (t >= t_kill)).sum()),
            "errors_before_kill": int((~ok & (t < t_kill)).sum()),
            "last_error_after_kill_s": float(err_t.max() - t_kill) if err_t.size and err_t.max() >= t_kill else None,
            "ok_per_s_before_kill": float((ok & before_kill).sum() / max(t_kill - t0, 1e-9)),
            "ok_per_s_after_kill": float((ok & after_kill).sum() / max(t1 - t_kill, 1e-9)),
            "max_latency_ms_after_kill": float(ms[after_kill].max()) if after_kill.any() else None,
            "requests_retried_by_nginx": sum(1 for _, _, a in access if len(a) > 1),
            "answered_by_killed_after_kill": sum(
                1 for ts, st, a in access
                if ts > t_kill + 0.5 and st < 500 and a and port_to_replica.get(a[-1]) == failover["killed"]
            ),
        }  # fmt: skip
    return PhaseResult(
        name=name,
        replicas=active,
        target="nginx" if through_nginx else "replica-0",
        window_s=window,
        requests=int(in_window.sum()),
        ok=int((ok & in_window).sum()),
        errors=errors,
        ok_per_s=float((ok & in_window).sum() / window),
        latency_ms=_percentiles(ms[in_window]),
        in_flight_at_stop=in_flight,
        locust_stop_s=stop_s,
        locust_exit=exit_code,
        locust_stats=locust_totals(csv_prefix),
        per_replica=dict(sorted(per_replica.items())),
        retried=sum(1 for _, _, a in access if len(a) > 1),
        lb_errors=sum(1 for _, st, _ in access if st >= 500),
        queue_us_per_request={
            f"replica-{i}": (queue_time_per_request_us(before[i], after[i]) if after[i] else None) for i in before
        },
        cpu_cores=cpu_cores,
        load_average=(load_before, os.getloadavg()[0]),
        failover=failover,
    )


def run_scaleout(cfg: ScaleoutConfig = ScaleoutConfig(), log=print) -> ScaleoutReport:
    """Start the replicas, run every phase, stop everything; returns the report (and writes it)."""
    import platform

    work = Path(cfg.work_dir).resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = work / stamp
    out.mkdir(parents=True, exist_ok=True)
    repository = Path(cfg.repository).resolve() if cfg.repository else tiny_repository(work / "tiny")
    log(f"scaleout: {cfg.replicas} replica(s) of {repository}; results in {out}")
    t = time.monotonic()
    phases: list[PhaseResult] = []
    with running_replicas(repository, cfg.replicas, work / "triton", cfg.replica_start_timeout_s) as servers:
        log(f"scaleout: replicas ready in {time.monotonic() - t:.1f}s: " + ", ".join(s.grpc_url for s in servers))
        plan: list[tuple[str, int, bool, int | None]] = []
        if cfg.direct_baseline:
            plan.append(("direct x1", 1, False, None))
        if cfg.scaling:
            for r in range(cfg.repeats):
                tag = f" #{r + 1}" if cfg.repeats > 1 else ""
                plan += [(f"nginx x{n}{tag}", n, True, None) for n in range(1, cfg.replicas + 1)]
        if cfg.failover:
            plan.append((f"failover x{cfg.replicas}", cfg.replicas, True, cfg.replicas - 1))
        for name, n, via_nginx, kill in plan:
            log(f"scaleout: phase '{name}' ({cfg.users} users, {cfg.phase_s:.0f}s)")
            slug = name.replace(" ", "-")
            result = run_phase(cfg, name, servers, n, out / slug, through_nginx=via_nginx, kill_index=kill)
            phases.append(result)
            log("  " + _one_line(result))
    report = ScaleoutReport(
        config=json.loads(json.dumps(dataclasses.asdict(cfg), default=str)) | {"repository": str(repository)},
        phases=phases,
        machine={
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "started": stamp,
        },
    )
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=2))
    (out / "report.md").write_text(format_report(report))
    return report


# --- presentation ----------------------------------------------------------------------------
def _one_line(p: PhaseResult) -> str:
    lat = p.latency_ms
    s = (
        f"{p.ok_per_s:8.1f} ok/s  p50 {lat['p50']:.1f} ms  p99 {lat['p99']:.1f} ms  max {lat['max']:.0f} ms  "
        f"errors {sum(p.errors.values())}  per replica {p.per_replica}"
    )
    if p.failover:
        f = p.failover
        s += f"  | killed {f['killed']} at {f['kill_at_s']:.1f}s: {f['errors_after_kill']} errors after, {f['requests_retried_by_nginx']} retried"
    if p.hung:
        s += "  HUNG"
    return s


def format_report(r: ScaleoutReport) -> str:
    """Markdown tables of the phases (the figures docs/scaling.md quotes)."""
    c = r.config
    lines = [
        f"# Scale-out run {r.machine['started']}",
        "",
        f"{c['replicas']} Triton replica(s) on loopback, {c['users']} closed-loop Locust users over {c['protocol']}, "
        f"batch {c['batch']}, {c['phase_s']:.0f} s per phase, client deadline {c['client_timeout_s']:.0f} s; "
        f"{r.machine['cores']} cores. Repository: `{c['repository']}`.",
        "",
        "| phase | ok/s | p50 ms | p95 ms | p99 ms | max ms | errors | requests per replica | queue µs/request | CPU cores: triton / nginx / locust / other | load avg |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- |",
    ]
    for p in r.phases:
        lat, cpu = p.latency_ms, p.cpu_cores
        queue = ", ".join(f"{k}: {'-' if v is None else f'{v:.0f}'}" for k, v in p.queue_us_per_request.items())
        errs = ", ".join(f"{k} {v}" for k, v in p.errors.items()) or "0"
        per = ", ".join(f"{k}: {v}" for k, v in p.per_replica.items())
        lines.append(
            f"| {p.name} | {p.ok_per_s:.1f} | {lat['p50']:.1f} | {lat['p95']:.1f} | {lat['p99']:.1f} | {lat['max']:.0f} "
            f"| {errs} | {per} | {queue} | {cpu['triton']:.2f} / {cpu['nginx']:.2f} / {cpu['locust']:.2f} / {cpu['other']:.2f} "
            f"| {p.load_average[0]:.1f} → {p.load_average[1]:.1f} |"
        )
    by_n: dict[int, list[float]] = {}
    for p in r.phases:
        if p.name.startswith("nginx x"):
            by_n.setdefault(p.replicas, []).append(p.ok_per_s)
    if 1 in by_n:
        base = float(np.median(by_n[1]))
        for n, values in sorted(by_n.items()):
            if n > 1:
                spread = f" (runs: {', '.join(f'{v:.0f}' for v in values)} ok/s)" if len(values) > 1 else ""
                lines.append(
                    f"\nThroughput nginx x{n} / nginx x1 (medians): {float(np.median(values)) / base:.2f}x{spread}"
                )
    for p in r.phases:
        if p.failover:
            f = p.failover
            last = (
                "none"
                if f["last_error_after_kill_s"] is None
                else f"{f['last_error_after_kill_s']:.2f} s after the kill"
            )
            lines += [
                "",
                f"Failover: {f['killed']} killed (SIGKILL) {f['kill_at_s']:.1f} s into the phase. "
                f"Errors: {f['errors_total']} of {p.requests} requests ({f['errors_after_kill']} after the kill; last: {last}). "
                f"nginx retried {f['requests_retried_by_nginx']} request(s) on another replica. "
                f"ok/s before {f['ok_per_s_before_kill']:.1f}, after {f['ok_per_s_after_kill']:.1f}; "
                f"slowest request after the kill {f['max_latency_ms_after_kill'] or 0:.0f} ms. "
                f"Requests in flight when Locust stopped: {p.in_flight_at_stop}; Locust stopped {p.locust_stop_s:.1f} s after SIGTERM"
                f"{'' if p.locust_exit is not None else ' only when killed (HUNG)'}.",
            ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python -m megaclass.loadtest.scaleout.run [options]` (the same options as `megaclass scaleout`)."""
    import argparse

    from megaclass.clients.cli.scaleout import add_arguments, run_from_args

    parser = argparse.ArgumentParser(
        prog="python -m megaclass.loadtest.scaleout.run", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
