"""The Triton replicas of a scale-out run: started in parallel on free loopback ports, watched for
the load to arrive, one killed like a crashed container, all stopped afterwards."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import inspect
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from megaclass.loadtest.server_metrics import scrape


def tiny_repository(root: Path) -> Path:
    """The tiny real repository (projection encoder, 40 classes; megaclass.export.repository.tiny)."""
    repo = root / "repo"
    if (repo / "classify" / "config.pbtxt").exists():
        return repo
    from megaclass.export.repository.tiny import build_tiny_repository
    from megaclass.python_backend.serving.config import ModelServingConfig, RequestLimits, ServingConfig

    small = ModelServingConfig(max_batch_size=16, preferred_batch_sizes=(8, 16), max_queue_delay_us=1000)
    root.mkdir(parents=True, exist_ok=True)
    build_tiny_repository(
        root, ServingConfig(encoder=small, retriever=small, default_top_k=5, limits=RequestLimits(max_top_k=20))
    )
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


def success_total(servers) -> float:
    """Requests the running replicas have answered successfully so far, all models together."""
    total = 0.0
    for s in servers:
        counters = scrape(s.metrics_url) if s.is_running() else None
        total += sum(v for (m, _), v in (counters or {}).items() if m == "nv_inference_request_success")
    return total


def wait_for_load(servers, baseline: float, locust: subprocess.Popen, timeout_s: float) -> float:
    """Block until the replicas count requests beyond `baseline`; returns the time it happened."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if locust.poll() is not None:
            raise RuntimeError(f"Locust exited with code {locust.returncode} before sending load")
        if success_total(servers) > baseline:
            return time.time()
        time.sleep(0.1)
    raise RuntimeError(f"no request reached the replicas within {timeout_s:.0f}s")
