"""What the serving side used under load: Triton's Prometheus counters and CPU time of processes.

The counters give requests completed and time spent queued per model; the CPU times (user +
system, all threads) of tritonserver, its Python-backend stubs, nginx and the load generator say
where the machine's cores went. The CPU budget and the scale-out run read both.
"""

from __future__ import annotations

import contextlib
import re
import urllib.request

_METRIC = re.compile(r"^(\w+)\{([^}]*)\}\s+([0-9.eE+-]+)")
REQUEST_COUNTERS = ("nv_inference_queue_duration_us", "nv_inference_request_success")
# inferences (batch rows) and model executions: their ratio is the mean batch a model ran
BATCH_COUNTERS = ("nv_inference_count", "nv_inference_exec_count")


def parse_triton_counters(text: str, names: tuple[str, ...] = REQUEST_COUNTERS) -> dict[tuple[str, str], float]:
    """{(metric, model): value} for the counters `names` of Triton's /metrics page, summed over versions."""
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m and m.group(1) in names:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            key = (m.group(1), labels.get("model", ""))
            out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def metrics_text(url: str, timeout_s: float = 10.0) -> str:
    """Triton's /metrics page as text (raises when the server does not answer)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return r.read().decode()


def scrape(url: str, timeout_s: float = 2.0) -> dict | None:
    """The counters of one server's /metrics page, None when it does not answer (a killed replica)."""
    try:
        return parse_triton_counters(metrics_text(url, timeout_s))
    except OSError:
        return None


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


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid`, all its threads (0 once it is gone)."""
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` and all its descendants (0 once it is gone)."""
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


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (user, system, nice, interrupts)."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
