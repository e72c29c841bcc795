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

The settings: `config`; the replicas: `replicas`; one phase: `phase`; the report: `report`.
The command: `megaclass scaleout`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from pathlib import Path

from megaclass.loadtest.scaleout.config import ScaleoutConfig
from megaclass.loadtest.scaleout.phase import PhaseResult, run_phase
from megaclass.loadtest.scaleout.replicas import running_replicas, tiny_repository
from megaclass.loadtest.scaleout.report import ScaleoutReport, format_report, phase_line


def phase_plan(cfg: ScaleoutConfig) -> list[tuple[str, int, bool, int | None]]:
    """The phases in order: (name, replicas used, through nginx, index of the replica to kill)."""
    plan: list[tuple[str, int, bool, int | None]] = []
    if cfg.direct_baseline:
        plan.append(("direct x1", 1, False, None))
    if cfg.scaling:
        for r in range(cfg.repeats):
            tag = f" #{r + 1}" if cfg.repeats > 1 else ""
            plan += [(f"nginx x{n}{tag}", n, True, None) for n in range(1, cfg.replicas + 1)]
    if cfg.failover:
        plan.append((f"failover x{cfg.replicas}", cfg.replicas, True, cfg.replicas - 1))
    return plan


def run_scaleout(cfg: ScaleoutConfig = ScaleoutConfig(), log=print) -> ScaleoutReport:  # noqa: B008 - frozen
    """Start the replicas, run every phase, stop everything; returns the report (and writes it)."""
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
        for name, n, via_nginx, kill in phase_plan(cfg):
            log(f"scaleout: phase '{name}' ({cfg.users} users, {cfg.phase_s:.0f}s)")
            slug = name.replace(" ", "-")
            result = run_phase(cfg, name, servers, n, out / slug, through_nginx=via_nginx, kill_index=kill)
            phases.append(result)
            log("  " + phase_line(result))
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
