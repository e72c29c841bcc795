"""`megaclass tuples train | compare` and `megaclass mine-negatives`: argparse wiring only.

- tuples train:   a tuple file (pairs / triplets, `export/data/tuples.py`) -> checkpoint.pt, metrics.jsonl
- tuples compare: labelled vs tuple-only vs index-mined negatives on the glyph set -> a table (docs/training.md)
- mine-negatives: a routed index folder -> negatives.csv (class, neighbour, score, easy/soft/hard tier)
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
    for key in ("neighbours", "hard_min", "soft_min"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
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
    print(f"tiers: {path}")
    return 0


def register(sub: Subparsers) -> None:
    """`megaclass tuples` (train, compare) and `megaclass mine-negatives`."""
    p = sub.add_parser("tuples", help="train from pairs / triplets; compare with labelled and mined-negative runs")
    tsub = p.add_subparsers(dest="tuples_command", required=True)
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
    m.add_argument("--hard-min", type=float, default=None, help="score of a hard neighbour (default: 0.75)")
    m.add_argument("--soft-min", type=float, default=None, help="score of a soft neighbour (default: 0.5)")
    m.set_defaults(func=cmd_mine_negatives)
