"""`megaclass refresh | lineage | pipeline`: the index's lifecycle; argparse wiring only.

- refresh:  catalogue -> diff, retrain?, index, tune?, evaluate, gate, publish (export/lifecycle/refresh.py)
- lineage:  INDEX_VERSION -> data, training run, encoder, index, published version (MLflow)
- pipeline: the same steps as an Airflow DAG file or a compiled Kubeflow pipeline; the run report
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from megaclass.clients.cli.common import Subparsers
from megaclass.export.config import load_config
from megaclass.export.lifecycle.steps import REFUSED


def _config(args: argparse.Namespace):
    overrides = {"work_dir": args.work_dir} if getattr(args, "work_dir", None) else {}
    return load_config(args.config, overrides)


def cmd_refresh(args: argparse.Namespace) -> int:
    from megaclass.export.lifecycle.refresh import RefreshError, RefreshRequest, run_refresh
    from megaclass.export.repository.publish import PublishError

    def path(p):
        return Path(p).resolve() if p else None

    req = RefreshRequest(
        catalog=path(args.catalog), repository=path(args.repository), encoder=path(args.encoder),
        checkpoint=path(args.checkpoint), url=args.url, protocol=args.protocol, admin_key=args.admin_key,
        force_retrain=args.retrain,
    )  # fmt: skip
    try:
        outcome = run_refresh(_config(args), req, until=args.step)
    except (RefreshError, PublishError, ValueError, OSError) as exc:
        print(f"megaclass refresh: {exc}", file=sys.stderr)
        return 1
    gate = outcome.decision
    if args.decision_file and gate is not None:
        Path(args.decision_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.decision_file).write_text("passed" if gate["passed"] else "refused")
    if args.json:
        print(json.dumps({"run_dir": str(outcome.run_dir), **{k: v for k, v in outcome.results.items()}}, default=str))
    if args.step == "publish":
        publish = outcome.results["publish"]
        print(f"refresh: {publish['summary']}  (steps in {outcome.run_dir})")
        if not publish["published"] and gate is not None and not gate["passed"]:
            return REFUSED
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from megaclass.export.lifecycle.lineage import LineageError, lineage

    cfg = _config(args)
    try:
        rows = lineage(cfg.tracking, cfg.work_dir, args.version)
    except LineageError as exc:
        print(f"megaclass lineage: {exc}", file=sys.stderr)
        return 1
    width = max(len(stage) for stage, _ in rows)
    for i, (stage, text) in enumerate(rows):
        print(f"{stage:>{width}}: {text}" + ("" if i == len(rows) - 1 else "\n" + " " * width + "  │"))
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    step_args = ["--catalog", args.catalog, "--repository", args.repository]
    if args.work_dir:
        step_args += ["--work-dir", args.work_dir]
    if args.target == "airflow":
        from megaclass.export.lifecycle.airflow_dag import write_dag

        out = write_dag(Path(args.out), step_args, megaclass=args.megaclass, schedule=args.schedule)
    elif args.target == "kfp":
        from megaclass.export.lifecycle.kfp_pipeline import compile_pipeline

        out = compile_pipeline(Path(args.out), image=args.image, catalog=args.catalog, repository=args.repository)
    else:
        from megaclass.export.lifecycle.report import write_report

        cfg = _config(args)
        out = write_report(cfg.tracking, cfg.work_dir, Path(args.out))
    print(f"{args.target}: {out}")
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--work-dir", default=None, help="cache and MLflow store folder (default: work_dir, .cache/megaclass)"
    )


def register(sub: Subparsers) -> None:
    """`megaclass refresh`, `lineage` and `pipeline`."""
    from megaclass.export.lifecycle.steps import STEP_NAMES

    p = sub.add_parser("refresh", help="refresh the serving index from a changed catalogue, behind a quality gate")
    p.add_argument(
        "--catalog", required=True, help="catalogue CSV/Parquet with split=train and split=query rows (required)"
    )
    p.add_argument("--repository", default="model_repository", help="model repository (default: model_repository)")
    p.add_argument("--encoder", default=None, help="candidate ONNX encoder (default: retrained, else the serving one)")
    p.add_argument(
        "--checkpoint", default=None, help="serving encoder's checkpoint.pt, to warm-start a retrain (default: none)"
    )
    p.add_argument("--retrain", action="store_true", help="retrain even when no retrain rule fires (default: off)")
    p.add_argument("--url", default=None, help="load the published version on this server, host:port (default: none)")
    p.add_argument("--protocol", choices=["grpc", "http"], default="grpc", help="protocol of --url (default: grpc)")
    p.add_argument("--admin-key", default=None, help="key of a restricted model-control API (default: none)")
    p.add_argument("--step", choices=STEP_NAMES, default="publish", help="run up to this step (default: publish, all)")
    p.add_argument(
        "--decision-file", default=None, help="write the gate's decision, passed|refused, here (default: none)"
    )
    p.add_argument("--json", action="store_true", help="print every step's result as JSON (default: off)")
    _add_common(p)
    p.set_defaults(func=cmd_refresh)

    p = sub.add_parser(
        "lineage", help="data -> training run -> encoder -> index -> published version of an INDEX_VERSION"
    )
    p.add_argument("version", help="INDEX_VERSION of an answer (e.g. 3:1a2b3c4d5e6f) or a retriever version")
    _add_common(p)
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser("pipeline", help="the refresh as an Airflow DAG or Kubeflow pipeline; the run report")
    p.add_argument("target", choices=["airflow", "kfp", "report"], help="what to write")
    p.add_argument("--out", required=True, help="DAG .py file, pipeline .yaml, or report folder (required)")
    p.add_argument("--catalog", default="catalog.csv", help="catalogue the tasks refresh from (default: catalog.csv)")
    p.add_argument("--repository", default="model_repository", help="model repository (default: model_repository)")
    p.add_argument(
        "--megaclass", default=".venv/bin/megaclass", help="airflow: the CLI tasks run (default: .venv/bin/megaclass)"
    )
    p.add_argument("--schedule", default="@daily", help="airflow: the DAG's schedule (default: @daily)")
    p.add_argument("--image", default="megaclass:cpu", help="kfp: the project's image (default: megaclass:cpu)")
    _add_common(p)
    p.set_defaults(func=cmd_pipeline)
