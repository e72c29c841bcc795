"""Routing by taxonomy vs k-means: the hierarchical data, misfiling, and a tiny side-by-side run."""

from __future__ import annotations

import numpy as np

from megaclass.loadtest.benchmarks.index_data import hierarchical_embeddings, synthetic_embeddings
from megaclass.loadtest.benchmarks.taxonomy_routing import compare, main, markdown_table, misfile


def test_hierarchical_embeddings_follow_their_groups_and_match_the_flat_set():
    xb, ids, xq, groups = hierarchical_embeddings(600, 16, num_queries=50, group_size=60, seed=2)
    flat = synthetic_embeddings(600, 16, num_queries=50, group_size=60, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip((xb, ids, xq), flat, strict=True))
    centres = np.stack([xb[groups == g].mean(axis=0) for g in np.unique(groups)])
    nearest = np.unique(groups)[np.argmax(xb @ centres.T, axis=1)]
    assert np.mean(nearest == groups) > 0.9  # the geometry follows the groups


def test_misfile_moves_the_share_to_other_groups():
    groups = np.repeat(np.arange(10), 100)
    moved = misfile(groups, 0.2, seed=1)
    changed = moved != groups
    assert 0.15 < changed.mean() < 0.25 and moved.min() >= 0 and moved.max() <= 9
    assert np.array_equal(misfile(groups, 0.0, seed=1), groups)


def test_tiny_side_by_side_run(tmp_path):
    rows = compare(classes=600, dim=16, group_size=60, queries=64, misfiled=(0.0,), nprobes=(1, 64), repeats=1)
    assert [(r["routing"], r["nprobe"]) for r in rows] == [("k-means", 1), ("taxonomy", 1), ("k-means", 64),
                                                           ("taxonomy", 64)]  # fmt: skip
    assert rows[0]["nlist"] == rows[1]["nlist"]  # as many clusters either way
    assert all(r["recall_at_10"] == 1.0 for r in rows[2:])  # every cluster probed: exact
    assert all(r["qps"] > 0 and r["scanned_per_query"] > 0 for r in rows)
    assert markdown_table(rows).count("\n") == 3
    assert main(["--out", str(tmp_path), "--classes", "300", "--dim", "8", "--group-size", "50", "--queries", "32",
                 "--misfiled", "0,0.2", "--repeats", "1"]) == 0  # fmt: skip
    assert (tmp_path / "recall_qps.png").stat().st_size > 0 and "| 20% | 32 |" in (tmp_path / "table.md").read_text()
