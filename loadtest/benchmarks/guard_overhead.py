"""`python -m megaclass.loadtest.benchmarks.guard_overhead`: the latency the validating front adds.

The tiny stack (export/repository/tiny.py) behind the front; one client sends `retriever` requests
(batch 1) one after another, alternating blocks straight to tritonserver's loopback ports and through
the front, over HTTP and gRPC, so background load hits both alike. Prints p50/p99 per path and the
difference (docs/benchmarks.md, "Validating front").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from megaclass.export.repository.tiny import EMBEDDING_DIM, build_tiny_repository
from megaclass.python_backend.server.guard.launch import start_guarded_server
from megaclass.python_backend.server.triton_server import free_port
from megaclass.python_backend.serving.config import ServingConfig


def _caller(module, url: str):
    client = module.InferenceServerClient(url)
    row = np.random.default_rng(0).standard_normal((1, EMBEDDING_DIM)).astype(np.float32)
    inp = module.InferInput("EMBEDDING", [1, EMBEDDING_DIM], "FP32")
    inp.set_data_from_numpy(row)
    return lambda: client.infer("retriever", [inp])


def measure(requests: int = 2000, block: int = 100) -> dict[str, dict[str, float]]:
    """p50/p99 ms per path: {http,grpc} x {direct,front}."""
    with tempfile.TemporaryDirectory() as tmp:
        repo, _, _ = build_tiny_repository(Path(tmp), ServingConfig())
        guarded = start_guarded_server(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
        try:
            inner = guarded.server
            calls = {
                "http direct": _caller(httpclient, inner.http_url),
                "http front": _caller(httpclient, guarded.http_url),
                "grpc direct": _caller(grpcclient, inner.grpc_url),
                "grpc front": _caller(grpcclient, guarded.grpc_url),
            }
            times: dict[str, list[float]] = {k: [] for k in calls}
            for call in calls.values():  # warm-up
                for _ in range(50):
                    call()
            for _ in range(max(1, requests // block)):
                for name, call in calls.items():
                    for _ in range(block):
                        t0 = time.perf_counter()
                        call()
                        times[name].append(1000 * (time.perf_counter() - t0))
        finally:
            guarded.stop()
    return {k: {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99))} for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000, help="requests per path (default: 2000)")
    args = p.parse_args()
    result = measure(args.requests)
    print("| path | p50 ms | p99 ms |\n| --- | --- | --- |")
    for name, r in result.items():
        print(f"| {name} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    for proto in ("http", "grpc"):
        d, f = result[f"{proto} direct"], result[f"{proto} front"]
        print(
            f"{proto}: the front adds {f['p50_ms'] - d['p50_ms']:+.2f} ms at p50, {f['p99_ms'] - d['p99_ms']:+.2f} ms at p99"
        )


if __name__ == "__main__":
    main()
