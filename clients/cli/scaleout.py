"""`megaclass scaleout`: the local replica + failover run (argparse wiring; work imported lazily).

`add_commands(sub)` registers the `scaleout` subcommand on any subparsers object (the
top-level one gives `megaclass scaleout`, the `loadtest` one `megaclass loadtest scaleout`).
The same options work as `python -m megaclass.loadtest.scaleout.run`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replicas", type=int, default=2, help="Triton replicas to start (2-3 on a small machine)")
    p.add_argument("--users", type=int, default=16, help="closed-loop Locust users (concurrent requests)")
    p.add_argument("--phase-seconds", type=float, default=15.0, help="load time of each phase")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    p.add_argument("--batch", type=int, default=1, help="images per request")
    p.add_argument("--timeout", type=float, default=10.0, help="client deadline of every request (s)")
    p.add_argument("--kill-after", type=float, default=None, help="failover: kill a replica this many s in")
    p.add_argument("--no-direct", action="store_true", help="skip the phase without nginx")
    p.add_argument("--no-scaling", action="store_true", help="skip the 1 .. N replica phases")
    p.add_argument("--repeats", type=int, default=1, help="run the 1 .. N phases this many times, interleaved")
    p.add_argument("--no-failover", action="store_true", help="skip the failover phase")
    p.add_argument(
        "--repository", default=None, help="model repository to serve (default: build the tiny test repository)"
    )
    p.add_argument("--out", default="runs/scaleout", help="where results go (a folder per run)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of Markdown")


def run_from_args(args: argparse.Namespace) -> int:
    from megaclass.loadtest.scaleout.nginx import NginxError
    from megaclass.loadtest.scaleout.run import ScaleoutConfig, format_report, run_scaleout
    from megaclass.python_backend.server.triton_server import TritonError

    try:
        cfg = ScaleoutConfig(
            replicas=args.replicas,
            users=args.users,
            phase_s=args.phase_seconds,
            protocol=args.protocol,
            batch=args.batch,
            client_timeout_s=args.timeout,
            kill_after_s=args.kill_after,
            direct_baseline=not args.no_direct,
            scaling=not args.no_scaling,
            repeats=args.repeats,
            failover=not args.no_failover,
            repository=Path(args.repository) if args.repository else None,
            work_dir=Path(args.out),
        )
        report = run_scaleout(cfg, log=lambda msg: print(msg, file=sys.stderr))
    except (ValueError, NginxError, TritonError, RuntimeError) as exc:
        print(f"megaclass scaleout: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_json(), indent=2) if args.json else format_report(report))
    return 1 if any(p.hung for p in report.phases) else 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `scaleout` on the given subparsers."""
    p = sub.add_parser(
        "scaleout",
        help="replicas behind nginx on loopback, driven by Locust: 1 vs N replicas, then kill one (failover)",
    )
    add_arguments(p)
    p.set_defaults(func=run_from_args)
