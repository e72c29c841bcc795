"""`python -m megaclass.python_backend.server.guard`: the validating front as its own process.

HTTP, gRPC and metrics listeners on the public address, forwarding to a tritonserver on loopback;
the limits come as the JSON of a `RequestLimits`. launch.py starts it; it stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal

from aiohttp import web

from megaclass.python_backend.server.guard.grpc_front import start_grpc_front
from megaclass.python_backend.server.guard.http_front import make_http_app, make_metrics_app
from megaclass.python_backend.serving.config import RequestLimits


async def run(args: argparse.Namespace) -> None:
    limits = RequestLimits(**json.loads(args.limits))
    runners = []
    for app, port in ((make_http_app(args.upstream_http, limits), args.http_port),
                      (make_metrics_app(args.upstream_metrics), args.metrics_port)):  # fmt: skip
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, args.host, port).start()
        runners.append(runner)
    grpc_server, front = await start_grpc_front(
        args.host, args.grpc_port, args.upstream_grpc, args.upstream_http, limits
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"guard ready: HTTP {args.host}:{args.http_port} gRPC {args.host}:{args.grpc_port}", flush=True)
    await stop.wait()
    await grpc_server.stop(grace=2)
    await front.close()
    for runner in runners:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m megaclass.python_backend.server.guard", description=__doc__.splitlines()[0]
    )
    p.add_argument("--host", required=True, help="public address to bind (required)")
    p.add_argument("--http-port", type=int, required=True, help="public HTTP port (required)")
    p.add_argument("--grpc-port", type=int, required=True, help="public gRPC port (required)")
    p.add_argument("--metrics-port", type=int, required=True, help="public Prometheus port (required)")
    p.add_argument("--upstream-http", required=True, help="tritonserver's HTTP host:port (required)")
    p.add_argument("--upstream-grpc", required=True, help="tritonserver's gRPC host:port (required)")
    p.add_argument("--upstream-metrics", required=True, help="tritonserver's metrics host:port (required)")
    p.add_argument("--limits", default="{}", help="RequestLimits as JSON (default: {}, the defaults)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    main()
