"""Routing by taxonomy vs k-means routing: recall@10 and QPS of the routed index at the same nprobe.

The data is `hierarchical_embeddings`: classes are children of Zipf-sized parent groups whose
geometry they follow. The taxonomy is that parent -> class tree, with a share `misfiled` of the
classes filed under a random other parent (a catalogue's taxonomy follows merchandising, not always
what the encoder sees). Both indexes store the same prototypes the same way (flat, FAISS scan, one
thread) with as many coarse clusters: k-means trains that many; routing by taxonomy takes one per
parent (`RoutedIndex.build(..., groups=...)`). Each nprobe is timed for both methods side by side in
one run: `repeats` passes over the queries in batches of `batch`, the two methods' passes alternating,
the best pass of each kept. Entries scanned per query are the cost that does not depend on the load.

    python -m megaclass.loadtest.benchmarks.taxonomy_routing --out runs/taxonomy-routing
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from megaclass.loadtest.benchmarks.index_data import hierarchical_embeddings
from megaclass.python_backend.index.config import IndexConfig
from megaclass.python_backend.index.routed_index import RoutedIndex
from megaclass.python_backend.index.tuning import search_recall_at_k, time_search

NPROBES = (1, 2, 4, 8, 16, 32)


def misfile(groups: np.ndarray, share: float, seed: int) -> np.ndarray:
    """The taxonomy's parent of each class: `groups`, with `share` of the classes moved to another group."""
    rng = np.random.default_rng(seed)
    out = groups.copy()
    moved = rng.random(len(groups)) < share
    n_groups = int(groups.max()) + 1
    out[moved] = (groups[moved] + rng.integers(1, max(n_groups, 2), int(moved.sum()))) % n_groups
    return out


def compare(
    classes: int = 20000,
    dim: int = 64,
    group_size: int = 100,
    queries: int = 2000,
    misfiled: tuple[float, ...] = (0.0, 0.1),
    nprobes: tuple[int, ...] = NPROBES,
    top_k: int = 10,
    batch: int = 64,
    repeats: int = 7,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per (misfiled share, routing, nprobe): recall@top_k against exact search, QPS, entries scanned."""
    xb, ids, xq, groups = hierarchical_embeddings(classes, dim, num_queries=queries, group_size=group_size, seed=seed)
    labels = {int(c): f"class-{c}" for c in ids}
    rows = []
    for share in misfiled:
        tax = misfile(groups, share, seed + 1)
        nlist = len(np.unique(tax))
        cfg = IndexConfig(nlist=nlist, storage="flat", backend="faiss", spill=0, threads=1, seed=seed)
        built = {}
        for routing, g in (("k-means", None), ("taxonomy", tax)):
            t0 = time.perf_counter()
            built[routing] = (RoutedIndex.build(xb, ids, labels, cfg, groups=g), time.perf_counter() - t0)
        truth = built["k-means"][0].exact_search(xq, top_k).class_ids
        for nprobe in nprobes:
            qps = {routing: 0.0 for routing in built}
            for _ in range(repeats):  # the two methods' passes alternate; each keeps its best
                for routing, (index, _) in built.items():
                    t = time_search(lambda q, ix=index, p=nprobe: ix.search(q, top_k, nprobe=p), xq, batch, 1)
                    qps[routing] = max(qps[routing], t["qps"])
            for routing, (index, build_s) in built.items():
                res = index.search(xq, top_k, nprobe=nprobe)
                rows.append(
                    {
                        "misfiled": share,
                        "routing": routing,
                        "nlist": index.nlist,
                        "nprobe": nprobe,
                        f"recall_at_{top_k}": search_recall_at_k(res.class_ids, truth),
                        "qps": qps[routing],
                        "scanned_per_query": res.stats["candidates"],
                        "largest_cluster_x_mean": index.imbalance(),
                        "build_s": build_s,
                    }
                )
    return rows


def markdown_table(rows: list[dict[str, Any]], top_k: int = 10) -> str:
    """k-means and taxonomy routing side by side, one line per (misfiled share, nprobe)."""
    head = (
        f"| misfiled | nprobe | k-means recall@{top_k} | taxonomy recall@{top_k} | k-means QPS | taxonomy QPS "
        "| k-means scanned/query | taxonomy scanned/query |"
    )
    lines = [head, "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by = {(r["misfiled"], r["nprobe"], r["routing"]): r for r in rows}
    for share, nprobe in dict.fromkeys((r["misfiled"], r["nprobe"]) for r in rows):
        k, t = by[(share, nprobe, "k-means")], by[(share, nprobe, "taxonomy")]
        r = f"recall_at_{top_k}"
        lines.append(
            f"| {share:.0%} | {nprobe} | {k[r]:.3f} | {t[r]:.3f} | {k['qps']:,.0f} | {t['qps']:,.0f} "
            f"| {k['scanned_per_query']:,.0f} | {t['scanned_per_query']:,.0f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, top_k: int = 10) -> Path:
    """Recall@k against QPS, one curve per (routing, misfiled share)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (share, routing), style in zip(
        dict.fromkeys((r["misfiled"], r["routing"]) for r in rows), ("o-", "s--", "o-", "s--"), strict=False
    ):
        sel = [r for r in rows if r["misfiled"] == share and r["routing"] == routing]
        ax.plot(
            [r[f"recall_at_{top_k}"] for r in sel],
            [r["qps"] for r in sel],
            style,
            label=f"{routing}, {share:.0%} misfiled",
        )
    ax.set_xlabel(f"recall@{top_k} (vs exact search)")
    ax.set_ylabel("queries / s (1 thread)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("routing by taxonomy vs k-means, same nlist, nprobe 1..32")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for rows.json, table.md, recall_qps.png (required)")
    p.add_argument("--classes", type=int, default=20000, help="classes (default: 20000)")
    p.add_argument("--dim", type=int, default=64, help="embedding dimension (default: 64)")
    p.add_argument("--group-size", type=int, default=100, help="mean classes per parent (default: 100)")
    p.add_argument("--queries", type=int, default=2000, help="queries (default: 2000)")
    p.add_argument("--misfiled", default="0,0.1", help="shares of misfiled classes, comma-separated (default: 0,0.1)")
    p.add_argument("--repeats", type=int, default=7, help="timed passes, the best kept (default: 7)")
    args = p.parse_args(argv)
    shares = tuple(float(x) for x in args.misfiled.split(","))
    rows = compare(args.classes, args.dim, args.group_size, args.queries, shares, repeats=args.repeats)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.json").write_text(json.dumps(rows, indent=2))
    table = markdown_table(rows)
    (out / "table.md").write_text(table + "\n")
    plot(rows, out / "recall_qps.png")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
