"""The `megaclass` command: one entry point, one subcommand per job.

Subcommands import their modules lazily so that `megaclass classify` does not pay for torch.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from megaclass.export.config import load_config


def _add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--http-port", type=int, default=None)
    p.add_argument("--grpc-port", type=int, default=None)
    p.add_argument("--metrics-port", type=int, default=None)


def _serving_overrides(args: argparse.Namespace) -> dict:
    keys = {
        "host": args.host,
        "http_port": args.http_port,
        "grpc_port": args.grpc_port,
        "metrics_port": args.metrics_port,
    }
    return {k: v for k, v in keys.items() if v is not None}


def cmd_demo(args: argparse.Namespace) -> int:
    from megaclass.clients.cli.demo import run_demo

    overrides: dict = {"serving": _serving_overrides(args)}
    if args.max_classes is not None:
        overrides["glyphs"] = {"max_classes": args.max_classes}
    if args.minutes is not None:
        overrides["train"] = {"max_minutes": args.minutes}
    cfg = load_config(args.config, overrides, defaults="demo")
    return run_demo(cfg, keep_serving=args.keep_serving, repository=Path(args.repository))


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def cmd_serve(args: argparse.Namespace) -> int:
    from megaclass.python_backend.server.triton_server import TritonError, start_server

    s = load_config(args.config, {"serving": _serving_overrides(args)}).serving
    try:
        server = start_server(
            Path(args.repository),
            host=s.host,
            http_port=s.http_port,
            grpc_port=s.grpc_port,
            metrics_port=s.metrics_port,
            explicit=args.explicit,
            ready_timeout_s=s.ready_timeout_s,
            shm_default_byte_size=s.shm_default_byte_size,
            admin_key=s.admin_key or os.environ.get("MEGACLASS_ADMIN_KEY"),
        )
    except TritonError as exc:
        print(f"megaclass serve: {exc}", file=sys.stderr)
        return 1
    print(f"Triton is ready: HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {server.metrics_url}")
    print(f"server log: {server.log_path}   (Ctrl-C or SIGTERM stops it)")
    _wait_for_signal()
    code = server.stop()
    print(f"server stopped (exit code {code})")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from megaclass.clients.client import Client, MegaclassError

    try:
        with Client(
            args.url, args.protocol, timeout_s=args.timeout, retries=args.retries, shared_memory=args.shared_memory
        ) as client:
            result = client.classify(args.images, top_k=args.top_k, threshold=args.threshold)
    except (MegaclassError, OSError, ValueError) as exc:
        print(f"megaclass classify: {exc}", file=sys.stderr)
        return 1
    rows = [
        {
            "image": img,
            "predictions": [p.__dict__ for p in result.predictions(i)],
            "index_version": result.index_versions[i],
        }
        for i, img in enumerate(args.images)
    ]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"megaclass classify ({args.protocol} {args.url})")
    table.add_column("image")
    table.add_column("rank", justify="right")
    table.add_column("class id", justify="right")
    table.add_column("label")
    table.add_column("score", justify="right")
    for row in rows:
        for rank, p in enumerate(row["predictions"], 1):
            table.add_row(
                row["image"] if rank == 1 else "",
                str(rank),
                str(p["class_id"]),
                p["label"],
                f"{p['score']:.3f}",
            )
    Console().print(table)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from megaclass.export.repository.publish import PublishError, load_models, publish_encoder, publish_index

    if not (args.index or args.onnx):
        print("megaclass publish: give --index DIR and/or --onnx FILE", file=sys.stderr)
        return 2
    try:
        done = []
        if args.onnx:
            done.append(publish_encoder(Path(args.repository), Path(args.onnx), keep=args.keep))
        if args.index:
            done.append(publish_index(Path(args.repository), Path(args.index), keep=args.keep))
        for p in done:
            print(f"published {p.model} version {p.version} in {args.repository}")
        if args.load:
            load_models(args.url, [p.model for p in done], args.protocol, args.admin_key)
            print(f"loaded on {args.url}: {', '.join(p.model for p in done)}")
    except PublishError as exc:
        print(f"megaclass publish: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from megaclass.export.repository.publish import PublishError, load_models, rollback

    try:
        version = rollback(Path(args.repository), args.model)
        print(f"{args.model}: newest version is now {version}")
        if args.load:
            load_models(args.url, [args.model], args.protocol, args.admin_key)
            print(f"reloaded {args.model} on {args.url}")
    except PublishError as exc:
        print(f"megaclass rollback: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repository", default="model_repository")
    p.add_argument("--load", action="store_true", help="load it on a server in explicit model-control mode")
    p.add_argument("--url", default="127.0.0.1:8001")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    p.add_argument("--admin-key", default=None, help="key for a restricted model-control API (or MEGACLASS_ADMIN_KEY)")


def cmd_bench_batching(args: argparse.Namespace) -> int:
    from megaclass.loadtest.benchmarks.batching_bench import run_batching_bench

    cfg = load_config(args.config, defaults="demo")
    concurrency = tuple(int(c) for c in args.concurrency.split(","))
    doc = Path(args.doc) if args.doc else None
    run_batching_bench(cfg, Path(args.out), concurrency, args.measurement_ms, doc, args.stability_percent)
    return 0


def _subcommands(sub: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """The subcommands of group `name` (e.g. `bench`), created if no area has made it yet."""
    if name not in sub.choices:
        sub.add_parser(name, help=help).add_subparsers(dest=name, required=True)
    return sub.choices[name]._subparsers._group_actions[0]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megaclass", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="TOML configuration file (every field optional)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="glyphs -> train -> ONNX -> index -> Triton -> classify, end to end")
    p.add_argument("--keep-serving", action="store_true", help="leave the server up and print how to call it")
    p.add_argument("--max-classes", type=int, default=None, help="cap the number of glyph classes")
    p.add_argument("--minutes", type=float, default=None, help="training time budget")
    p.add_argument("--repository", default="model_repository", help="model repository to write and serve")
    _add_server_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="start the bundled tritonserver on a model repository")
    p.add_argument("--repository", default="model_repository")
    p.add_argument("--explicit", action="store_true", help="explicit model control (load/unload through the API)")
    _add_server_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("classify", help="classify image files through the classify ensemble")
    p.add_argument("images", nargs="+")
    p.add_argument("--url", default="127.0.0.1:8001")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--threshold", type=float, default=None, help="below this cosine score answer <unknown>")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("--retries", type=int, default=3, help="retries with back-off while the server is unavailable")
    p.add_argument("--shared-memory", action="store_true", help="send tensors through system shared memory (same host)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("publish", help="publish a new encoder and/or index version (atomically)")
    p.add_argument("--index", default=None, help="index directory to publish as the next retriever version")
    p.add_argument("--onnx", default=None, help="ONNX encoder to publish as the next encoder version")
    p.add_argument("--keep", type=int, default=3, help="versions to keep per model")
    _add_load_args(p)
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("rollback", help="retire the newest version of a model")
    p.add_argument("--model", default="retriever", choices=["encoder", "retriever"])
    _add_load_args(p)
    p.set_defaults(func=cmd_rollback)

    # Each area registers its own subcommands (argparse only; work is imported lazily).
    from megaclass.clients.cli.loadtest import add_commands as add_loadtest_commands

    add_loadtest_commands(sub)
    from megaclass.loadtest.soak import add_commands as add_soak_commands

    add_soak_commands(sub)
    from megaclass.clients.cli.scaleout import add_commands as add_scaleout_commands

    add_scaleout_commands(sub)
    from megaclass.clients.cli.train import add_commands as add_export_commands

    add_export_commands(sub)
    bench = _subcommands(sub, "bench", "benchmarks that print tables and save plots")
    from megaclass.clients.cli.index import add_commands as add_index_commands

    add_index_commands(sub, bench)
    p = bench.add_parser("batching", help="dynamic batching on vs off: perf_analyzer sweeps of classify, retriever")
    p.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    p.add_argument("--measurement-ms", type=int, default=3000)
    p.add_argument("--out", default=".cache/megaclass/bench/batching")
    p.add_argument("--stability-percent", type=float, default=25.0, help="perf_analyzer's stability bound")
    p.add_argument("--doc", default="docs/benchmarks.md", help="Markdown file to update ('' for none)")
    p.set_defaults(func=cmd_bench_batching)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
