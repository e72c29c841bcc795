"""The scale-out run's report: per phase a line for the log, a row of the Markdown table, and the
scaling ratio and failover account that docs/scaling.md quotes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from megaclass.loadtest.reporting import markdown_table
from megaclass.loadtest.scaleout.phase import PhaseResult

PHASE_HEADER = [
    "phase", "ok/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors", "requests per replica", "queue µs/request",
    "CPU cores: triton / nginx / locust / other", "load avg",
]  # fmt: skip


@dataclass
class ScaleoutReport:
    """A whole run: its settings, every phase, the machine."""

    config: dict
    phases: list[PhaseResult]
    machine: dict

    def to_json(self) -> dict:
        return {
            "config": self.config,
            "machine": self.machine,
            "phases": [dataclasses.asdict(p) | {"hung": p.hung} for p in self.phases],
        }


def phase_line(p: PhaseResult) -> str:
    """One phase in one line, for the run's log."""
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


def phase_row(p: PhaseResult) -> list[str]:
    """One phase as a row of the report's table."""
    lat, cpu = p.latency_ms, p.cpu_cores
    queue = ", ".join(f"{k}: {'-' if v is None else f'{v:.0f}'}" for k, v in p.queue_us_per_request.items())
    return [
        p.name, f"{p.ok_per_s:.1f}", f"{lat['p50']:.1f}", f"{lat['p95']:.1f}", f"{lat['p99']:.1f}", f"{lat['max']:.0f}",
        ", ".join(f"{k} {v}" for k, v in p.errors.items()) or "0",
        ", ".join(f"{k}: {v}" for k, v in p.per_replica.items()),
        queue,
        f"{cpu['triton']:.2f} / {cpu['nginx']:.2f} / {cpu['locust']:.2f} / {cpu['other']:.2f}",
        f"{p.load_average[0]:.1f} → {p.load_average[1]:.1f}",
    ]  # fmt: skip


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
        markdown_table(PHASE_HEADER, [phase_row(p) for p in r.phases], align="lrrrrrrllll"),
    ]
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
