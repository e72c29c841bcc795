"""Locust users for megaclass: Triton over gRPC and HTTP, and the FastAPI baseline over HTTP.

Users (pick them on Locust's command line; all three by default):
- `TritonGrpcUser`: tritonclient's gRPC client. Locust has no gRPC user of its own, so each
  call is reported through Locust's request event (`request_type="grpc"`).
- `TritonHttpUser`: Locust's FastHttpUser posting Triton's binary-tensor HTTP requests.
- `BaselineHttpUser`: the same images to the FastAPI baseline (`megaclass.loadtest.benchmarks.baseline_service`).

Every user calls `classify` (images) or the retriever (embeddings) by `--model-mix`, with a
batch size drawn from `--batch-mix`; requests are named "<model> b=<batch>" so Locust's
tables show each batch size. The images come from `--images` (a uint8 `[N, S, S]` .npy; the
same file for every target) or are generated from a seed. Payloads are built once per process.

    locust -f loadtest/locustfile.py --headless -u 8 -r 8 -t 30s --host http://127.0.0.1:8000 \\
        --grpc-url 127.0.0.1:8001 TritonGrpcUser TritonHttpUser
"""

from __future__ import annotations

import json
import random
import time

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # before any channel: gRPC calls then yield to other greenlets

import gevent  # noqa: E402
import numpy as np  # noqa: E402
from locust import FastHttpUser, User, constant, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402

from megaclass.loadtest.locust_run import DEFAULT_BATCH_MIX, DEFAULT_MODEL_MIX, parse_mix  # noqa: E402

PAYLOAD_VARIANTS = 8  # distinct payloads per (model, batch size)


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    g = parser.add_argument_group("megaclass")
    g.add_argument("--grpc-url", default="127.0.0.1:8001", help="Triton gRPC address (host:port)")
    g.add_argument("--batch-mix", default=DEFAULT_BATCH_MIX, help="batch:weight,... drawn per request")
    g.add_argument("--model-mix", default=DEFAULT_MODEL_MIX, help="classify:weight,retriever:weight")
    g.add_argument("--images", default="", help="uint8 [N, S, S] .npy of images (default: generated)")
    g.add_argument("--seed", type=int, default=0, help="seed of generated images and of the draws")
    g.add_argument("--warmup", type=float, default=0.0, help="seconds after which the statistics are reset")
    g.add_argument("--latency-file", default="", help="write every response time after the warm-up (JSON, ms)")


class _Measurement:
    """Exact response times after the warm-up (Locust's own percentiles are rounded to whole ms),
    and a per-second timeline of the whole run (successes, failures, latencies)."""

    warming = False
    started = 0.0
    measuring_since = 0.0  # perf_counter when the measured part began (after the warm-up)
    failures = 0  # failed requests after the warm-up
    times: dict[str, list[float]] = {}
    seconds: dict[int, list] = {}  # second -> [ok count, failure count, [ms of the successes]]


@events.test_start.add_listener
def _start_measurement(environment: Environment, **_) -> None:
    seconds = getattr(environment.parsed_options, "warmup", 0) or 0
    _Measurement.times, _Measurement.seconds, _Measurement.started = {}, {}, time.perf_counter()
    _Measurement.measuring_since, _Measurement.failures = _Measurement.started, 0
    if seconds > 0:
        _Measurement.warming = True

        def reset() -> None:
            gevent.sleep(seconds)
            if environment.runner is not None and environment.runner.state in ("spawning", "running"):
                environment.stats.reset_all()
                _Measurement.times, _Measurement.failures = {}, 0
                _Measurement.measuring_since = time.perf_counter()
            _Measurement.warming = False

        gevent.spawn(reset)


def _observe(kind: str, name: str, start: float, ok: bool) -> None:
    """Count a request in the timeline; keep its exact time (ms) when it succeeded after the warm-up."""
    now = time.perf_counter()
    ms = (now - start) * 1000
    bucket = _Measurement.seconds.setdefault(int(now - _Measurement.started), [0, 0, []])
    bucket[0 if ok else 1] += 1
    if ok:
        bucket[2].append(ms)
        if not _Measurement.warming:
            _Measurement.times.setdefault(f"{kind} {name}", []).append(ms)
    elif not _Measurement.warming:
        _Measurement.failures += 1


def timeline(seconds: dict[int, list]) -> list[dict]:
    """Per-second rows: requests, failures, p50 and p95 of the successes (ms)."""
    rows = []
    for t in sorted(seconds):
        ok, failed, ms = seconds[t]
        p50, p95 = np.percentile(ms, [50, 95]).tolist() if ms else [None, None]
        rows.append({"t": t, "ok": ok, "failed": failed, "p50_ms": p50, "p95_ms": p95})
    return rows


@events.test_stop.add_listener
def _write_latencies(environment: Environment, **_) -> None:
    path = getattr(environment.parsed_options, "latency_file", "")
    if path:
        with open(path, "w") as f:
            measured = {
                "seconds": time.perf_counter() - _Measurement.measuring_since,
                "failures": _Measurement.failures,
                "warm": not _Measurement.warming,
            }
            json.dump(
                {"times_ms": _Measurement.times, "measured": measured, "timeline": timeline(_Measurement.seconds)}, f
            )


class Workload:
    """The requests of this Locust process: images, embeddings and the draws, built once."""

    _shared: dict[tuple, Workload] = {}

    def __init__(self, options, image_size: int, embedding_dim: int):
        self.rng = random.Random(options.seed)
        self.models, self.model_weights = parse_mix(options.model_mix)
        self.batches, self.batch_weights = parse_mix(options.batch_mix)
        unknown = set(self.models) - {"classify", "retriever"}
        if unknown:
            raise ValueError(f"unknown model(s) in --model-mix: {sorted(unknown)}")
        gen = np.random.default_rng(options.seed)
        if options.images:
            images = np.load(options.images)
            if images.ndim != 3 or images.shape[1:] != (image_size, image_size):
                raise ValueError(f"{options.images}: want uint8 [N, {image_size}, {image_size}], got {images.shape}")
        else:
            images = (gen.random((256, image_size, image_size)) * 255).astype(np.uint8)
        self.images = (images.astype(np.float32) / 255.0)[:, None]  # the encoder input [N, 1, S, S]
        emb = gen.standard_normal((256, embedding_dim)).astype(np.float32)
        self.embeddings = emb / np.linalg.norm(emb, axis=1, keepdims=True)

    @classmethod
    def get(cls, options, image_size: int, embedding_dim: int) -> Workload:
        key = (image_size, embedding_dim)
        if key not in cls._shared:
            cls._shared[key] = cls(options, image_size, embedding_dim)
        return cls._shared[key]

    def draw(self) -> tuple[str, int]:
        model = self.rng.choices(self.models, self.model_weights)[0]
        return model, self.rng.choices(self.batches, self.batch_weights)[0]

    def batch(self, model: str, batch: int, variant: int) -> np.ndarray:
        """Rows `variant * batch ...` of the images (classify) or embeddings (retriever), cycled."""
        source = self.images if model == "classify" else self.embeddings
        idx = (np.arange(batch) + variant * batch) % len(source)
        return np.ascontiguousarray(source[idx])


TRITON_INPUT = {"classify": "IMAGE", "retriever": "EMBEDDING"}


def _triton_shapes(config_of) -> tuple[int, int]:
    """(image size, embedding dim) from the served models' configs; dim 0 where no retriever is served
    (a repository of `classify` alone, as the head-to-head's floor): only classify requests can be made."""
    image = next(i for i in config_of("classify")["input"])
    try:
        emb = next(i for i in config_of("retriever")["input"] if i["name"] == "EMBEDDING")
    except Exception:  # gRPC: model not found; HTTP: an error body without "input"
        return int(image["dims"][-1]), 0
    return int(image["dims"][-1]), int(emb["dims"][-1])


class TritonGrpcUser(User):
    """Triton over gRPC (tritonclient), reported through Locust's request event."""

    wait_time = constant(0)

    def on_start(self) -> None:
        import tritonclient.grpc as grpcclient

        self.grpc = grpcclient
        opts = self.environment.parsed_options
        self.url = opts.grpc_url
        self.client = grpcclient.InferenceServerClient(self.url)
        size, dim = _triton_shapes(lambda m: self.client.get_model_config(m, as_json=True)["config"])
        self.work = Workload.get(opts, size, dim)
        self.inputs: dict[tuple[str, int, int], list] = {}

    def on_stop(self) -> None:
        self.client.close()

    def _inputs(self, model: str, batch: int) -> list:
        key = (model, batch, self.work.rng.randrange(PAYLOAD_VARIANTS))
        if key not in self.inputs:
            arr = self.work.batch(*key)
            x = self.grpc.InferInput(TRITON_INPUT[model], list(arr.shape), "FP32")
            x.set_data_from_numpy(arr)
            self.inputs[key] = [x]
        return self.inputs[key]

    @task
    def infer(self) -> None:
        model, batch = self.work.draw()
        inputs = self._inputs(model, batch)
        start = time.perf_counter()
        exc, length = None, 0
        try:
            res = self.client.infer(model, inputs)
            ids = res.as_numpy("CLASS_IDS")
            length = res.get_response().ByteSize()
            if ids is None or ids.shape[0] != batch:
                raise AssertionError(f"expected {batch} rows, got {None if ids is None else ids.shape}")
        except Exception as e:  # reported to Locust as a failure, never raised
            exc = e
        _observe("grpc", f"{model} b={batch}", start, exc is None)
        self.environment.events.request.fire(
            request_type="grpc",
            name=f"{model} b={batch}",
            response_time=(time.perf_counter() - start) * 1000,
            response_length=length,
            exception=exc,
            context={"batch": batch},
        )


class TritonHttpUser(FastHttpUser):
    """Triton over HTTP with binary tensors (the KServe v2 protocol with Triton's extension)."""

    wait_time = constant(0)

    def on_start(self) -> None:
        def config_of(model: str) -> dict:
            with self.client.get(f"/v2/models/{model}/config", name="config", catch_response=True) as r:
                r.success()  # metadata calls are not part of the measurement
                return json.loads(r.content)

        self.work = Workload.get(self.environment.parsed_options, *_triton_shapes(config_of))
        self.bodies: dict[tuple[str, int, int], tuple[bytes, dict]] = {}
        self.environment.stats.entries.pop(("config", "GET"), None)

    def _body(self, model: str, batch: int) -> tuple[bytes, dict]:
        import tritonclient.http as httpclient

        key = (model, batch, self.work.rng.randrange(PAYLOAD_VARIANTS))
        if key not in self.bodies:
            arr = self.work.batch(*key)
            x = httpclient.InferInput(TRITON_INPUT[model], list(arr.shape), "FP32")
            x.set_data_from_numpy(arr, binary_data=True)
            outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in ("CLASS_IDS", "SCORES")]
            outputs += [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("LABELS", "INDEX_VERSION")]
            body, json_size = httpclient.InferenceServerClient.generate_request_body([x], outputs=outputs)
            headers = {"Content-Type": "application/octet-stream"}
            if json_size is not None:
                headers["Inference-Header-Content-Length"] = str(json_size)
            self.bodies[key] = (body, headers)
        return self.bodies[key]

    @task
    def infer(self) -> None:
        model, batch = self.work.draw()
        body, headers = self._body(model, batch)
        name = f"{model} b={batch}"
        start = time.perf_counter()
        with self.client.post(
            f"/v2/models/{model}/infer", data=body, headers=headers, name=name, catch_response=True
        ) as r:
            content = r.content
            ok = r.status_code == 200
            if not ok:
                r.failure(f"HTTP {r.status_code}: {content[:200]!r}")
            else:
                size = int(r.headers.get("Inference-Header-Content-Length", len(content)))
                rows = {o["name"]: o["shape"][0] for o in json.loads(content[:size]).get("outputs", [])}
                if rows.get("CLASS_IDS") != batch:
                    ok = False
                    r.failure(f"expected {batch} rows, got {rows}")
            _observe("POST", name, start, ok)


class BaselineHttpUser(FastHttpUser):
    """The FastAPI baseline: raw float32 tensors in, JSON out (see baseline_service)."""

    wait_time = constant(0)

    def on_start(self) -> None:
        with self.client.get("/info", name="info", catch_response=True) as r:
            r.success()
            info = json.loads(r.content)
        self.environment.stats.entries.pop(("info", "GET"), None)
        self.work = Workload.get(self.environment.parsed_options, info["image_size"], info["embedding_dim"])
        self.bodies: dict[tuple[str, int, int], bytes] = {}

    @task
    def infer(self) -> None:
        model, batch = self.work.draw()
        key = (model, batch, self.work.rng.randrange(PAYLOAD_VARIANTS))
        if key not in self.bodies:
            self.bodies[key] = self.work.batch(*key).tobytes()
        path = "/classify" if model == "classify" else "/search"
        name = f"{model} b={batch}"
        start = time.perf_counter()
        with self.client.post(
            f"{path}?n={batch}",
            data=self.bodies[key],
            headers={"Content-Type": "application/octet-stream"},
            name=name,
            catch_response=True,
        ) as r:
            content = r.content
            ok = r.status_code == 200
            if not ok:
                r.failure(f"HTTP {r.status_code}: {content[:200]!r}")
            elif (rows := len(json.loads(content)["class_ids"])) != batch:
                ok = False
                r.failure(f"expected {batch} rows, got {rows}")
            _observe("POST", name, start, ok)
