"""Serving each head-to-head target in turn: the Triton ensemble or the FastAPI baseline as a
subprocess on free loopback ports, stopped afterwards; and the encoder's batch statistics.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from megaclass.export.config import MegaclassConfig
from megaclass.loadtest.benchmarks.serving_artifacts import BenchArtifacts
from megaclass.loadtest.benchmarks.serving_config import HeadToHeadConfig
from megaclass.python_backend.server.triton_server import free_port, start_server


@dataclass(frozen=True)
class Endpoint:
    """Where a served target answers."""

    http: str  # http://host:port
    grpc: str  # host:port ("" for the baseline)
    pid: int = 0  # the server's process (its CPU: it and its descendants)


@contextlib.contextmanager
def serve_triton(
    art: BenchArtifacts, cfg: MegaclassConfig, work: Path, repository: Path | None = None
) -> Iterator[Endpoint]:
    """tritonserver on the benchmark's repository (or `repository`), for the duration of the `with` block."""
    server = start_server(
        repository or art.repository,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        work_dir=work / "triton",
        ready_timeout_s=cfg.serving.ready_timeout_s,
        shm_default_byte_size=cfg.serving.shm_default_byte_size,
    )
    try:
        yield Endpoint(f"http://{server.http_url}", server.grpc_url, server.process.pid)
    finally:
        server.stop()


@contextlib.contextmanager
def serve_baseline(
    art: BenchArtifacts, bench: HeadToHeadConfig, work: Path, threads: int, workers: int = 1, timeout_s: float = 120
) -> Iterator[Endpoint]:
    """The FastAPI baseline (`baseline_service`) with `threads` ONNX Runtime threads in each of `workers`
    uvicorn processes, until it answers /info."""
    port = free_port()
    log = open(work / "baseline.log", "w")  # noqa: SIM115 - closed below
    cmd = [
        sys.executable, "-m", "megaclass.loadtest.benchmarks.baseline_service",
        "--onnx", str(art.onnx), "--index", str(art.index), "--port", str(port),
        "--handler", bench.baseline_handler, "--threads", str(threads), "--workers", str(workers),
    ]  # fmt: skip
    # Its own session, as tritonserver gets (triton_server.start_server): with the kernel's scheduler
    # autogroup on, a session is one scheduling group, so both servers share the cores with the load
    # generator on the same terms.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the baseline exited with {proc.returncode}: {(work / 'baseline.log').read_text()[-2000:]}"
                )
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the baseline did not answer /info in time") from None
                time.sleep(0.3)
        yield Endpoint(f"http://127.0.0.1:{port}", "", proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def floor_repository_for(art: BenchArtifacts, cfg: MegaclassConfig, work: Path) -> Path:
    """A repository whose `classify` does no work (cpu_budget's classify_floor: classify's input and four
    outputs, a constant answer), batched and scaled like the benchmark's `classify` (its encoder settings)."""
    from megaclass.loadtest.benchmarks.cpu_budget import floor_repository

    enc = cfg.serving.encoder
    return floor_repository(
        work / "floor-repository", art.image_size, enc.max_batch_size, enc.instances, batching=True,
        top_k=cfg.serving.default_top_k,
        names={"classify_floor": "classify"},
    )  # fmt: skip


def encoder_batch_counts(grpc_url: str) -> dict[int, int]:
    """Executions per batch size of the model running the encoder so far (`classify` when it is the
    one-hop model, else `encoder`)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        one_hop = client.get_model_config("classify", as_json=True)["config"].get("backend") == "python"
        stats = client.get_inference_statistics("classify" if one_hop else "encoder", as_json=True)["model_stats"]
    finally:
        client.close()
    counts: dict[int, int] = {}
    for model in stats:
        for b in model.get("batch_stats", []):
            counts[int(b["batch_size"])] = counts.get(int(b["batch_size"]), 0) + int(b["compute_infer"]["count"])
    return counts


def mean_batch(before: dict[int, int], after: dict[int, int]) -> float:
    """Mean batch size of the executions between two `encoder_batch_counts`."""
    delta = {b: after.get(b, 0) - before.get(b, 0) for b in after}
    runs = sum(delta.values())
    return sum(b * n for b, n in delta.items()) / runs if runs else float("nan")
