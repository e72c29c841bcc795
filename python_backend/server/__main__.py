"""`python -m megaclass.python_backend.server`: tritonserver on a model repository until SIGINT or SIGTERM.

The serving images start the server this way, with nothing but `python_backend/` installed: not
the offline code that the `megaclass` command also loads. `megaclass serve` runs the same
`serve_until_stopped`, with the settings of a configuration file.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
from functools import partial
from pathlib import Path

from megaclass.python_backend.server.guard.launch import add_guard_arg, start_guarded_server
from megaclass.python_backend.server.security import SecurityError, add_security_args, resolve_admin_key
from megaclass.python_backend.server.triton_server import TritonError, start_server
from megaclass.python_backend.serving.config import ServingConfig


def wait_for_signal() -> None:
    """Block until SIGINT (Ctrl-C) or SIGTERM arrives."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def serve_until_stopped(
    repository: Path,
    serving: ServingConfig,
    *,
    explicit: bool = False,
    name: str = "megaclass serve",
    insecure: bool = False,
) -> int:
    """Start tritonserver on `repository`, say where it listens, stop it on SIGINT or SIGTERM.

    Returns 0, or 1 when it could not start (the reason on stderr, after `name`), among others
    explicit model control on a non-loopback host without an admin key and without `insecure`.
    The admin key is read from `serving.admin_key_file`, else as `security.resolve_admin_key` says.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        admin_key = resolve_admin_key(serving.admin_key_file)
        start = partial(start_guarded_server, limits=serving.limits) if serving.guard else start_server
        server = start(
            Path(repository),
            host=serving.host,
            http_port=serving.http_port,
            grpc_port=serving.grpc_port,
            metrics_port=serving.metrics_port,
            explicit=explicit,
            ready_timeout_s=serving.ready_timeout_s,
            shm_default_byte_size=serving.shm_default_byte_size,
            admin_key=admin_key,
            insecure=insecure,
        )
    except (TritonError, SecurityError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    front = " (behind the validating front; Triton itself on 127.0.0.1)" if serving.guard else ""
    print(f"Triton is ready: HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}{front}")
    print(f"server log: {server.log_path}   (Ctrl-C or SIGTERM stops it)")
    wait_for_signal()
    code = server.stop()
    print(f"server stopped (exit code {code})")
    return 0


def add_repository_args(p: argparse.ArgumentParser) -> None:
    """--repository and --explicit, shared by this launcher and `megaclass serve`."""
    p.add_argument(
        "--repository", default="model_repository", help="model repository folder to serve (default: model_repository)"
    )
    p.add_argument(
        "--explicit",
        action="store_true",
        help="explicit model control: models are loaded and unloaded through the API (default: off, all loaded)",
    )


def main(argv: list[str] | None = None) -> int:
    prog = "python -m megaclass.python_backend.server"
    s = ServingConfig()
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0].split(": ", 1)[1])
    add_repository_args(p)
    add_security_args(p)
    add_guard_arg(p)
    p.add_argument("--host", default=s.host, help=f"address to bind; 0.0.0.0 exposes the server (default: {s.host})")
    p.add_argument("--http-port", type=int, default=s.http_port, help=f"HTTP port (default: {s.http_port})")
    p.add_argument("--grpc-port", type=int, default=s.grpc_port, help=f"gRPC port (default: {s.grpc_port})")
    p.add_argument(
        "--metrics-port", type=int, default=s.metrics_port, help=f"Prometheus metrics port (default: {s.metrics_port})"
    )
    args = p.parse_args(argv)
    ports = {"http_port": args.http_port, "grpc_port": args.grpc_port, "metrics_port": args.metrics_port}
    serving = dataclasses.replace(
        s, host=args.host, admin_key_file=args.admin_key_file, guard=not args.no_guard, **ports
    )
    return serve_until_stopped(
        Path(args.repository), serving, explicit=args.explicit, name=prog, insecure=args.insecure
    )


if __name__ == "__main__":
    sys.exit(main())
