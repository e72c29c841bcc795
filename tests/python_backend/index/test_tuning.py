"""`tune` (tuning.py): recall against exact search, the search for the smallest setting, the chosen point."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from megaclass.python_backend.index.config import IndexConfig
from megaclass.python_backend.index.defaults import FAISS_FLAT
from megaclass.python_backend.index.file_ops import read_label_file
from megaclass.python_backend.index.routed_index import RoutedIndex
from megaclass.python_backend.index.tuning import nprobe_grid, rerank_grid, search_recall_at_k, smallest_reaching, tune


def test_search_recall_at_k() -> None:
    truth = np.array([[1, 2, 3], [4, 5, -1]])
    found = np.array([[3, 9, 1], [5, -1, -1]])
    assert search_recall_at_k(found, truth) == pytest.approx(3 / 5)
    assert nprobe_grid(10) == [1, 2, 3, 4, 6, 8, 10]


def test_smallest_reaching_bisects_between_grid_points() -> None:
    calls = []

    def recall(p: int) -> float:
        calls.append(p)
        return min(1.0, p / 40)

    chosen, seen = smallest_reaching(recall, [1, 2, 4, 8, 16, 32, 64], 0.95)
    assert chosen == 38 and seen[38] >= 0.95 and seen[37] < 0.95
    assert sorted(seen) == sorted(set(calls)) and len(calls) < 7 + 6
    assert smallest_reaching(lambda p: 0.1, [1, 2], 0.95)[0] is None
    assert smallest_reaching(lambda p: 1.0, [3, 6], 0.95)[0] == 1
    # never below `lowest`: an HNSW ef under the neighbours asked would not be what runs
    assert smallest_reaching(lambda p: 1.0, [40, 48], 0.95, lowest=40) == (40, {40: 1.0})
    assert smallest_reaching(lambda p: min(1.0, p / 44), [40, 48], 0.95, lowest=40)[0] == 42


def test_tune_reaches_the_target_with_the_fewest_probes(files: dict) -> None:
    ids, names = read_label_file(files["dir"] / "L.txt")
    index = RoutedIndex.build(files["xb"], ids, names, IndexConfig(nlist=40, kmeans_iters=8, **FAISS_FLAT))
    result = tune(index, files["xq"], target_recall=0.9, top_k=5, batch=64, repeats=1)
    assert result.reached and result.recall >= 0.9 and result.qps > 0
    # the fixed-probing points: the first nprobe on the grid that reaches the target; recall never falls
    fixed = [p for p in result.curve if p["probe_margin"] is None]
    assert [p["recall"] for p in fixed] == sorted(p["recall"] for p in fixed)
    smallest = min(p["nprobe"] for p in fixed if p["recall"] >= 0.9)
    assert all(p["recall"] < 0.9 for p in fixed if p["nprobe"] < smallest)
    # adaptive points: up to twice that nprobe, recall growing with the margin
    adaptive = sorted((p for p in result.curve if p["probe_margin"] is not None), key=lambda p: p["probe_margin"])
    assert adaptive and {p["nprobe"] for p in adaptive} == {min(2 * smallest, index.nlist)}
    assert [p["recall"] for p in adaptive] == sorted(p["recall"] for p in adaptive)
    assert all(p["probes"] <= p["nprobe"] for p in adaptive)
    if result.probe_margin is None:
        assert result.nprobe == smallest
    else:  # chosen only when it scans fewer entries than the smallest fixed nprobe
        point = next(p for p in adaptive if p["probe_margin"] == result.probe_margin)
        assert (
            point["recall"] >= 0.9
            and point["candidates"] < next(p for p in fixed if p["nprobe"] == smallest)["candidates"]
        )
    assert all(p["probes"] == min(p["nprobe"], index.nlist) for p in fixed)
    # a margin configured on the index does not leak into fixed probing
    index.cfg = dataclasses.replace(index.cfg, probe_margin=0.0)
    plain = tune(index, files["xq"], target_recall=0.9, top_k=5, batch=64, repeats=1, adaptive=False)
    assert plain.probe_margin is None and plain.nprobe == smallest
    assert all(p["probe_margin"] is None for p in plain.curve)
    impossible = tune(index, files["xq"][:20], target_recall=1.01, top_k=5, nprobes=[1, 2], repeats=1)
    assert not impossible.reached and impossible.nprobe == 2


def _pq_index(files: dict) -> RoutedIndex:
    """The test files' index with 4-bit PQ storage (a re-rank depth to tune)."""
    ids, names = read_label_file(files["dir"] / "L.txt")
    cfg = IndexConfig(**{**FAISS_FLAT, "nlist": 40, "storage": "pq", "pq_m": 4, "kmeans_iters": 8})
    return RoutedIndex.build(files["xb"], ids, names, cfg)


def test_tune_picks_a_rerank_depth_for_compressed_storage(files: dict) -> None:
    index = _pq_index(files)
    result = tune(index, files["xq"], target_recall=0.9, top_k=5, reranks=[10, 40, 160], repeats=1)
    assert result.reached and result.rerank in (10, 40, 160)
    assert {p["rerank"] for p in result.curve} <= {10, 40, 160}


def test_rerank_grid_has_half_steps_up_to_four_times_k() -> None:
    assert rerank_grid(10) == [10, 15, 20, 25, 30, 35, 40, 50, 60, 80, 160, 320]
    assert rerank_grid(1) == [1, 2, 3, 4, 5, 6, 8, 16, 32]  # whole and distinct (1.5 and 2.5 round to 2)
    assert rerank_grid(5)[:4] == [5, 8, 10, 12]


def test_tune_tries_the_default_rerank_grid(files: dict) -> None:
    index = _pq_index(files)
    result = tune(index, files["xq"], target_recall=0.75, top_k=4, repeats=1, adaptive=False)
    tried = {p["rerank"] for p in result.curve}
    assert tried <= set(rerank_grid(4)) and {6, 10, 14} <= tried  # the half steps (1.5, 2.5, 3.5 x k) too
    assert result.reached and result.rerank in tried
