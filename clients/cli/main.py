"""The `megaclass` command: one entry point, one subcommand per job.

Each command group is a module of this package with a `register(subparsers)` function; they are
registered here, in the order `megaclass --help` lists them. Subcommands import their work lazily,
so that `megaclass classify` does not pay for torch.
"""

from __future__ import annotations

import argparse
import sys

from megaclass.clients.cli import (
    bench,
    classify,
    demo,
    index,
    lifecycle,
    loadtest,
    publish,
    scaleout,
    serve,
    train,
    tuples,
)

GROUPS = (demo, serve, classify, publish, loadtest, bench, scaleout, train, tuples, index, lifecycle)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megaclass", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        default=None,
        help="TOML configuration file; every field optional (default: none, the built-in settings)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
