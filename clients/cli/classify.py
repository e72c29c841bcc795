"""`megaclass classify`: image files through the `classify` ensemble, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys

from megaclass.clients.cli.common import Subparsers


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


def register(sub: Subparsers) -> None:
    """`megaclass classify`."""
    p = sub.add_parser("classify", help="classify image files through the classify ensemble")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...) to classify")
    p.add_argument("--url", default="127.0.0.1:8001", help="server address, host:port (default: 127.0.0.1:8001)")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc", help="protocol of --url (default: grpc)")
    p.add_argument("--top-k", type=int, default=5, help="classes to return per image (default: 5)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="cosine score below which the answer is <unknown> (default: none, always a class)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="deadline of each request, seconds (default: 30.0)")
    p.add_argument(
        "--retries", type=int, default=3, help="retries with back-off while the server is unavailable (default: 3)"
    )
    p.add_argument(
        "--shared-memory",
        action="store_true",
        help="send tensors through system shared memory; the server must be on this host (default: off)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (default: off)")
    p.set_defaults(func=cmd_classify)
