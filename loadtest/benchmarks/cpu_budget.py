"""Where a request's CPU time goes under load: CPU microseconds per request, per process.

perf_analyzer drives one model at a fixed concurrency; over a window in the middle of the load
we read the CPU time (user + system, all threads) of tritonserver, of each model's Python-backend
stubs and of perf_analyzer, and the number of requests the server completed (its
`nv_inference_request_success` counter). Dividing the two gives each part's CPU cost per request.

Measured with dynamic batching off and on, it shows what batching saves (the per-request work of
the Python models) and what it cannot (the server core and the load generator): on a machine whose
cores the load generator shares, those set a ceiling on the ratio batching can reach.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from megaclass.loadtest.perf import perf_analyzer_binary, perf_environment
from megaclass.loadtest.reporting import markdown_table as render_table
from megaclass.loadtest.server_metrics import (
    BATCH_COUNTERS,
    REQUEST_COUNTERS,
    metrics_text,
    parse_triton_counters,
    process_cpu_seconds,
)
from megaclass.python_backend.server.watchdog import stub_identity


@dataclass(frozen=True)
class CpuBudget:
    """CPU per request of each part, over one measured window."""

    model: str
    concurrency: int
    requests_per_s: float
    cores: int
    us_per_request: dict[str, float]  # "tritonserver", "stub:<model>", "load generator", "idle"
    window_s: float = 0.0  # the measured window
    mean_batch: float = 0.0  # rows per model execution over the window (Triton's counters; 0: unknown)
    # The model's own compute per request as its stubs measured it while serving (thread CPU time in the
    # encoder run and the index search, megaclass_compute_seconds_total per megaclass_retriever_queries_total,
    # one image per request); 0: the model does not report it.
    compute_us: float = 0.0

    def busy_us(self, parts: tuple[str, ...]) -> float:
        return sum(self.us_per_request.get(p, 0.0) for p in parts)


def part_pids(server_pid: int, generator_pid: int) -> dict[str, list[int]]:
    """The processes to account for: the server, its stubs grouped by model, the load generator."""
    import psutil

    parts: dict[str, list[int]] = {"tritonserver": [server_pid], "load generator": [generator_pid]}
    for child in psutil.Process(server_pid).children():
        try:
            identity = stub_identity(child.cmdline())
        except psutil.Error:
            continue
        if identity is not None:
            parts.setdefault(f"stub:{identity[0]}", []).append(child.pid)
    return parts


def completed_requests(text: str, model: str) -> float:
    """The server's count of successful requests of `model` (all versions) in Prometheus text."""
    return parse_triton_counters(text).get(("nv_inference_request_success", model), 0.0)


COMPUTE_COUNTERS = ("megaclass_compute_seconds_total", "megaclass_retriever_queries_total")


def compute_counts(text: str, model: str) -> tuple[float, float]:
    """(CPU seconds of the model's own compute, queries it searched) as its stubs report them. Both are
    sent together (SearchTally), so their ratio holds whenever they are read."""
    c = parse_triton_counters(text, COMPUTE_COUNTERS)
    return tuple(c.get((name, model), 0.0) for name in COMPUTE_COUNTERS)


def model_counts(text: str, model: str) -> tuple[float, float, float]:
    """(successful requests, inferences = batch rows, executions) of `model` in Prometheus text."""
    c = parse_triton_counters(text, REQUEST_COUNTERS + BATCH_COUNTERS)
    return tuple(c.get((name, model), 0.0) for name in ("nv_inference_request_success", *BATCH_COUNTERS))


def measure_cpu_budget(
    server,
    model: str,
    concurrency: int,
    input_data: Path | None = None,
    window_s: float = 10.0,
    warmup_s: float = 3.0,
    cores: int | None = None,
    shapes: dict[str, list[int]] | None = None,
) -> CpuBudget:
    """Load `model` on the running `server` with perf_analyzer and measure CPU per request.

    `server` is a `TritonServer` (its process, gRPC and metrics URLs are used). Idle is the
    machine's unused core time per request (`cores` × window − all parts).
    """
    import os

    cores = cores or len(os.sched_getaffinity(0))
    run_s = warmup_s + window_s + 3.0
    cmd = [
        str(perf_analyzer_binary()), "-m", model, "-u", server.grpc_url, "-i", "grpc",
        f"--concurrency-range={concurrency}", f"--measurement-interval={int(run_s * 1000)}",
        "--max-trials=1", "--stability-percentage=1000", f"--max-threads={max(16, concurrency)}",
    ]  # fmt: skip
    if input_data is not None:
        cmd += ["--input-data", str(input_data)]
    for name, dims in (shapes or {}).items():
        cmd += ["--shape", f"{name}:{','.join(map(str, dims))}"]
    generator = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=perf_environment())
    try:
        time.sleep(warmup_s)
        parts = part_pids(server.process.pid, generator.pid)
        before = {name: sum(map(process_cpu_seconds, pids)) for name, pids in parts.items()}
        m0, t0 = metrics_text(server.metrics_url), time.monotonic()
        time.sleep(window_s)
        after = {name: sum(map(process_cpu_seconds, pids)) for name, pids in parts.items()}
        m1, t1 = metrics_text(server.metrics_url), time.monotonic()
    finally:
        generator.kill()
        generator.wait()
    done, rows, executions = (b - a for a, b in zip(model_counts(m0, model), model_counts(m1, model), strict=True))
    compute_s, queries = (b - a for a, b in zip(compute_counts(m0, model), compute_counts(m1, model), strict=True))
    if done <= 0:
        raise RuntimeError(f"no {model} request completed in the {window_s:.0f} s window")
    wall = t1 - t0
    us = {name: (after[name] - before[name]) / done * 1e6 for name in parts}
    us["idle"] = max(0.0, cores * wall / done * 1e6 - sum(us.values()))
    mean = rows / executions if executions > 0 else 0.0
    compute_us = compute_s / queries * 1e6 if queries > 0 else 0.0
    return CpuBudget(model, concurrency, done / wall, cores, us, wall, mean, compute_us)


def ratio_ceiling(unbatched: CpuBudget, batched: CpuBudget, model_compute_us: float) -> float:
    """The most batching could gain if the Python models cost nothing but `model_compute_us`.

    The server core and the load generator are taken at their batched per-request cost, the
    unbatched run at its whole cost (idle included): an upper bound on the throughput ratio.
    """
    fixed = batched.busy_us(("tritonserver", "load generator")) + model_compute_us
    return sum(unbatched.us_per_request.values()) / fixed


def markdown_table(budgets: dict[str, CpuBudget]) -> str:
    """Rows: parts (those that used any CPU); columns: each labelled budget (e.g. batching off / on)."""
    names = sorted({p for b in budgets.values() for p, v in b.us_per_request.items() if v >= 0.5}, key=_part_order)
    rows = [[name, *(f"{b.us_per_request.get(name, 0):.0f}" for b in budgets.values())] for name in names]
    rows.append(["**total**", *(f"{sum(b.us_per_request.values()):.0f}" for b in budgets.values())])
    rows.append(["requests/s", *(f"{b.requests_per_s:.0f}" for b in budgets.values())])
    return render_table(["CPU µs per request", *budgets], rows)


def _part_order(name: str) -> tuple[int, str]:
    order = {"tritonserver": 0, "load generator": 2, "idle": 3}
    return order.get(name, 1), name


def encoder_us_per_image(onnx_path: Path, batch: int, image_size: int, threads: int = 1, seconds: float = 2.0) -> float:
    """ONNX Runtime's own time per image at `batch` (one instance's threads): the model's compute."""
    import numpy as np

    from megaclass.python_backend.serving.encoder_runtime import OnnxEncoder

    encoder = OnnxEncoder(onnx_path, threads)
    x = (np.random.default_rng(0).random((batch, 1, image_size, image_size)) > 0.8).astype(np.float32)
    for _ in range(3):
        encoder.embed(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        encoder.embed(x)
        n += 1
    return (time.perf_counter() - start) / (n * batch) * 1e6


IDENTITY_MODEL = '''"""A trivial Python-backend model: its input back as its output (the floor of a Python-backend hop)."""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", pb_utils.get_input_tensor_by_name(r, "IMAGE").as_numpy())])
            for r in requests
        ]
'''


CLASSIFY_FLOOR_MODEL = '''"""A Python-backend model with `classify`'s input and outputs that does no work: every request gets
one answer built at load (the floor of tritonserver and one stub for that interface). Its BYTES outputs
are serialised as classify's are (bytes_tensors), so the floor is the cheapest way to answer like it."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from megaclass.python_backend.serving import bytes_tensors


class TritonPythonModel:
    def initialize(self, args):
        bytes_tensors.install(pb_utils)
        k = int(json.loads(args["model_config"])["parameters"]["default_top_k"]["string_value"])
        self.outputs = [
            ("CLASS_IDS", np.arange(k, dtype=np.int64)[None]),
            ("LABELS", np.array([[b"label"] * k], dtype=np.object_)),
            ("SCORES", np.linspace(1.0, 0.5, k, dtype=np.float32)[None]),
            ("INDEX_VERSION", np.array([[b"1"]], dtype=np.object_)),
        ]

    def execute(self, requests):
        responses = []
        for r in requests:
            rows = pb_utils.get_input_tensor_by_name(r, "IMAGE").as_numpy().shape[0]
            tensors = [pb_utils.Tensor(name, np.repeat(value, rows, axis=0)) for name, value in self.outputs]
            responses.append(pb_utils.InferenceResponse(tensors))
        return responses
'''

FLOOR_MODELS = ("identity", "classify_floor")


def floor_repository(
    repo_dir: Path,
    image_size: int,
    max_batch_size: int,
    instances: int,
    batching: bool,
    top_k: int = 5,
    names: dict[str, str] | None = None,
) -> Path:
    """A repository of the two floors of a Python-backend `classify`, batched and scaled like it: what
    tritonserver and one stub cost per request doing nothing. `identity` returns its IMAGE (one output);
    `classify_floor` has classify's input and four outputs (two of them BYTES) filled with a constant answer.
    `names`: which floors to write, under which model names (default: both, under their own names; the
    head-to-head serves `classify_floor` as `classify`, so that the same clients load it)."""
    from tritonclient.grpc import model_config_pb2 as mc

    from megaclass.export.repository.generate import RETRIEVER_OUTPUTS  # classify's outputs, as generated

    dims = f"[1, {image_size}, {image_size}]"
    head = f'backend: "python"\nmax_batch_size: {max_batch_size}\ninput {{ name: "IMAGE" data_type: TYPE_FP32 dims: {dims} }}\n'
    tail = f"instance_group {{ kind: KIND_CPU count: {instances} }}\n" + ("dynamic_batching { }\n" if batching else "")
    outputs = {
        "identity": f'output {{ name: "OUTPUT" data_type: TYPE_FP32 dims: {dims} }}\n',
        "classify_floor": (
            "".join(
                f'output {{ name: "{name}" data_type: {mc.DataType.Name(dtype)} dims: {dims} }}\n'
                for name, dtype, dims in RETRIEVER_OUTPUTS
            )
            + f'parameters {{ key: "default_top_k" value {{ string_value: "{top_k}" }} }}\n'
        ),
    }
    sources = {"identity": IDENTITY_MODEL, "classify_floor": CLASSIFY_FLOOR_MODEL}
    for floor, name in (names or {m: m for m in FLOOR_MODELS}).items():
        model_dir = Path(repo_dir) / name
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        (model_dir / "config.pbtxt").write_text(f'name: "{name}"\n' + head + outputs[floor] + tail)
        (model_dir / "1" / "model.py").write_text(sources[floor])
    return Path(repo_dir)


def search_us_per_query(
    index_dir: Path, queries, batch: int, top_k: int, threads: int = 1, seconds: float = 2.0
) -> float:
    """The routed index's own time per query at `batch` queries per call, with the threads one
    instance gets (the retriever's compute, as `encoder_us_per_image` is the encoder's)."""
    import numpy as np

    from megaclass.python_backend.index.routed_index import RoutedIndex
    from megaclass.python_backend.serving.thread_budget import size_index_threads

    index = size_index_threads(RoutedIndex.load(index_dir), threads)
    x = np.ascontiguousarray(np.resize(np.asarray(queries, dtype=np.float32), (batch, index.dim)))
    for _ in range(3):
        index.search(x, top_k)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        index.search(x, top_k)
        n += 1
    return (time.perf_counter() - start) / (n * batch) * 1e6


@dataclass(frozen=True)
class FloorComparison:
    """One process's CPU per request for the model (less its own compute) against the floor's."""

    part: str
    model_us: float  # measured
    compute_us: float  # the model's own compute taken out of `model_us` (encoder + search; 0 for the server)
    floor_us: float

    @property
    def ratio(self) -> float:
        return (self.model_us - self.compute_us) / self.floor_us if self.floor_us > 0 else float("inf")


def compare_to_floor(model: CpuBudget, floor: CpuBudget, compute_us: float) -> list[FloorComparison]:
    """tritonserver against tritonserver, and the model's stub less its compute against the floor's stub:
    once with `compute_us` (the compute timed alone, one thread) and, where the stub reported it
    (`model.compute_us`), once with the compute it measured while serving (with the machine's other
    load on the same cores, the same work takes longer than alone)."""
    stub = f"stub:{model.model}"
    floor_stub = f"stub:{floor.model}"
    rows = [
        FloorComparison(
            "tritonserver", model.us_per_request["tritonserver"], 0.0, floor.us_per_request["tritonserver"]
        ),
        FloorComparison(
            "the model's stub, compute timed alone",
            model.us_per_request[stub],
            compute_us,
            floor.us_per_request[floor_stub],
        ),
    ]
    if model.compute_us > 0:
        rows.append(
            FloorComparison(
                "the model's stub, compute timed in it",
                model.us_per_request[stub],
                model.compute_us,
                floor.us_per_request[floor_stub],
            )
        )
    return rows
