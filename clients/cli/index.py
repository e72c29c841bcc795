"""`megaclass index build | tune | search`: the routed index from your own embeddings files.

argparse wiring only; the work is in `python_backend/index/file_ops.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from megaclass.clients.cli.common import Subparsers


def _index_config(args: argparse.Namespace):
    from megaclass.export.config import IndexConfig

    keys = ("nlist", "nprobe", "storage", "spill", "backend", "pq_m", "pq_residual", "taxonomy", "taxonomy_level")
    changes = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    return dataclasses.replace(IndexConfig(), **changes)


def cmd_build(args: argparse.Namespace) -> int:
    from megaclass.export.evaluate.taxonomy import routing_groups
    from megaclass.python_backend.index.file_ops import build_index, read_label_file

    cfg = _index_config(args)
    try:
        class_ids, names = read_label_file(Path(args.labels))
        groups, routing = routing_groups(cfg, class_ids, names)
        index = build_index(
            Path(args.prototypes),
            Path(args.labels),
            Path(args.out),
            cfg,
            progress=True,
            groups=groups,
            extra_manifest={"routing": routing},
        )
    except (ValueError, OSError) as exc:
        print(f"megaclass index build: {exc}", file=sys.stderr)
        return 1
    print(f"{index.num_classes} classes, {index.num_prototypes} prototypes, {index.nlist} clusters -> {args.out}")
    if groups is not None:
        print(
            f"routed by taxonomy level {cfg.taxonomy_level}: {routing['classes_without_node']} classes without a node"
        )
    from megaclass.export.config import load_config
    from megaclass.export.lifecycle.record import record_index

    params = {f"index.{k}": v for k, v in dataclasses.asdict(index.cfg).items()}
    metrics = {"classes": index.num_classes, "prototypes": index.num_prototypes}
    record_index(load_config(args.config), "index build", Path(args.out), params, metrics)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from megaclass.python_backend.index.file_ops import tune_index

    result = tune_index(
        Path(args.index),
        Path(args.queries),
        target_recall=args.target_recall,
        top_k=args.top_k,
        batch=args.batch,
        search_space=args.search_space,
        budget_s=args.budget,
    )
    print(json.dumps(dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result, default=str))
    from megaclass.export.config import load_config
    from megaclass.export.lifecycle.record import record_index

    params = {
        "target_recall": args.target_recall,
        "top_k": args.top_k,
        "nprobe": result.nprobe,
        "rerank": result.rerank,
    }
    record_index(
        load_config(args.config),
        "index tune",
        Path(args.index),
        params,
        {"search_recall": result.recall, "qps": result.qps},
    )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    import time

    from megaclass.python_backend.index.file_ops import search_index

    t0 = time.perf_counter()
    out = search_index(
        Path(args.index),
        Path(args.queries),
        Path(args.out),
        top_k=args.top_k,
        nprobe=args.nprobe,
        probe_margin=args.probe_margin,
        batch=args.batch,
    )
    seconds = time.perf_counter() - t0
    print(f"results written to {out} ({seconds:.2f} s including loading the index and queries)")
    return 0


def register(sub: Subparsers) -> None:
    """`megaclass index build`, `tune` and `search`."""
    ix = sub.add_parser("index", help="the routed index from your own embeddings").add_subparsers(
        dest="index", required=True
    )
    _register_build(ix)
    _register_tune(ix)
    _register_search(ix)


def _register_build(ix: Subparsers) -> None:
    p = ix.add_parser("build", help="build from P.npy (float32 rows) and L.txt (one class label per row)")
    p.add_argument("--prototypes", required=True, help="P.npy: float32 [N, D] prototype embeddings (required)")
    p.add_argument("--labels", required=True, help="L.txt: the class label of each row of P.npy (required)")
    p.add_argument("--out", required=True, help="folder to save the index in (required)")
    p.add_argument(
        "--nlist", type=int, default=None, help="coarse clusters (default: index.nlist, none: about 4 x sqrt(N))"
    )
    p.add_argument("--nprobe", type=int, default=None, help="clusters searched per query (default: index.nprobe, 8)")
    p.add_argument(
        "--storage",
        choices=["auto", "flat", "fp16", "sq8", "pq"],
        default=None,
        help="how prototypes are stored (default: auto = 4-bit PQ with the native kernel, flat without it "
        "or under 1000 prototypes)",
    )
    p.add_argument(
        "--spill",
        type=int,
        default=None,
        help="extra clusters each prototype is also assigned to, SOAR (default: 1 with the native kernel, else 0)",
    )
    p.add_argument(
        "--backend",
        choices=["auto", "faiss", "numpy", "torch", "native"],
        default=None,
        help="search kernels (default: auto = the native C++ kernel where it compiles, else faiss)",
    )
    p.add_argument(
        "--pq-m",
        dest="pq_m",
        type=int,
        default=None,
        help="PQ sub-quantisers, pq storage (default: index.pq_m, none: dimension / 4)",
    )
    p.add_argument(
        "--pq-residual",
        dest="pq_residual",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="PQ codes of x - centroid (native backend; far smaller errors on clustered data) "
        "(default: on with the native backend)",
    )
    p.add_argument(
        "--taxonomy",
        default=None,
        help="class,parent file: the coarse clusters are its nodes at --taxonomy-level instead of k-means "
        "(classes matched by label; those without a node join the nearest cluster) (default: none, k-means)",
    )
    p.add_argument(
        "--taxonomy-level",
        dest="taxonomy_level",
        type=int,
        default=None,
        help="depth of the taxonomy's nodes that become clusters, 1 = top (default: index.taxonomy_level, 1)",
    )
    p.set_defaults(func=cmd_build)


def _register_tune(ix: Subparsers) -> None:
    p = ix.add_parser(
        "tune", help="choose nprobe (and probe margin, rerank) for a target search recall on held-out queries"
    )
    p.add_argument("--index", required=True, help="index folder; the chosen settings become its defaults (required)")
    p.add_argument("--queries", required=True, help="Q.npy: float32 [M, D] held-out queries (required)")
    p.add_argument(
        "--target-recall",
        type=float,
        default=0.95,
        help="search recall@k against exact search to reach, 0-1 (default: 0.95)",
    )
    p.add_argument("--top-k", type=int, default=10, help="k of the recall, results per query (default: 10)")
    p.add_argument("--batch", type=int, default=64, help="queries per search call when timing (default: 64)")
    p.add_argument(
        "--search-space",
        dest="search_space",
        choices=["settings", "full"],
        default="settings",
        help="settings: nprobe, probe margin and rerank of the index as built; full: also its storage form and "
        "backend, rewriting the index in the fastest form (default: settings)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=300,
        help="seconds --search-space full may spend; forms not reached are skipped (default: 300)",
    )
    p.set_defaults(func=cmd_tune)


def _register_search(ix: Subparsers) -> None:
    p = ix.add_parser("search", help="search queries, write class labels and scores (.npz)")
    p.add_argument("--index", required=True, help="index folder to search (required)")
    p.add_argument("--queries", required=True, help="Q.npy: float32 [M, D] queries (required)")
    p.add_argument("--top-k", type=int, default=10, help="classes returned per query (default: 10)")
    p.add_argument(
        "--nprobe", type=int, default=None, help="clusters searched per query (default: the index's own setting)"
    )
    p.add_argument(
        "--probe-margin",
        dest="probe_margin",
        type=float,
        default=None,
        help="adaptive probing: of the nprobe best clusters only those within this route score of the best "
        "(default: the index's own setting)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=4096,
        help="queries per search call, e.g. your serving batch size (default: 4096)",
    )
    p.add_argument("--out", required=True, help="the .npz to write: class_ids, labels, scores (required)")
    p.set_defaults(func=cmd_search)
