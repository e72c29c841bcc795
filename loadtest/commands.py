"""`megaclass loadtest ...` subcommands (argparse wiring; the work is imported lazily)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_perf(args: argparse.Namespace) -> int:
    from megaclass.loadtest.perf import PerfAnalyzerError, run_perf, write_csv

    shapes = dict(s.split(":", 1) for s in args.shape)
    shapes = {k: [int(d) for d in v.split(",")] for k, v in shapes.items()}
    if not shapes:
        shapes = {"IMAGE": [1, 32, 32]} if args.model == "classify" else {}
    try:
        points = run_perf(
            args.model,
            args.url,
            protocol=args.protocol,
            concurrency=[int(c) for c in args.concurrency.split(",")],
            batch_size=args.batch_size,
            shapes=shapes,
            measurement_ms=args.measurement_ms,
        )
    except PerfAnalyzerError as exc:
        print(f"megaclass loadtest perf: {exc}", file=sys.stderr)
        return 1
    print(f"{'concurrency':>11} {'infer/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for p in points:
        print(
            f"{p.concurrency:>11} {p.throughput:>10.1f} {p.p50_us / 1e3:>8.2f} {p.p95_us / 1e3:>8.2f} {p.p99_us / 1e3:>8.2f}"
        )
    if args.out:
        write_csv(points, Path(args.out))
        print(f"CSV written to {args.out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `loadtest perf` (and friends) on the top-level subparsers."""
    lt = sub.add_parser("loadtest", help="load tests").add_subparsers(dest="loadtest", required=True)
    p = lt.add_parser("perf", help="perf_analyzer concurrency sweep")
    p.add_argument("--model", default="classify")
    p.add_argument("--url", default="127.0.0.1:8001")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    p.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--shape", action="append", default=[], help="NAME:d1,d2,... for inputs with variable dims")
    p.add_argument("--measurement-ms", type=int, default=3000)
    p.add_argument("--out", default=None, help="write the sweep as CSV")
    p.set_defaults(func=cmd_perf)
