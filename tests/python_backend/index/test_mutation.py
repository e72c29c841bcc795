"""Adding and removing classes without a rebuild; router rebuild after drift; save/load afterwards."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from megaclass.python_backend.index.config import IndexConfig
from megaclass.python_backend.index.routed_index import RoutedIndex

from .conftest import unit_rows


def _data(n: int, seed: int, centre_seed: int = 0, shift: float = 0.0) -> np.ndarray:
    centres = np.random.default_rng(centre_seed).standard_normal((15, 24))
    centres[:, 0] += shift
    rng = np.random.default_rng(seed)
    return unit_rows(centres[rng.integers(0, 15, n)] + 0.5 * rng.standard_normal((n, 24)))


def _index(storage: str = "flat", backend: str = "faiss", spill: int = 1) -> RoutedIndex:
    xb = _data(1500, 0)
    ids = np.arange(1500) // 2  # two prototypes per class
    labels = {int(c): f"c{c}" for c in np.unique(ids)}
    cfg = IndexConfig(nlist=12, nprobe=12, spill=spill, storage=storage, backend=backend, kmeans_iters=8)
    return RoutedIndex.build(xb, ids, labels, cfg)


@pytest.mark.parametrize(("storage", "backend"), [("flat", "faiss"), ("pq", "faiss"), ("sq8", "numpy")])
def test_added_classes_are_found_and_removed_ones_never_returned(storage: str, backend: str) -> None:
    index = _index(storage, backend)
    new = _data(60, 1)
    new_ids = 5000 + np.arange(60)
    index.add(new, new_ids, {int(c): f"new{c}" for c in new_ids})
    assert index.num_classes == 750 + 60 and index.num_prototypes == 1560
    res = index.search(new, 1, nprobe=index.nlist, rerank=index.num_entries)
    assert (res.class_ids[:, 0] == new_ids).all()
    assert res.labels[0, 0] == "new5000"
    np.testing.assert_array_equal(
        index.search(new, 5, nprobe=index.nlist, rerank=index.num_entries).class_ids,
        index.exact_search(new, 5).class_ids,
    )
    gone = np.concatenate([new_ids[:30], [0, 1, 2]])
    assert index.remove(gone) == 30 + 6
    assert index.remove([123456]) == 0
    res = index.search(np.vstack([new, _data(50, 2)]), 10, nprobe=index.nlist, rerank=index.num_entries)
    assert not np.isin(res.class_ids, gone).any()
    assert index.num_classes == 750 + 60 - 33
    assert (index.label_of(np.array([0, 5030])) == ["", "new5030"]).all()


def test_more_prototypes_for_a_known_class_and_label_conflicts() -> None:
    index = _index()
    extra = _data(3, 7)
    index.add(extra, np.array([4, 4, 4]))  # known class: no label needed
    res = index.search(extra, 1, nprobe=index.nlist)
    assert (res.class_ids[:, 0] == 4).all()
    with pytest.raises(ValueError, match="different label"):
        index.add(extra[:1], np.array([4]), {4: "renamed"})
    with pytest.raises(ValueError, match="no label"):
        index.add(extra[:1], np.array([9999]))
    with pytest.raises(ValueError, match="dimension"):
        index.add(np.zeros((1, 5), np.float32), np.array([1]))


def test_save_load_after_add_and_remove(tmp_path: Path) -> None:
    index = _index(spill=1)
    index.add(_data(40, 3), 7000 + np.arange(40), {int(c): f"n{c}" for c in 7000 + np.arange(40)})
    index.remove(np.arange(0, 100))
    xq = _data(30, 4)
    before = index.search(xq, 6, nprobe=4)
    index.save(tmp_path / "idx")
    loaded = RoutedIndex.load(tmp_path / "idx")
    after = loaded.search(xq, 6, nprobe=4)
    np.testing.assert_array_equal(before.class_ids, after.class_ids)
    np.testing.assert_allclose(before.scores, after.scores, rtol=1e-6)
    assert loaded.num_prototypes == index.num_prototypes == 1500 - 200 + 40
    assert loaded.manifest["num_entries"] == index.num_entries
    # the in-memory index still answers the same after the compaction save did
    np.testing.assert_array_equal(index.search(xq, 6, nprobe=4).class_ids, before.class_ids)


def test_drift_makes_clusters_uneven_and_rebuild_router_restores_balance() -> None:
    index = _index(spill=0)
    assert not index.needs_rebuild
    drifted = _data(6000, 5, centre_seed=9, shift=4.0)  # a new region of the space, four times the data
    index.add(drifted, 10_000 + np.arange(6000), {int(c): str(c) for c in 10_000 + np.arange(6000)})
    assert index.needs_rebuild
    assert index.drift() > index.cfg.rebuild_drift and index.imbalance() > 2.0
    xq = drifted[:40]
    truth = index.exact_search(xq, 5).class_ids
    index.rebuild_router()
    assert index.imbalance() <= 2.05 and not index.needs_rebuild and index.drift() == pytest.approx(1.0)
    np.testing.assert_array_equal(index.search(xq, 5, nprobe=index.nlist).class_ids, truth)


def test_with_storage_copy_is_independent_of_removals() -> None:
    """`with_storage` shares the arrays it can; removing from one index leaves the other whole."""
    index = _index()
    other = index.with_storage("sq8")
    xq = _data(5, 3)
    before = other.search(xq, 3, nprobe=other.nlist, rerank=other.num_entries).class_ids
    index.remove(before[:, 0])
    np.testing.assert_array_equal(other.search(xq, 3, nprobe=other.nlist, rerank=other.num_entries).class_ids, before)
    assert not np.isin(index.search(xq, 3, nprobe=index.nlist).class_ids, before[:, 0]).any()


def test_labels_of_contiguous_and_sparse_class_ids() -> None:
    index = _index()  # classes 0..749: looked up by offset
    assert index.label_of(np.array([[0, 749], [-1, 750]])).tolist() == [["c0", "c749"], ["", ""]]
    index.remove([3])  # a gap: binary search from now on
    assert index.label_of(np.array([2, 3, 4, -1])).tolist() == ["c2", "", "c4", ""]


def test_searches_during_adds_and_removes_see_a_consistent_index() -> None:
    index = _index()
    queries, stop, errors = _data(32, 5), threading.Event(), []

    def searcher() -> None:
        while not stop.is_set():
            try:
                res = index.search(queries, 3, nprobe=4)
                assert res.class_ids.shape == (32, 3) and (res.class_ids[:, 0] >= 0).all()
            except Exception as exc:  # reported below
                errors.append(exc)
                return

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    for k in range(5):
        ids = 9000 + 10 * k + np.arange(10)
        index.add(_data(10, 10 + k), ids, {int(c): f"n{c}" for c in ids})
        assert index.remove(ids[:5]) > 0
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert index.num_classes == 750 + 25
