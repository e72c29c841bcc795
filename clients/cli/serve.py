"""`megaclass serve`: the bundled tritonserver on a model repository until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
from pathlib import Path

from megaclass.clients.cli.common import Subparsers, add_server_args, serving_overrides
from megaclass.python_backend.server.__main__ import add_repository_args
from megaclass.python_backend.server.guard.launch import add_guard_arg
from megaclass.python_backend.server.security import add_security_args


def cmd_serve(args: argparse.Namespace) -> int:
    from megaclass.export.config import load_config
    from megaclass.python_backend.server.__main__ import serve_until_stopped

    overrides = serving_overrides(args) | ({"admin_key_file": args.admin_key_file} if args.admin_key_file else {})
    overrides |= {"guard": False} if args.no_guard else {}
    serving = load_config(args.config, {"serving": overrides}).serving
    return serve_until_stopped(Path(args.repository), serving, explicit=args.explicit, insecure=args.insecure)


def register(sub: Subparsers) -> None:
    """`megaclass serve` (the serving images run the same as `python -m megaclass.python_backend.server`)."""
    p = sub.add_parser("serve", help="start the bundled tritonserver on a model repository")
    add_repository_args(p)
    add_server_args(p)
    add_guard_arg(p)
    add_security_args(p)
    p.set_defaults(func=cmd_serve)
