"""`megaclass tuples generate | train | compare` and `megaclass mine-negatives`: argparse wiring only.

- tuples generate: a labelled set (glyphs; `--catalog FILE`) -> a tuple file (pairs / triplets) and,
                 for glyphs, the .npy array its row items index
- tuples train:   a tuple file (pairs / triplets, `export/data/tuples.py`) -> checkpoint.pt, metrics.jsonl
- tuples compare: labelled vs tuple-only vs index-mined negatives on the glyph set -> a table (docs/training.md)
- mine-negatives: a routed index folder -> negatives.csv (class, neighbour, score, easy/soft/hard tier;
                 bands from the quantiles of the mined scores, or fixed)
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from megaclass.clients.cli.common import Subparsers
from megaclass.export.config import load_config


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    train = {"loss": getattr(args, "loss", None), "epochs": args.epochs, "seed": args.seed}
    return {"train": {k: v for k, v in train.items() if v is not None}}


def cmd_tuples_generate(args: argparse.Namespace) -> int:
    import numpy as np

    from megaclass.export.data.catalog import CatalogError, read_catalog
    from megaclass.export.data.data_sources import glyph_data
    from megaclass.export.data.tuples import generate_tuple_file

    cfg = load_config(args.config, {"glyphs": {"max_classes": args.max_classes}} if args.max_classes else None)
    images, paths = None, None
    try:
        if args.catalog:
            cat = read_catalog(args.catalog)
            if cat.paths is None:
                raise ValueError(f"{args.catalog}: an embedding catalogue has no images to put in tuples")
            rows = cat.rows("train")
            labels, paths = cat.class_ids[rows], [cat.paths[r] for r in rows]
        else:
            ds, splits = glyph_data(cfg, progress=not args.quiet)
            images, labels = splits.train.images, ds.codepoints[splits.train.class_index]
        count = args.count or max(1, round(cfg.tuples.generated_per_epoch * len(labels)))
        seed = cfg.train.seed if args.seed is None else args.seed
        path, array = generate_tuple_file(args.out, args.kind, labels, count, seed, images=images, paths=paths)
    except (CatalogError, ValueError) as e:
        print(f"megaclass tuples generate: {e}", file=sys.stderr)
        return 1
    print(f"{count} {args.kind} over {len(labels)} items of {len(np.unique(labels))} classes: {path}")
    if array is not None:
        print(f"items are rows of {array}; train with: megaclass tuples train {path} --array {array}")
    return 0


def cmd_tuples_train(args: argparse.Namespace) -> int:
    from megaclass.export.data.tuples import TupleFileError, load_tuples
    from megaclass.export.train.tuple_training import train_from_tuples

    cfg = load_config(args.config, _overrides(args))
    try:
        ts = load_tuples(args.file, args.array, cfg.glyphs.image_size)
        out = Path(args.out) if args.out else Path(cfg.work_dir) / "runs" / f"tuples-{Path(args.file).stem}"
        result = train_from_tuples(ts, cfg, out, progress=not args.quiet)
    except (TupleFileError, ValueError) as e:
        print(f"megaclass tuples train: {e}", file=sys.stderr)
        return 1
    print(f"{len(ts)} {ts.kind} over {len(ts.images)} items; checkpoint: {result.checkpoint_path}")
    return 0


def cmd_tuples_compare(args: argparse.Namespace) -> int:
    from megaclass.export.train.compare_tuples import compare_tuples, markdown_table, update_doc

    cfg = load_config(args.config, _overrides(args))
    out = Path(args.out) if args.out else Path(cfg.work_dir) / "runs" / "compare-tuples"
    rows = compare_tuples(cfg, out, tuple(args.rows.split(",")), progress=not args.quiet)
    table = markdown_table(rows, "megaclass " + shlex.join(sys.argv[1:]))
    (out / "comparison.md").write_text(table + "\n")
    print(table)
    if args.doc:
        print(f"updated {update_doc(Path(args.doc), table)}")
    return 0


def cmd_mine_negatives(args: argparse.Namespace) -> int:
    from megaclass.export.train.negatives import mine_negatives, write_tiers
    from megaclass.python_backend.index.routed_index import RoutedIndex

    overrides: dict[str, Any] = {}
    for key in ("neighbours", "bands", "soft_quantile", "hard_quantile", "hard_min", "soft_min"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.bands is None and (args.hard_min is not None or args.soft_min is not None):
        overrides["bands"] = "fixed"  # a fixed bound given: fixed bands
    cfg = load_config(args.config, {"negatives": overrides})
    try:
        index = RoutedIndex.load(Path(args.index))
        tiers = mine_negatives(index, cfg.negatives)
    except (OSError, ValueError) as e:
        print(f"megaclass mine-negatives: {e}", file=sys.stderr)
        return 1
    path = write_tiers(tiers, args.out)
    counts = tiers.counts()
    print(f"{index.num_classes} classes; neighbours per tier: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    soft, hard = tiers.bands
    print(f"bands ({cfg.negatives.bands}): soft from score {soft:.4f}, hard from {hard:.4f}")
    print(f"tiers: {path}")
    return 0


def register(sub: Subparsers) -> None:
    """`megaclass tuples` (generate, train, compare) and `megaclass mine-negatives`."""
    p = sub.add_parser(
        "tuples", help="generate pairs / triplets, train from them; compare with labelled and mined-negative runs"
    )
    tsub = p.add_subparsers(dest="tuples_command", required=True)
    g = tsub.add_parser("generate", help="a tuple file from a labelled set (glyphs or an image catalogue)")
    g.add_argument("--out", required=True, help="tuple file to write, e.g. runs/triplets.csv (required)")
    g.add_argument("--kind", choices=("triplets", "pairs"), default="triplets", help="(default: triplets)")
    g.add_argument(
        "--count",
        type=int,
        default=None,
        help="tuples to write (default: tuples.generated_per_epoch x training images, 1.0 x)",
    )
    g.add_argument(
        "--catalog",
        default=None,
        help="image catalogue whose train rows are the items, written as paths (default: the glyph set, "
        "written as rows of <out stem>.npy)",
    )
    g.add_argument("--max-classes", type=int, default=None, help="glyph classes (default: glyphs.max_classes)")
    g.add_argument("--seed", type=int, default=None, help="(default: train.seed, 0)")
    g.add_argument("--quiet", action="store_true", help="no progress bars (default: off)")
    g.set_defaults(func=cmd_tuples_generate)
    t = tsub.add_parser("train", help="train the encoder from a tuple file")
    t.add_argument("file", help="tuple file: header a,b,similar or anchor,positive,negative")
    t.add_argument("--array", default=None, help=".npy of uint8 images [N, S, S] that row items index (default: none)")
    t.add_argument("--loss", choices=("triplet", "contrastive"), default=None, help="(default: train.loss, triplet)")
    c = tsub.add_parser("compare", help="labelled vs tuple-only vs index-mined negatives on the glyph set")
    c.add_argument(
        "--rows",
        default="labelled,triplets,pairs,mined",
        help="rows to run, comma-separated (default: labelled,triplets,pairs,mined)",
    )
    c.add_argument("--doc", default=None, help="Markdown file whose compare-tuples block is replaced (default: none)")
    for q in (t, c):
        q.add_argument("--epochs", type=int, default=None, help="(default: train.epochs, 8)")
        q.add_argument("--seed", type=int, default=None, help="(default: train.seed, 0)")
        q.add_argument("--out", default=None, help="run folder (default: work_dir/runs/...)")
        q.add_argument("--quiet", action="store_true", help="no progress bars (default: off)")
    t.set_defaults(func=cmd_tuples_train)
    c.set_defaults(func=cmd_tuples_compare)

    m = sub.add_parser("mine-negatives", help="each class's nearest other classes in an index, tiered easy/soft/hard")
    m.add_argument(
        "--index",
        required=True,
        help="routed index folder, from megaclass index build or prototypes --index (required)",
    )
    m.add_argument("--out", required=True, help="tiers file to write, CSV: class,neighbour,score,tier (required)")
    m.add_argument(
        "--neighbours", type=int, default=None, help="neighbours per class (default: negatives.neighbours, 20)"
    )
    m.add_argument(
        "--bands",
        choices=("quantile", "fixed"),
        default=None,
        help="tier bounds: quantiles of the mined scores, or --soft-min / --hard-min; fixed when one of those "
        "is given (default: negatives.bands, quantile)",
    )
    m.add_argument("--soft-quantile", type=float, default=None, help="below it: easy (default: 1/3)")
    m.add_argument("--hard-quantile", type=float, default=None, help="at or above it: hard (default: 2/3)")
    m.add_argument("--hard-min", type=float, default=None, help="fixed score of a hard neighbour (default: 0.75)")
    m.add_argument("--soft-min", type=float, default=None, help="fixed score of a soft neighbour (default: 0.5)")
    m.set_defaults(func=cmd_mine_negatives)
