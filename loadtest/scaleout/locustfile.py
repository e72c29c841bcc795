"""Locust users for the scale-out run (`loadtest/scaleout/run.py` starts Locust on this file).

Closed loop: each user sends one `classify` request (gRPC or HTTP), waits for the answer, and
sends the next. Every request is bounded by a client deadline, so a request that would hang
ends as a DEADLINE_EXCEEDED / timeout error instead. Besides Locust's own statistics each
process writes one line per request (end time, latency, outcome) and the number of requests
still in flight when the run stopped, so the failover analysis can place every error on the
time line. Settings come from environment variables (set by `scaleout.py`):

MEGACLASS_SO_PROTOCOL  grpc | http          MEGACLASS_SO_BATCH      images per request
MEGACLASS_SO_MODEL     model to call         MEGACLASS_SO_TIMEOUT_S  client deadline (s)
MEGACLASS_SO_EVENTS    per-request log path (.<pid> is appended)
"""

from __future__ import annotations

import json
import os
import time

from grpc.experimental import gevent as grpc_gevent
from locust import User, constant, events, task

grpc_gevent.init_gevent()  # before any channel: gRPC calls then yield to other users

import numpy as np  # noqa: E402

PROTOCOL = os.environ.get("MEGACLASS_SO_PROTOCOL", "grpc")
MODEL = os.environ.get("MEGACLASS_SO_MODEL", "classify")
BATCH = int(os.environ.get("MEGACLASS_SO_BATCH", "1"))
TIMEOUT_S = float(os.environ.get("MEGACLASS_SO_TIMEOUT_S", "10"))
EVENTS_PATH = os.environ.get("MEGACLASS_SO_EVENTS")

_records: list[tuple[float, float, str]] = []  # (unix end time, latency ms, "ok" or error kind)
_in_flight = 0


def error_kind(exc: BaseException) -> str:
    """A short, countable name for a failure: the gRPC status, the HTTP status, or the type."""
    status = getattr(exc, "status", None)
    status = status() if callable(status) else status
    if status:
        return str(status).replace("StatusCode.", "")
    text = str(exc).lower()
    if "timed out" in text or "timeout" in text:
        return "TIMEOUT"
    return type(exc).__name__


class ClassifyUser(User):
    """One connection to the load balancer, one request at a time."""

    wait_time = constant(0)

    def on_start(self) -> None:
        if PROTOCOL == "grpc":
            import tritonclient.grpc as tc

            self.triton = tc.InferenceServerClient(self.host)
            config = self.triton.get_model_config(MODEL, as_json=True, client_timeout=TIMEOUT_S)["config"]
        else:
            import tritonclient.http as tc

            self.triton = tc.InferenceServerClient(self.host, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S)
            config = self.triton.get_model_config(MODEL)
        self.tc = tc
        (spec,) = config["input"][:1]
        dims = [int(d) for d in spec["dims"]]
        rng = np.random.default_rng(abs(hash(id(self))) % 2**32)
        self.name = spec["name"]
        self.batch = rng.random((BATCH, *dims), dtype=np.float32)
        self.outputs = [tc.InferRequestedOutput(o["name"]) for o in config["output"]]

    def on_stop(self) -> None:
        self.triton.close()

    @task
    def classify(self) -> None:
        global _in_flight
        x = self.tc.InferInput(self.name, list(self.batch.shape), "FP32")
        x.set_data_from_numpy(self.batch)
        kwargs = {"client_timeout": TIMEOUT_S} if PROTOCOL == "grpc" else {}
        exc: BaseException | None = None
        _in_flight += 1  # not decremented when Locust kills the user mid-request: that one hung
        start = time.perf_counter()
        try:
            self.triton.infer(MODEL, [x], outputs=self.outputs, **kwargs)
        except Exception as e:  # noqa: BLE001 - every failure is counted, none stops the user
            exc = e
        _in_flight -= 1
        latency_ms = (time.perf_counter() - start) * 1000
        _records.append((time.time(), latency_ms, "ok" if exc is None else error_kind(exc)))
        self.environment.events.request.fire(
            request_type=PROTOCOL,
            name=MODEL,
            response_time=latency_ms,
            response_length=0,
            exception=exc,
            context={},
        )


@events.test_stop.add_listener
def _write_records(environment, **_kwargs) -> None:
    """After the users stopped: each finished its request (within --stop-timeout) or was killed."""
    if not EVENTS_PATH:
        return
    with open(f"{EVENTS_PATH}.{os.getpid()}", "w") as f:  # one file per Locust process
        f.write(json.dumps({"in_flight_at_stop": _in_flight, "requests": len(_records)}) + "\n")
        for t, ms, kind in _records:
            f.write(f"{t:.4f} {ms:.3f} {kind}\n")
