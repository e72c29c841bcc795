"""Start tritonserver on loopback and the validating front on the public address in front of it.

`megaclass serve` and the serving images (`python -m megaclass.python_backend.server`) do this by
default (`ServingConfig.guard`): a client never reaches Triton's parsers with a request the front has
not checked. Triton's own ports are on 127.0.0.1, for admins and the watchdog on the same host.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megaclass.python_backend.server.security import SecurityError, check_exposure
from megaclass.python_backend.server.triton_server import (
    ServerUrls,
    TritonError,
    TritonServer,
    free_port,
    port_is_free,
    start_server,
)
from megaclass.python_backend.serving.config import RequestLimits

LOOPBACK = "127.0.0.1"


@dataclass
class GuardedServer(ServerUrls):
    """tritonserver behind the front: the public URLs are the front's."""

    server: TritonServer
    guard: subprocess.Popen
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def log_path(self) -> Path:
        return self.server.log_path

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop the front, then the server; the server's exit code."""
        self.guard.terminate()
        try:
            self.guard.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.guard.kill()
        return self.server.stop(timeout=timeout)


def start_guarded_server(
    model_repository: Path,
    *,
    host: str = LOOPBACK,
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    limits: RequestLimits | None = None,
    ready_timeout_s: float = 60.0,
    **server_args: Any,
) -> GuardedServer:
    """`start_server` on free loopback ports, then the front on `host` with the given ports.

    The front exposes what Triton serves, so explicit model control on a non-loopback `host` without
    an admin key is refused here just as `start_server` refuses it (security.py)."""
    try:
        check_exposure(
            host, server_args.get("explicit", False), server_args.get("admin_key"), server_args.get("insecure", False)
        )
    except SecurityError as exc:
        raise TritonError(str(exc)) from None
    for name, port in (("HTTP", http_port), ("gRPC", grpc_port), ("metrics", metrics_port)):
        if not port_is_free(host, port):
            raise TritonError(
                f"{name} port {port} on {host} is already in use; choose another with --{name.lower()}-port"
            )
    inner = start_server(
        Path(model_repository), host=LOOPBACK, http_port=free_port(), grpc_port=free_port(),
        metrics_port=free_port(), **server_args,
    )  # fmt: skip
    cmd = [
        sys.executable, "-m", "megaclass.python_backend.server.guard", f"--host={host}",
        f"--http-port={http_port}", f"--grpc-port={grpc_port}", f"--metrics-port={metrics_port}",
        f"--upstream-http={inner.http_url}", f"--upstream-grpc={inner.grpc_url}",
        f"--upstream-metrics={LOOPBACK}:{inner.metrics_port}", f"--limits={json.dumps(dataclasses.asdict(limits or RequestLimits()))}",
    ]  # fmt: skip
    guard = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, start_new_session=True)
    guarded = GuardedServer(inner, guard, host, http_port, grpc_port, metrics_port)
    try:
        _wait_ready(guarded, ready_timeout_s)
    except BaseException:
        guarded.stop(timeout=10)
        raise
    return guarded


def _wait_ready(guarded: GuardedServer, timeout_s: float) -> None:
    connect = LOOPBACK if guarded.host in ("0.0.0.0", "::") else guarded.host
    url = f"http://{connect}:{guarded.http_port}/v2/health/ready"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if guarded.guard.poll() is not None:
            raise TritonError(f"the validating front exited with code {guarded.guard.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TritonError(f"the validating front was not ready on {url} within {timeout_s:.0f} s")


def add_guard_arg(p: argparse.ArgumentParser) -> None:
    """--no-guard: serve tritonserver's own ports directly (trusted networks only)."""
    p.add_argument(
        "--no-guard",
        dest="no_guard",
        action="store_true",
        help="no validating front: clients reach tritonserver's parsers directly, which one hostile request "
        "can crash (docs/reliability.md); for trusted networks only (default: off, the front is on)",
    )
