"""One phase of a scale-out run: bounded closed-loop Locust load on replica 0 directly or on nginx
over the first N replicas, optionally killing one replica mid-phase, and what it measured.

Each request's end time, latency and outcome come from our locustfile's event files; which
replicas answered (and retried) from nginx's access log; queue time from Triton's counters; the
CPU of the replicas, nginx, Locust and the rest of the machine from the process trees.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megaclass.loadtest.scaleout.config import ScaleoutConfig
from megaclass.loadtest.scaleout.nginx import Nginx, NginxError, Replica, start_nginx
from megaclass.loadtest.scaleout.replicas import kill_replica, success_total, wait_for_load
from megaclass.loadtest.server_metrics import (
    machine_cpu_seconds,
    queue_time_per_request_us,
    scrape,
    tree_cpu_seconds,
)

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


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


# --- what the load generator and nginx recorded ----------------------------------------------
def percentiles(ms: np.ndarray) -> dict[str, float]:
    """p50, p95, p99 and max of latencies in ms (NaN when there are none)."""
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


# --- running a phase ------------------------------------------------------------------------
@dataclass
class _Window:
    """The measured window of a phase: when the load ran, the CPU used, how Locust stopped."""

    t0: float
    t1: float
    cpu: dict[str, float]  # CPU seconds: triton, nginx, locust, machine
    failover: dict | None
    locust_exit: int | None
    locust_stop_s: float


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
    out_dir.mkdir(parents=True, exist_ok=True)
    used = list(servers[:active])
    nginx = _start_front(cfg, used, out_dir / "nginx") if through_nginx else None
    front = nginx if nginx is not None else used[0]
    host = front.grpc_url if cfg.protocol == "grpc" else front.http_url
    before = {i: scrape(s.metrics_url) or {} for i, s in enumerate(used)}
    baseline = success_total(used)
    load_before = os.getloadavg()[0]
    with open(out_dir / "locust.log", "w") as log:
        locust = subprocess.Popen(
            _locust_command(cfg, host, out_dir / "locust"), stdout=log, stderr=subprocess.STDOUT,
            env=_locust_env(cfg, out_dir / "requests"), start_new_session=True,
        )  # fmt: skip
    try:
        window = _measure(cfg, used, nginx, locust, baseline, kill_index)
    finally:
        if locust.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(locust.pid, signal.SIGKILL)
            locust.wait()
        if nginx:
            nginx.stop()
    after = {i: scrape(s.metrics_url) if s.is_running() else None for i, s in enumerate(used)}
    queue = {f"replica-{i}": (queue_time_per_request_us(before[i], after[i]) if after[i] else None) for i in before}
    return _summarise(cfg, name, used, window, out_dir, nginx, queue, (load_before, os.getloadavg()[0]))


def _start_front(cfg: ScaleoutConfig, used: Sequence, work_dir: Path) -> Nginx:
    """nginx over the `used` replicas on free ports (retried: a free port may be taken before nginx binds it)."""
    from megaclass.python_backend.server.triton_server import free_port

    for attempt in range(3):
        lb = dataclasses.replace(cfg.lb, grpc_port=free_port(), http_port=free_port())
        try:
            return start_nginx([Replica(s.host, s.grpc_port, s.http_port) for s in used], lb, work_dir)
        except NginxError as exc:
            if "in use" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _stop_timeout(cfg: ScaleoutConfig) -> float:
    return cfg.client_timeout_s + 2  # every request ends by its deadline before Locust gives up on it


def _locust_env(cfg: ScaleoutConfig, events_prefix: Path) -> dict[str, str]:
    """What our locustfile reads: protocol, model, batch, deadline and where to write its events."""
    return dict(
        os.environ,
        MEGACLASS_SO_PROTOCOL=cfg.protocol,
        MEGACLASS_SO_MODEL=cfg.model,
        MEGACLASS_SO_BATCH=str(cfg.batch),
        MEGACLASS_SO_TIMEOUT_S=str(cfg.client_timeout_s),
        MEGACLASS_SO_EVENTS=str(events_prefix),
    )


def _locust_command(cfg: ScaleoutConfig, host: str, csv_prefix: Path) -> list[str]:
    return [
        str(Path(sys.executable).parent / "locust"), "-f", str(LOCUSTFILE), "--headless",
        "-u", str(cfg.users), "-r", str(max(cfg.users * 10, 1)), "--host", host,
        "-t", f"{int(cfg.phase_s + 60)}s",  # a safety net only: the phase is ended by SIGTERM
        "--stop-timeout", str(int(_stop_timeout(cfg))), "--only-summary", "--csv", str(csv_prefix),
    ]  # fmt: skip


def _measure(
    cfg: ScaleoutConfig, used: list, nginx: Nginx | None, locust: subprocess.Popen, baseline: float, kill: int | None
) -> _Window:
    """From the moment the load arrives: `phase_s` of load (killing replica `kill` on the way), the
    CPU used meanwhile, then SIGTERM to Locust and how long it took to stop."""
    t0 = wait_for_load(used, baseline, locust, timeout_s=60)
    # CPU counters from the moment the load arrives, all at once
    machine0, locust0 = machine_cpu_seconds(), tree_cpu_seconds(locust.pid)
    ours_before = {i: tree_cpu_seconds(s.process.pid) for i, s in enumerate(used)}
    nginx_before = tree_cpu_seconds(nginx.process.pid) if nginx else 0.0
    failover: dict | None = None
    if kill is not None:
        kill_after = cfg.kill_after_s if cfg.kill_after_s is not None else cfg.phase_s / 2
        time.sleep(kill_after)
        t_kill = time.time()
        ours_before.pop(kill, None)  # its CPU cannot be read after the kill
        kill_replica(used[kill])
        failover = {"killed": f"replica-{kill}", "kill_at_s": t_kill - t0}
        time.sleep(cfg.phase_s - kill_after)
    else:
        time.sleep(cfg.phase_s)
    t1 = time.time()
    cpu = {
        "triton": sum(tree_cpu_seconds(used[i].process.pid) - c for i, c in ours_before.items()),
        "nginx": (tree_cpu_seconds(nginx.process.pid) - nginx_before) if nginx else 0.0,
        "locust": tree_cpu_seconds(locust.pid) - locust0,
        "machine": machine_cpu_seconds() - machine0,
    }
    locust.send_signal(signal.SIGTERM)
    try:
        locust.wait(timeout=_stop_timeout(cfg) + 15)
        exit_code: int | None = locust.returncode
    except subprocess.TimeoutExpired:
        os.killpg(locust.pid, signal.SIGKILL)
        locust.wait()
        exit_code = None
    return _Window(t0, t1, cpu, failover, exit_code, time.time() - t1)


def _summarise(
    cfg: ScaleoutConfig,
    name: str,
    used: list,
    w: _Window,
    out_dir: Path,
    nginx: Nginx | None,
    queue: dict[str, float | None],
    load_average: tuple[float, float],
) -> PhaseResult:
    """The phase's figures from the event files, nginx's access log and the measured window."""
    t, ms, kind, in_flight = read_events(out_dir / "requests")
    in_window = (t >= w.t0) & (t <= w.t1)
    ok = kind == "ok"
    window = w.t1 - w.t0
    access = read_access_log(nginx.access_log if nginx else None)
    port_to_replica = {
        f"{s.host}:{s.grpc_port if cfg.protocol == 'grpc' else s.http_port}": f"replica-{i}" for i, s in enumerate(used)
    }
    per_replica = Counter(
        port_to_replica.get(addrs[-1], addrs[-1]) for _, status, addrs in access if addrs and status < 500
    )
    if nginx is None:
        per_replica = Counter({"replica-0": int(ok.sum())})
    cpu_cores = {k: v / window for k, v in w.cpu.items()}
    cpu_cores["other"] = max(cpu_cores["machine"] - cpu_cores["triton"] - cpu_cores["nginx"] - cpu_cores["locust"], 0.0)
    failover = w.failover
    if failover is not None:
        failover |= _failover_figures(w, t, ms, ok, in_window, access, port_to_replica)
    return PhaseResult(
        name=name,
        replicas=len(used),
        target="nginx" if nginx is not None else "replica-0",
        window_s=window,
        requests=int(in_window.sum()),
        ok=int((ok & in_window).sum()),
        errors=dict(Counter(k for k in kind if k != "ok")),
        ok_per_s=float((ok & in_window).sum() / window),
        latency_ms=percentiles(ms[in_window]),
        in_flight_at_stop=in_flight,
        locust_stop_s=w.locust_stop_s,
        locust_exit=w.locust_exit,
        locust_stats=locust_totals(out_dir / "locust"),
        per_replica=dict(sorted(per_replica.items())),
        retried=sum(1 for _, _, a in access if len(a) > 1),
        lb_errors=sum(1 for _, st, _ in access if st >= 500),
        queue_us_per_request=queue,
        cpu_cores=cpu_cores,
        load_average=load_average,
        failover=failover,
    )


def _failover_figures(
    w: _Window,
    t: np.ndarray,
    ms: np.ndarray,
    ok: np.ndarray,
    in_window: np.ndarray,
    access: list[tuple[float, int, list[str]]],
    port_to_replica: dict[str, str],
) -> dict:
    """Errors, throughput and latency before and after the kill, and what nginx did about it."""
    t_kill = w.t0 + w.failover["kill_at_s"]
    err_t = t[~ok]
    after_kill = (t >= t_kill) & in_window
    before_kill = (t < t_kill) & in_window
    return {
        "errors_total": int((~ok).sum()),
        "errors_after_kill": int((~ok & (t >= t_kill)).sum()),
        "errors_before_kill": int((~ok & (t < t_kill)).sum()),
        "last_error_after_kill_s": float(err_t.max() - t_kill) if err_t.size and err_t.max() >= t_kill else None,
        "ok_per_s_before_kill": float((ok & before_kill).sum() / max(t_kill - w.t0, 1e-9)),
        "ok_per_s_after_kill": float((ok & after_kill).sum() / max(w.t1 - t_kill, 1e-9)),
        "max_latency_ms_after_kill": float(ms[after_kill].max()) if after_kill.any() else None,
        "requests_retried_by_nginx": sum(1 for _, _, a in access if len(a) > 1),
        "answered_by_killed_after_kill": sum(
            1 for ts, st, a in access
            if ts > t_kill + 0.5 and st < 500 and a and port_to_replica.get(a[-1]) == w.failover["killed"]
        ),
    }  # fmt: skip
