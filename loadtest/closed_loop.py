"""A closed-loop gRPC load generator in plain Python: `concurrency` clients, each sending its next
request as soon as the last is answered, spread over worker processes so the client's GIL is not
the bottleneck. For machines without perf_analyzer or Locust (the lent GPU machine); same numbers:
requests per second and latency percentiles of the measured window (after a warm-up).
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LoadPoint:
    concurrency: int
    requests: int
    failures: int
    rps: float
    rows_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    first_error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _client_thread(url, model, inputs, deadline, measure_from, lat, errors) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    with grpcclient.InferenceServerClient(url) as client:
        tensors = []
        for name, array in inputs.items():
            t = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            t.set_data_from_numpy(array)
            tensors.append(t)
        while (now := time.perf_counter()) < deadline:
            try:
                client.infer(model, tensors)
                if now >= measure_from:
                    lat.append(time.perf_counter() - now)
            except Exception as exc:  # counted, and the first one reported
                if now >= measure_from:
                    errors.append(str(exc)[:300])


def _worker(url, model, inputs, threads, start_at, warmup_s, duration_s, queue) -> None:
    lat: list[float] = []
    errors: list[str] = []
    while time.time() < start_at:  # every process starts its clients together
        time.sleep(0.001)
    t0 = time.perf_counter()
    measure_from, deadline = t0 + warmup_s, t0 + warmup_s + duration_s
    pool = [
        threading.Thread(target=_client_thread, args=(url, model, inputs, deadline, measure_from, lat, errors))
        for _ in range(threads)
    ]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    queue.put((np.asarray(lat, dtype=np.float64), len(errors), errors[0] if errors else ""))


def spawn_clients(worker, url, model, inputs, concurrency, processes, warmup_s, duration_s) -> tuple[Any, list]:
    """Start `worker(url, model, inputs, clients, start_at, warmup_s, duration_s, queue)` on up to
    `processes` spawned processes sharing `concurrency` clients; returns (result queue, processes)."""
    processes = max(1, min(processes, concurrency))
    per = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start_at = time.time() + 3.0  # time for the spawned interpreters to import
    procs = [
        ctx.Process(target=worker, args=(url, model, inputs, n, start_at, warmup_s, duration_s, queue)) for n in per
    ]
    for p in procs:
        p.start()
    return queue, procs


def run_closed_loop(
    url: str,
    model: str,
    inputs: dict[str, np.ndarray],
    concurrency: int,
    duration_s: float = 8.0,
    warmup_s: float = 2.0,
    processes: int = 8,
) -> LoadPoint:
    """Drive `model` at `url` (gRPC) with `concurrency` closed-loop clients sending `inputs`."""
    queue, procs = spawn_clients(_worker, url, model, inputs, concurrency, processes, warmup_s, duration_s)
    return collect_point(queue, procs, concurrency, inputs, duration_s, warmup_s)


def collect_point(queue, procs: list, concurrency: int, inputs: dict[str, np.ndarray], duration_s: float,
                  warmup_s: float) -> LoadPoint:  # fmt: skip
    """One LoadPoint from client processes that each put (latencies in s, failures, first error):
    requests/s over the measured seconds and exact percentiles of every measured request."""
    lat, failures, first = [], 0, ""
    try:
        for _ in procs:
            got, n_err, err = queue.get(timeout=warmup_s + duration_s + 120)
            lat.append(got)
            failures += n_err
            first = first or err
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    ms = np.concatenate(lat) * 1e3 if lat else np.zeros(0)
    pct = np.percentile(ms, [50, 95, 99]) if len(ms) else [float("nan")] * 3
    rows = next(iter(inputs.values())).shape[0]
    return LoadPoint(
        concurrency, len(ms), failures, len(ms) / duration_s, len(ms) * rows / duration_s, *map(float, pct), first
    )
