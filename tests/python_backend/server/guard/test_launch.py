"""The guarded launcher's handle: its client URLs are the front's public ports, not tritonserver's."""

from __future__ import annotations

from pathlib import Path

from megaclass.python_backend.server.guard.launch import GuardedServer
from megaclass.python_backend.server.triton_server import TritonServer


def test_guarded_urls_are_the_fronts_and_formatted_like_tritonservers():
    inner = TritonServer(None, "127.0.0.1", 40001, 40002, 40003, Path("repo"), Path("log"))
    guarded = GuardedServer(inner, None, "0.0.0.0", 8000, 8001, 8002)
    assert (guarded.http_url, guarded.grpc_url, guarded.metrics_url) == (
        "0.0.0.0:8000",
        "0.0.0.0:8001",
        "http://0.0.0.0:8002/metrics",
    )
    assert (inner.http_url, inner.grpc_url, inner.metrics_url) == (
        "127.0.0.1:40001",
        "127.0.0.1:40002",
        "http://127.0.0.1:40003/metrics",
    )
    assert guarded.log_path == Path("log")
