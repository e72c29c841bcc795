"""`megaclass publish | rollback`: new encoder and index versions into a live repository, atomically."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megaclass.clients.cli.common import Subparsers


def cmd_publish(args: argparse.Namespace) -> int:
    from megaclass.export.repository.publish import PublishError, load_models, publish_encoder, publish_index
    from megaclass.python_backend.server.security import SecurityError

    if not (args.index or args.onnx):
        print("megaclass publish: give --index DIR and/or --onnx FILE", file=sys.stderr)
        return 2
    try:
        done, promote_it = [], args.promote or args.load
        if args.onnx:
            done.append(publish_encoder(Path(args.repository), Path(args.onnx), keep=args.keep, promote_it=promote_it))
        if args.index:
            done.append(publish_index(Path(args.repository), Path(args.index), keep=args.keep, promote_it=promote_it))
        for p in done:
            state = "serving pointer moved to it" if promote_it else "not serving: --promote or --load to serve it"
            print(f"published {p.model} version {p.version} in {args.repository} ({state})")
        _record(args, done)
        if args.load:
            load_models(args.url, [p.model for p in done], args.protocol, _admin_key(args), Path(args.repository))
            print(f"loaded on {args.url}: {', '.join(p.model for p in done)}")
    except (PublishError, SecurityError) as exc:
        print(f"megaclass publish: {exc}", file=sys.stderr)
        return 1
    return 0


def _record(args: argparse.Namespace, done: list) -> None:
    """The publish run in MLflow; a published index is registered with the serving alias."""
    from megaclass.export.config import load_config
    from megaclass.export.lifecycle.record import record_publish

    cfg = load_config(args.config)
    index = Path(args.repository) / "retriever" / str(done[-1].version) / "index" if args.index else None
    record_publish(cfg, Path(args.repository), {p.model: p.version for p in done}, index)


def cmd_rollback(args: argparse.Namespace) -> int:
    from megaclass.export.repository.publish import PublishError, load_models, rollback
    from megaclass.python_backend.server.security import SecurityError

    try:
        version = rollback(Path(args.repository), args.model)
        print(f"{args.model}: the serving pointer is now version {version}")
        if args.load:
            load_models(args.url, [args.model], args.protocol, _admin_key(args), Path(args.repository))
            print(f"reloaded {args.model} on {args.url}")
    except (PublishError, SecurityError) as exc:
        print(f"megaclass rollback: {exc}", file=sys.stderr)
        return 1
    return 0


def _admin_key(args: argparse.Namespace) -> str | None:
    """The admin key from --admin-key-file, else the environment (never from the command line)."""
    from megaclass.python_backend.server.security import resolve_admin_key

    return resolve_admin_key(args.admin_key_file)


def _add_load_args(p: argparse.ArgumentParser) -> None:
    """The repository, and the server that loads what changed in it."""
    p.add_argument(
        "--repository", default="model_repository", help="model repository folder (default: model_repository)"
    )
    p.add_argument(
        "--load",
        action="store_true",
        help="then load the new version on the server at --url, in explicit model-control mode (default: off)",
    )
    p.add_argument(
        "--url", default="127.0.0.1:8001", help="server address for --load, host:port (default: 127.0.0.1:8001)"
    )
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc", help="protocol of --url (default: grpc)")
    p.add_argument(
        "--admin-key-file",
        default=None,
        help="file holding the key of a restricted model-control API (default: $MEGACLASS_ADMIN_KEY_FILE, "
        "else $MEGACLASS_ADMIN_KEY; never on the command line)",
    )


def register(sub: Subparsers) -> None:
    """`megaclass publish` and `megaclass rollback`."""
    p = sub.add_parser("publish", help="publish a new encoder and/or index version (atomically)")
    p.add_argument(
        "--index", default=None, help="index folder to publish as the next retriever version (default: none)"
    )
    p.add_argument("--onnx", default=None, help="ONNX encoder to publish as the next encoder version (default: none)")
    p.add_argument(
        "--keep",
        type=int,
        default=3,
        help="versions to keep per model; older ones are deleted, never the serving or rollback one (default: 3)",
    )
    p.add_argument(
        "--promote",
        action="store_true",
        help="point the model's config at the new version, served from the next load or restart; --load implies it "
        "(default: off, published but not served)",
    )
    _add_load_args(p)
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("rollback", help="point a model back at the version it served before")
    p.add_argument(
        "--model",
        default="retriever",
        choices=["encoder", "retriever"],
        help="model whose serving pointer goes back (default: retriever)",
    )
    _add_load_args(p)
    p.set_defaults(func=cmd_rollback)
