"""`megaclass scaleout`: the local replica + failover run (argparse wiring; the work is in
`loadtest/scaleout/`, imported lazily)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from megaclass.clients.cli.common import Subparsers


def cmd_scaleout(args: argparse.Namespace) -> int:
    from megaclass.loadtest.scaleout.config import ScaleoutConfig
    from megaclass.loadtest.scaleout.nginx import NginxError
    from megaclass.loadtest.scaleout.report import format_report
    from megaclass.loadtest.scaleout.run import run_scaleout
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


def register(sub: Subparsers) -> None:
    """`megaclass scaleout`."""
    p = sub.add_parser(
        "scaleout",
        help="replicas behind nginx on loopback, driven by Locust: 1 vs N replicas, then kill one (failover)",
    )
    p.add_argument(
        "--replicas", type=int, default=2, help="Triton replicas to start, 2-3 on a small machine (default: 2)"
    )
    p.add_argument("--users", type=int, default=16, help="closed-loop Locust users, concurrent requests (default: 16)")
    p.add_argument("--phase-seconds", type=float, default=15.0, help="load time of each phase, seconds (default: 15.0)")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc", help="protocol of the load (default: grpc)")
    p.add_argument("--batch", type=int, default=1, help="images per request (default: 1)")
    p.add_argument(
        "--timeout", type=float, default=10.0, help="client deadline of every request, seconds (default: 10.0)"
    )
    p.add_argument(
        "--kill-after",
        type=float,
        default=None,
        help="failover: kill a replica this many seconds into the phase (default: half of --phase-seconds)",
    )
    p.add_argument("--no-direct", action="store_true", help="skip the phase without nginx (default: off)")
    p.add_argument("--no-scaling", action="store_true", help="skip the 1 .. N replica phases (default: off)")
    p.add_argument(
        "--repeats", type=int, default=1, help="run the 1 .. N phases this many times, interleaved (default: 1)"
    )
    p.add_argument("--no-failover", action="store_true", help="skip the failover phase (default: off)")
    p.add_argument(
        "--repository", default=None, help="model repository to serve (default: none, build the tiny test repository)"
    )
    p.add_argument("--out", default="runs/scaleout", help="where results go, a folder per run (default: runs/scaleout)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of Markdown (default: off)")
    p.set_defaults(func=cmd_scaleout)
