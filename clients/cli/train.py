"""`megaclass train | evaluate | prototypes | export`: argparse wiring only; the work is in the modules it calls.

- train:    data (glyphs; `--catalog FILE`; `--synthetic-classes N`) -> checkpoint.pt, metrics.jsonl, run.json
- evaluate: checkpoint -> report.json (precision@1, hit rate@k, MAP@R, cost-aware error per split)
            and prototypes_pca.png
- prototypes: checkpoint and/or catalogue -> prototypes.npy, class_ids.npy, labels.txt (`megaclass index build`
            reads these) and, with --index, a saved RoutedIndex
- export:   checkpoint -> encoder.onnx (FP32), encoder_fp16.onnx, export_report.json; `--tensorrt`: model.plan
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from megaclass.clients.cli.common import Subparsers
from megaclass.export.config import MegaclassConfig, load_config

LOSS_NAMES = ("triplet", "contrastive", "cosface", "arcface", "softmax")  # = losses.LOSSES (tested)
MINING_NAMES = ("easy", "semihard", "hard", "all")  # = losses.MINING (tested)


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    train = {
        "loss": args.loss,
        "mining": args.mining,
        "epochs": args.epochs,
        "max_minutes": args.minutes,
        "width": args.width,
        "seed": args.seed,
        "device": args.device,
    }
    out: dict[str, Any] = {"train": {k: v for k, v in train.items() if v is not None}}
    if args.max_classes is not None:
        out["glyphs"] = {"max_classes": args.max_classes}
    return out


def data_spec_from_args(args: argparse.Namespace):
    """The `DataSpec` named by --catalog / --synthetic-classes (glyphs when neither is given)."""
    from megaclass.export.data.data_sources import DataSpec

    if args.catalog and args.synthetic_classes:
        raise SystemExit("megaclass: give --catalog or --synthetic-classes, not both")
    if args.catalog:
        return DataSpec(kind="catalog", catalog=str(Path(args.catalog).resolve()), image_size=args.image_size)
    if args.synthetic_classes:
        return DataSpec(kind="synthetic", synthetic_classes=args.synthetic_classes)
    return DataSpec(kind="glyphs")


def cmd_train(args: argparse.Namespace) -> int:
    from megaclass.export.data.catalog import CatalogError
    from megaclass.export.train.from_spec import train_from_spec

    cfg = load_config(args.config, _train_overrides(args))
    spec = data_spec_from_args(args)
    if args.compare:
        return compare(args, cfg, spec)
    out = Path(args.out) if args.out else Path(cfg.work_dir) / "runs" / f"{cfg.train.loss}-{spec.kind}"
    try:
        result = train_from_spec(
            spec, cfg, out, resume=args.resume, progress=not args.quiet, epoch_eval=not args.no_epoch_eval
        )
    except (CatalogError, ValueError) as e:
        print(f"megaclass train: {e}", file=sys.stderr)
        return 1
    last = result.history[-1] if result.history else {}
    print(f"checkpoint: {result.checkpoint_path}  metrics: {out / 'metrics.jsonl'}  last epoch: {json.dumps(last)}")
    summary = memory_summary(cfg, result.checkpoint_path)
    (out / "train_summary.json").write_text(json.dumps({"last_epoch": last, **summary}, indent=2))
    print("peak memory: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    from megaclass.export.lifecycle.record import record_train

    record_train(cfg, spec, out, result.history, result.checkpoint_path)
    return 0


def memory_summary(cfg: MegaclassConfig, checkpoint: Path) -> dict[str, Any]:
    """Peak resident memory of this process (and CUDA), beside what a full C-way head would hold.

    A full head trained with Adam keeps weights, gradient and two moments: 4 x C x D float32.
    """
    import resource

    import torch

    out: dict[str, Any] = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    classes = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("classes")  # after the peak
    out["classes"] = 0 if classes is None else len(classes)
    out["full_head_adam_mib"] = round(4 * out["classes"] * cfg.train.embedding_dim * 4 / 2**20, 1)
    return out


def compare(args: argparse.Namespace, cfg: MegaclassConfig, spec: Any) -> int:
    """`megaclass train --compare`: every method of `compare_losses.METHODS`, one table."""
    import shlex

    from megaclass.export.train.compare_losses import compare_losses, markdown_table, update_doc

    out = Path(args.out) if args.out else Path(cfg.work_dir) / "runs" / f"compare-{spec.kind}"
    rows = compare_losses(cfg, spec, out, args.minutes_per_method, progress=not args.quiet)
    command = "megaclass " + shlex.join(sys.argv[1:])
    note = f"Data: {spec.kind}; at most {args.minutes_per_method} min per method" if args.minutes_per_method else ""
    table = markdown_table(rows, command, note)
    (out / "comparison.md").write_text(table + "\n")
    print(table)
    if args.doc:
        print(f"updated {update_doc(Path(args.doc), table)}")
    return 0


def _load_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _eval_config(args: argparse.Namespace, ckpt_path: Path | None) -> tuple[Any, MegaclassConfig]:
    """Data spec and configuration: the run's `run.json` when there is one, then the command-line flags."""
    from megaclass.export.data.data_sources import RUN_NAME, read_run

    if ckpt_path is not None and (ckpt_path.parent / RUN_NAME).exists():
        spec, cfg = read_run(ckpt_path.parent)
    else:
        spec, cfg = data_spec_from_args(args), load_config(args.config)
    if args.catalog or args.synthetic_classes:
        spec = data_spec_from_args(args)
    return spec, cfg


def cmd_evaluate(args: argparse.Namespace) -> int:
    from megaclass.export.data.catalog import CatalogError
    from megaclass.export.data.data_sources import eval_sets_from_spec, trained_classes_of
    from megaclass.export.evaluate.evaluation import (
        evaluate_sets,
        plot_prototypes_pca,
        softmax_head_metrics,
        write_report,
    )
    from megaclass.python_backend.serving.encoder_model import load_encoder

    ckpt_path = Path(args.checkpoint) if args.checkpoint else None
    spec, cfg = _eval_config(args, ckpt_path)
    ckpt = _load_checkpoint(ckpt_path) if ckpt_path else None
    model = load_encoder(ckpt_path) if ckpt_path else None
    if model is None and not (spec.kind == "catalog"):
        print("megaclass evaluate: give a checkpoint (or --catalog with precomputed embeddings)", file=sys.stderr)
        return 2
    try:
        sets = eval_sets_from_spec(spec, cfg, trained_classes_of(ckpt) if ckpt else None, progress=not args.quiet)
        if model is None and sets.enrol_x.dtype == "uint8":
            raise ValueError("an image catalogue needs a checkpoint to embed it")
    except (CatalogError, ValueError) as e:
        print(f"megaclass evaluate: {e}", file=sys.stderr)
        return 1
    ks = tuple(int(k) for k in args.ks.split(","))
    report, arrays = evaluate_sets(model, sets, cfg.index, ks, args.tail_max)
    report["checkpoint"] = str(ckpt_path) if ckpt_path else None
    if ckpt is not None:
        report["loss"] = ckpt["config"]["loss"]
        if ckpt["config"]["loss"] == "softmax":
            report["softmax_head"] = softmax_head_metrics(ckpt, model, sets, args.tail_max)
    out = Path(args.out) if args.out else (ckpt_path.parent if ckpt_path else Path(cfg.work_dir)) / "eval"
    png = plot_prototypes_pca(arrays["prototypes"], arrays["clusters"], out / "prototypes_pca.png")
    for name, m in report["splits"].items():
        print(f"{name:>17}: " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()))
    try:
        severity_png = report_severity(args.taxonomy, sets.query_y, arrays, report, out)
    except (OSError, ValueError) as e:
        print(f"megaclass evaluate: {e}", file=sys.stderr)
        return 1
    write_report(report, out / "report.json")
    from megaclass.export.lifecycle.record import record_evaluate

    record_evaluate(cfg, ckpt_path, report, out)  # after the report is written: it is stored with the run
    print(f"report: {out / 'report.json'}  plots: {png}, {severity_png}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from megaclass.export.config import replace
    from megaclass.export.convert.onnx_export import ParityError, export_onnx
    from megaclass.export.convert.tensorrt_engine import EngineProfile, build_engine, tensorrt_available
    from megaclass.python_backend.serving.encoder_model import load_encoder

    cfg = load_config(args.config)
    ckpt_path = Path(args.checkpoint)
    ckpt = _load_checkpoint(ckpt_path)
    if "image_size" not in ckpt:
        print(f"megaclass export: {ckpt_path} is not an image encoder (ONNX export takes images)", file=sys.stderr)
        return 1
    model, size = load_encoder(ckpt_path), int(ckpt["image_size"])
    out = Path(args.out) if args.out else ckpt_path.parent / "export"
    report: dict[str, Any] = {"checkpoint": str(ckpt_path)}
    try:
        for name, fp16 in (("fp32", False), ("fp16", True)):
            if fp16 and args.no_fp16:
                continue
            path = out / ("encoder_fp16.onnx" if fp16 else "encoder.onnx")
            rep = export_onnx(model, path, replace(cfg.export, fp16=fp16), size)
            report[name] = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(rep).items()}
            print(f"{name}: {path}  max |onnx - torch| by batch size: {rep.max_abs_diff} (atol {rep.atol:g})")
    except ParityError as e:
        print(f"megaclass export: {e}", file=sys.stderr)
        return 1
    if args.tensorrt:
        ok, why = tensorrt_available()
        if not ok:
            print(
                f"megaclass export: TensorRT is not available here ({why}); skipped the engine, ONNX files are written"
            )
            report["tensorrt"] = f"skipped: {why}"
        else:
            max_batch = args.max_batch or cfg.serving.encoder.max_batch_size
            try:
                profile = EngineProfile(args.min_batch, min(args.opt_batch, max_batch), max_batch)
                plan = build_engine(
                    out / "encoder.onnx",
                    out / "model.plan",
                    cfg.export.input_name,
                    (1, size, size),
                    profile,
                    fp16=not args.no_fp16,
                )
            except (RuntimeError, ValueError) as e:  # TensorRTUnavailable, a parse or build failure, a bad profile
                print(f"megaclass export: TensorRT engine not built ({e}); ONNX files are written", file=sys.stderr)
                report["tensorrt"] = f"failed: {e}"
                (out / "export_report.json").write_text(json.dumps(report, indent=2))
                return 1
            report["tensorrt"] = {"plan": str(plan), "profile": dataclasses.asdict(profile), "fp16": not args.no_fp16}
            print(
                f"TensorRT engine ({why}): {plan}  batch min/opt/max {profile.min_batch}/{profile.opt_batch}/{profile.max_batch}"
            )
    (out / "export_report.json").write_text(json.dumps(report, indent=2))
    print(f"report: {out / 'export_report.json'}")
    from megaclass.export.lifecycle.record import record_export

    record_export(cfg, ckpt_path, report, out)
    return 0


def cmd_prototypes(args: argparse.Namespace) -> int:
    import numpy as np

    from megaclass.export.data.catalog import CatalogError
    from megaclass.export.data.data_sources import build_prototypes
    from megaclass.python_backend.serving.encoder_model import load_encoder

    ckpt_path = Path(args.checkpoint) if args.checkpoint else None
    spec, cfg = _eval_config(args, ckpt_path)
    model = load_encoder(ckpt_path) if ckpt_path else None
    try:
        protos, ids, labels = build_prototypes(model, spec, cfg, progress=not args.quiet)
    except (CatalogError, ValueError) as e:
        print(f"megaclass prototypes: {e}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "prototypes.npy", protos)
    np.save(out / "class_ids.npy", ids)
    (out / "labels.txt").write_text("".join(labels.get(int(c), str(int(c))).replace("\n", " ") + "\n" for c in ids))
    print(f"{len(protos)} prototypes of {len(np.unique(ids))} classes, dimension {protos.shape[1]} -> {out}")
    if args.index:
        from megaclass.export.evaluate.taxonomy import routing_groups
        from megaclass.python_backend.index.routed_index import RoutedIndex

        groups, routing = routing_groups(cfg.index, ids, labels)  # index.taxonomy set: routed by taxonomy
        index = RoutedIndex.build(protos, ids, labels, cfg.index, groups=groups)
        index.save(Path(args.index), extra_manifest={"routing": routing})
        print(f"routed index ({index.num_classes} classes) -> {args.index}; serve it with `megaclass publish --index`")
    return 0


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--catalog",
        default=None,
        help="bring-your-own catalogue, CSV or Parquet; see export/data/catalog.py (default: none, the glyphs)",
    )
    p.add_argument(
        "--synthetic-classes",
        type=int,
        default=None,
        help="use the synthetic long-tailed set with this many classes (default: none, the glyphs)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="catalogue images are resized to this many pixels a side (default: glyphs.image_size, 32)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars (default: off)")


def _register_train(sub: Subparsers) -> None:
    p = sub.add_parser("train", help="train the encoder (glyphs, a catalogue, or the synthetic set)")
    p.add_argument(
        "--loss", choices=LOSS_NAMES, default=None, help="metric-learning loss (default: train.loss, triplet)"
    )
    p.add_argument(
        "--mining",
        choices=MINING_NAMES,
        default=None,
        help="which triplets or pairs the miner keeps (default: train.mining, semihard)",
    )
    p.add_argument("--epochs", type=int, default=None, help="passes over the training set (default: train.epochs, 8)")
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training time budget, minutes (default: train.max_minutes, none: no budget)",
    )
    p.add_argument(
        "--max-classes",
        type=int,
        default=None,
        help="cap the number of glyph classes (default: glyphs.max_classes, none: all)",
    )
    p.add_argument(
        "--width", type=int, default=None, help="encoder width, channels of the first conv (default: train.width, 32)"
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default: train.seed, 0)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda (default: train.device, auto)")
    p.add_argument("--out", default=None, help="run folder (default: work_dir/runs/<loss>-<data>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (default: off)")
    p.add_argument(
        "--no-epoch-eval",
        action="store_true",
        help="skip the held-out precision after each epoch (default: off, evaluated)",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="train every loss of compare_losses.METHODS and print one table (default: off)",
    )
    p.add_argument(
        "--minutes-per-method",
        type=float,
        default=None,
        help="--compare: time budget of each method, minutes (default: none, --minutes / train.max_minutes)",
    )
    p.add_argument(
        "--doc",
        default=None,
        help="--compare: Markdown file whose table to update, e.g. docs/training.md (default: none)",
    )
    _add_data_args(p)
    p.set_defaults(func=cmd_train)


def report_severity(taxonomy: str | None, query_y: Any, arrays: dict[str, Any], report: dict, out: Path) -> Path:
    """Mistake severity by the taxonomy file (or the k-means clusters): printed, in `report`, plotted."""
    from megaclass.export.evaluate.taxonomy import (
        cluster_taxonomy,
        group_precision,
        mistake_severity,
        plot_severity,
        read_taxonomy,
    )

    tax = read_taxonomy(taxonomy) if taxonomy else cluster_taxonomy(arrays["cluster_of"])
    source = f"taxonomy {taxonomy}" if taxonomy else "k-means coarse clusters (no --taxonomy)"
    summary = mistake_severity(query_y, arrays["top1"], tax)
    summary.pop("distances", None)
    groups = group_precision(query_y, arrays["top1"], tax, level=1)
    report["severity"] = {"source": source, **summary}
    print(f"mistake severity by {source}:")
    print(
        f"  mistakes {summary['mistakes']} of {summary['queries']}; mean tree distance {summary['mean_mistake_distance']:.3g}"
    )
    print(
        "  histogram (distance: mistakes): " + ", ".join(f"{d}: {c}" for d, c in summary["severity_histogram"].items())
    )
    print(
        "  precision@1 by level: " + ", ".join(f"{lv}: {p:.3f}" for lv, p in summary["precision_at_1_by_level"].items())
    )
    print(f"  share of mistakes within the same parent: {summary['same_parent_share']:.3f}")
    return plot_severity(summary, groups, out / "severity.png", source)


def _register_evaluate(sub: Subparsers) -> None:
    p = sub.add_parser("evaluate", help="precision@1, hit rate@k, MAP@R, cost-aware error; PCA plot")
    p.add_argument(
        "checkpoint",
        nargs="?",
        default=None,
        help="checkpoint.pt; its run.json names the data (default: none, for an embedding catalogue)",
    )
    p.add_argument("--out", default=None, help="report folder (default: eval/ beside the checkpoint)")
    p.add_argument("--ks", default="5,10", help="k of hit rate@k, comma-separated (default: 5,10)")
    p.add_argument(
        "--tail-max",
        type=int,
        default=2,
        help="the tail split: classes with at most this many training samples (default: 2)",
    )
    p.add_argument(
        "--taxonomy",
        default=None,
        help="class,parent hierarchy file for mistake severity (default: none, the k-means clusters)",
    )
    _add_data_args(p)
    p.set_defaults(func=cmd_evaluate)


def _register_prototypes(sub: Subparsers) -> None:
    p = sub.add_parser("prototypes", help="class prototypes of a catalogue / the glyphs; --index: a routed index")
    p.add_argument(
        "checkpoint",
        nargs="?",
        default=None,
        help="encoder checkpoint (default: none, for an embedding catalogue)",
    )
    p.add_argument("--out", required=True, help="folder for prototypes.npy, class_ids.npy, labels.txt (required)")
    p.add_argument("--index", default=None, help="also build and save a RoutedIndex in this new folder (default: none)")
    _add_data_args(p)
    p.set_defaults(func=cmd_prototypes)


def _register_export(sub: Subparsers) -> None:
    p = sub.add_parser("export", help="checkpoint -> ONNX FP32/FP16 with parity report; --tensorrt: engine")
    p.add_argument("checkpoint", help="encoder checkpoint.pt to export")
    p.add_argument("--out", default=None, help="output folder (default: export/ beside the checkpoint)")
    p.add_argument(
        "--no-fp16", action="store_true", help="FP32 only, also the TensorRT precision (default: off, FP16 too)"
    )
    p.add_argument(
        "--tensorrt",
        action="store_true",
        help="also build a TensorRT engine where TensorRT imports (default: off)",
    )
    p.add_argument("--min-batch", type=int, default=1, help="TensorRT profile: smallest batch, images (default: 1)")
    p.add_argument(
        "--opt-batch", type=int, default=16, help="TensorRT profile: batch it is tuned for, images (default: 16)"
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="TensorRT profile: largest batch, images (default: serving.encoder.max_batch_size, 64)",
    )
    p.set_defaults(func=cmd_export)


def register(sub: Subparsers) -> None:
    """`megaclass train`, `evaluate`, `prototypes` and `export`."""
    _register_train(sub)
    _register_evaluate(sub)
    _register_prototypes(sub)
    _register_export(sub)
