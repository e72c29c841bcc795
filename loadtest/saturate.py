"""A load generator that can saturate a Triton server: several processes, each running many
closed-loop tritonclient gRPC asyncio clients (one coroutine per in-flight request), so neither the
GIL nor a thread per request limits the offered load. perf_analyzer does not travel to the lent GPU
machine; this runs there and on CPU (CI, against the tiny stack).

Every process sends back its raw latencies; the percentiles are computed over all of them merged
(never averaged across processes), so p50/p95/p99 are those of every measured request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from megaclass.loadtest.closed_loop import LoadPoint, collect_point, spawn_clients


def model_inputs(inputs: dict[str, list[int]], batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid inputs for a served model's required inputs ({name: dims without the batch axis}):
    unit vectors for EMBEDDING, glyph-like 0/1 images otherwise (random FP32 bytes would hold NaN)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, dims in inputs.items():
        if name in ("TOP_K", "THRESHOLD"):  # optional options: the server's defaults
            continue
        x = rng.random((batch, *dims)).astype(np.float32)
        if name == "EMBEDDING":
            out[name] = x / np.linalg.norm(x, axis=1, keepdims=True)
        else:
            out[name] = (x > 0.7).astype(np.float32)
    return out


async def _drive(url: str, model: str, inputs: dict[str, np.ndarray], conns: int, t0: float, warmup_s: float,
                 duration_s: float) -> tuple[np.ndarray, int, str]:  # fmt: skip
    import tritonclient.grpc.aio as aio
    from tritonclient.utils import np_to_triton_dtype

    measure_from, deadline = t0 + warmup_s, t0 + warmup_s + duration_s
    lat: list[float] = []
    errors: list[str] = []
    client = aio.InferenceServerClient(url)
    tensors = []
    for name, array in inputs.items():
        t = aio.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        t.set_data_from_numpy(array)
        tensors.append(t)

    async def loop() -> None:
        while (start := time.perf_counter()) < deadline:
            try:
                await client.infer(model, tensors, client_timeout=60)
                ok = True
            except Exception as exc:  # counted; the first one reported
                ok = False
                if start >= measure_from:
                    errors.append(str(exc)[:300])
            if ok and start >= measure_from:
                lat.append(time.perf_counter() - start)

    try:
        await asyncio.gather(*(loop() for _ in range(conns)))
    finally:
        await client.close()
    return np.asarray(lat, dtype=np.float64), len(errors), errors[0] if errors else ""


def _worker(url, model, inputs, conns, start_at, warmup_s, duration_s, queue) -> None:
    while time.time() < start_at:  # every process starts its clients together
        time.sleep(0.001)
    t0 = time.perf_counter()
    try:
        queue.put(asyncio.run(_drive(url, model, inputs, conns, t0, warmup_s, duration_s)))
    except Exception as exc:  # the parent reports it instead of waiting for a result that never comes
        queue.put((np.zeros(0), conns, f"client process failed: {exc!r}"[:300]))


def run_saturating(
    url: str,
    model: str,
    inputs: dict[str, np.ndarray],
    concurrency: int,
    duration_s: float = 8.0,
    warmup_s: float = 2.0,
    processes: int = 4,
) -> LoadPoint:
    """`concurrency` closed-loop gRPC asyncio clients on `processes` processes for `duration_s` (after
    `warmup_s`): requests/s and the exact latency percentiles of every measured request."""
    queue, procs = spawn_clients(_worker, url, model, inputs, concurrency, processes, warmup_s, duration_s)
    return collect_point(queue, procs, concurrency, inputs, duration_s, warmup_s)


def saturate(
    url: str,
    model: str,
    inputs: dict[str, np.ndarray],
    levels: Sequence[int],
    duration_s: float = 8.0,
    warmup_s: float = 2.0,
    processes: int = 4,
    progress: Any = print,
) -> list[LoadPoint]:
    """Run `levels` of concurrency in increasing order; stop once two levels in a row add less than 3 %
    req/s over the best so far (the server is saturated) or one fails requests."""
    points: list[LoadPoint] = []
    flat = 0
    for c in sorted(set(levels)):
        p = run_saturating(url, model, inputs, c, duration_s, warmup_s, processes)
        points.append(p)
        if progress:
            progress(f"c={c}: {p.rps:,.0f} req/s, p50 {p.p50_ms:.2f} p95 {p.p95_ms:.2f} p99 {p.p99_ms:.2f} ms, "
                     f"{p.failures} failures {p.first_error}")  # fmt: skip
        best = max(q.rps for q in points[:-1]) if len(points) > 1 else 0.0
        flat = flat + 1 if p.rps < 1.03 * best else 0
        if p.failures or flat >= 2:
            break
    return points


def best_point(points: Sequence[LoadPoint], p99_limit_ms: float | None = None) -> LoadPoint | None:
    """The highest req/s without failures (and within `p99_limit_ms` when given)."""
    ok = [p for p in points if not p.failures and (p99_limit_ms is None or p.p99_ms <= p99_limit_ms)]
    return max(ok, key=lambda p: p.rps) if ok else None
