"""What the command groups share: the type they register on, server address options, perf_analyzer's
sweep options, number lists."""

from __future__ import annotations

import argparse
from typing import Any, Protocol


class Subparsers(Protocol):
    """The object `ArgumentParser.add_subparsers()` returns, as far as a command group uses it."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


def add_server_args(p: argparse.ArgumentParser) -> None:
    """--host and the three ports of a Triton server (unset: the configuration's `serving` values)."""
    p.add_argument(
        "--host", default=None, help="address to bind; 0.0.0.0 exposes the server (default: serving.host, 127.0.0.1)"
    )
    p.add_argument("--http-port", type=int, default=None, help="HTTP port (default: serving.http_port, 8000)")
    p.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default: serving.grpc_port, 8001)")
    p.add_argument(
        "--metrics-port", type=int, default=None, help="Prometheus metrics port (default: serving.metrics_port, 8002)"
    )


def add_perf_analyzer_args(p: argparse.ArgumentParser) -> None:
    """--concurrency, --measurement-ms and --stability-percent of a perf_analyzer sweep."""
    p.add_argument(
        "--concurrency",
        default="1,2,4,8,16,32,64",
        help="concurrent requests to sweep, comma-separated (default: 1,2,4,8,16,32,64)",
    )
    p.add_argument(
        "--measurement-ms",
        type=int,
        default=3000,
        help="perf_analyzer's measurement window, milliseconds (default: 3000)",
    )
    p.add_argument(
        "--stability-percent",
        type=float,
        default=25.0,
        help="perf_analyzer's stability bound, percent; loosen on a busy machine (default: 25.0)",
    )


def serving_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The `serving` settings given by `add_server_args` options, for `load_config`."""
    keys = {
        "host": args.host,
        "http_port": args.http_port,
        "grpc_port": args.grpc_port,
        "metrics_port": args.metrics_port,
    }
    return {k: v for k, v in keys.items() if v is not None}


def ints(text: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32] (empty items skipped)."""
    return [int(x) for x in text.split(",") if x.strip()]
