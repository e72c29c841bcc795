"""`megaclass index build | tune | search` and `megaclass bench index`: bring your own embeddings.

argparse wiring only; the work is in `routed_index_cli` and `loadtest.bench_index`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

GLYPH_CACHE = Path(".cache/megaclass/bench")


def _index_config(args: argparse.Namespace):
    from megaclass.export.config import IndexConfig

    keys = ("nlist", "nprobe", "storage", "spill", "backend", "pq_m", "pq_residual")
    changes = {k: getattr(args, k) for k in keys if getattr(args, k)}
    return dataclasses.replace(IndexConfig(), **changes)


def cmd_build(args: argparse.Namespace) -> int:
    from megaclass.python_backend.index.file_ops import build_index

    try:
        index = build_index(
            Path(args.prototypes), Path(args.labels), Path(args.out), _index_config(args), progress=True
        )
    except (ValueError, OSError) as exc:
        print(f"megaclass index build: {exc}", file=sys.stderr)
        return 1
    print(f"{index.num_classes} classes, {index.num_prototypes} prototypes, {index.nlist} clusters -> {args.out}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from megaclass.python_backend.index.file_ops import tune_index

    result = tune_index(Path(args.index), Path(args.queries), target_recall=args.target_recall, top_k=args.top_k)
    print(json.dumps(dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result, default=str))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from megaclass.python_backend.index.file_ops import search_index

    out = search_index(
        Path(args.index),
        Path(args.queries),
        Path(args.out),
        top_k=args.top_k,
        nprobe=args.nprobe,
        probe_margin=args.probe_margin,
    )
    print(f"results written to {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from megaclass.loadtest.benchmarks.index_bench import bench_index, glyph_embedding_files

    files = [Path(f) if f else None for f in (args.prototypes, args.labels, args.queries)]
    name = None
    if args.glyph_encoder:  # the glyph set embedded by a trained encoder: data set (b) of the issue
        from megaclass.export.convert.onnx_export import sha256_file

        encoder = Path(args.glyph_encoder)
        # Embeddings are cached by folder: one folder per encoder, so another encoder never reuses them.
        out = Path(args.glyph_out) if args.glyph_out else GLYPH_CACHE / f"glyph-emb-{sha256_file(encoder)[:12]}"
        files = list(glyph_embedding_files(encoder, out))
        name = "glyphs"  # its docs section: "index-glyphs"
    bench_index(
        prototypes=files[0],
        labels=files[1],
        queries=files[2],
        name=name,
        num_classes=args.classes, dim=args.dim, threads=args.threads, target_recall=args.target_recall,
        doc=Path(args.doc) if args.doc else None,
    )  # fmt: skip
    return 0


def add_commands(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Register `index ...` on the top-level subcommands and `index` on the `bench` group."""
    ix = sub.add_parser("index", help="the routed index from your own embeddings").add_subparsers(
        dest="index", required=True
    )
    p = ix.add_parser("build", help="build from P.npy (float32 rows) and L.txt (one class label per row)")
    p.add_argument("--prototypes", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--nlist", type=int, default=None)
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument("--storage", choices=["flat", "fp16", "sq8", "pq"], default=None)
    p.add_argument("--spill", type=int, default=None)
    p.add_argument("--backend", choices=["faiss", "numpy", "torch", "native"], default=None)
    p.add_argument("--pq-m", dest="pq_m", type=int, default=None, help="PQ sub-quantisers (pq storage)")
    p.add_argument(
        "--pq-residual",
        dest="pq_residual",
        action="store_true",
        help="PQ codes of x - centroid (native backend; far smaller errors on clustered data)",
    )
    p.set_defaults(func=cmd_build)
    p = ix.add_parser(
        "tune", help="choose nprobe (and probe margin, rerank) for a target search recall on held-out queries"
    )
    p.add_argument("--index", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=10)
    p.set_defaults(func=cmd_tune)
    p = ix.add_parser("search", help="search queries, write class labels and scores (.npz)")
    p.add_argument("--index", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument(
        "--probe-margin",
        dest="probe_margin",
        type=float,
        default=None,
        help="adaptive probing: of the nprobe best clusters only those within this route score of the best",
    )
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_search)

    p = bench.add_parser("index", help="routed index vs FAISS IVF, HNSW and exact search (table + plot)")
    p.add_argument("--prototypes", default=None)
    p.add_argument("--labels", default=None)
    p.add_argument("--queries", default=None)
    p.add_argument(
        "--glyph-encoder",
        default=None,
        help="an exported encoder (ONNX): benchmark on the glyph set's embeddings (4 prototypes per class; "
        "queries from the held-out fonts) instead of files or the synthetic set",
    )
    p.add_argument(
        "--glyph-out", default=None, help=f"where those files go (default {GLYPH_CACHE}/glyph-emb-<encoder hash>)"
    )
    p.add_argument("--classes", type=int, default=1_000_000, help="synthetic set size without files")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--doc", default="docs/benchmarks.md", help="Markdown file to update ('' for none)")
    p.set_defaults(func=cmd_bench)
