"""The native backend: fused 4-bit PQ search compiled for this machine (python_backend/index/native/pq4.py)."""

from __future__ import annotations

import dataclasses
import threading

import faiss
import numpy as np
import pytest

from megaclass.python_backend.index.config import IndexConfig
from megaclass.python_backend.index.native import pq4 as pq4
from megaclass.python_backend.index.routed_index import RoutedIndex
from megaclass.python_backend.index.tuning import search_recall_at_k

from ..conftest import clustered_prototypes, same_up_to_ties, unit_rows


@pytest.fixture(scope="module")
def data() -> dict:
    return clustered_prototypes(seed=1, groups=30, rows=3000, classes=1200, spread=0.5, queries=70, noise=0.4)


def _build(data: dict, **kw: object) -> RoutedIndex:
    cfg = IndexConfig(**{"nlist": 24, "nprobe": 4, "kmeans_iters": 8, "storage": "pq", "pq_m": 16, "spill": 1,
                         "backend": "native", **kw})  # fmt: skip
    return RoutedIndex.build(data["xb"], data["row_class"], data["labels"], cfg)


def test_codes_are_the_nearest_sub_centroids_packed_two_per_byte(data: dict) -> None:
    index = _build(data)
    cent = index.codec["pq_centroids"]  # [m, 16, dsub]
    m, _, dsub = cent.shape
    x = data["xb"][:50]
    packed = pq4.pq4_codes(x, index.codec)
    assert packed.shape == (50, m // 2) and packed.dtype == np.uint8
    sub = x.reshape(50, m, dsub)
    want = np.argmin(((sub[:, :, None, :] - cent[None]) ** 2).sum(-1), axis=2)  # [50, m]
    got = np.stack([packed & 15, packed >> 4], axis=2).reshape(50, m)
    assert (got == want).mean() > 0.999  # float ties aside


def test_layout_puts_every_entry_in_its_clusters_blocks(data: dict) -> None:
    index = _build(data)
    lay = index._native.layout
    slot_row = lay["slot_row"]
    assert len(slot_row) % pq4.BLOCK == 0 and lay["codes"].shape[2] == pq4.BLOCK
    for c in range(index.nlist):
        first, size = lay["list_block"][c], lay["list_size"][c]
        rows = slot_row[first * pq4.BLOCK : first * pq4.BLOCK + size]
        want = np.sort(index._entry_row[index._entry_list == c])
        np.testing.assert_array_equal(np.sort(rows), want)
        pad = slot_row[first * pq4.BLOCK + size : (first + -(-size // pq4.BLOCK)) * pq4.BLOCK]
        assert (pad == -1).all()


@pytest.mark.parametrize("residual", [False, True])
def test_exact_at_full_probe_with_full_rerank(data: dict, residual: bool) -> None:
    index = _build(data, pq_residual=residual)
    truth = index.exact_search(data["xq"], 10)
    got = index.search(data["xq"], 10, nprobe=index.nlist, rerank=index.num_entries)
    same_up_to_ties(got, truth)
    assert got.stats["backend"] == "native"
    assert got.stats["candidates"] == pytest.approx(index.num_entries)


def test_agrees_with_the_faiss_backend(data: dict) -> None:
    index = _build(data, backend="faiss")
    want = index.search(data["xq"], 5, nprobe=4, rerank=40)
    index.use_backend("native")
    got = index.search(data["xq"], 5, nprobe=4, rerank=40)
    # Same probes and codes; the scan tables are quantised differently, so candidates differ near the cut.
    assert search_recall_at_k(got.class_ids, want.class_ids) >= 0.97
    assert got.stats["candidates"] == pytest.approx(want.stats["candidates"])


def test_every_build_target_gives_the_same_answers(data: dict) -> None:
    index = _build(data, pq_residual=True)
    native = index._native
    targets = {"portable": index._native_search(target="portable")}
    if native.simd:  # an AVX2 machine: also the AVX2 paths apart from any AVX-512 ones
        targets["avx2"] = index._native_search(target="avx2")
        assert targets["avx2"].simd == 1
    assert targets["portable"].simd == 0
    for name, other in targets.items():
        for nprobe, fetch, margin in ((2, 20, None), (5, 60, None), (index.nlist, 400, None), (6, 60, 0.05)):
            a = native.search(data["xq"], nprobe=nprobe, fetch=fetch, top_k=7, threads=2, probe_margin=margin)
            b = other.search(data["xq"], nprobe=nprobe, fetch=fetch, top_k=7, threads=1, probe_margin=margin)
            np.testing.assert_array_equal(a[0], b[0], err_msg=name)  # same integers, candidates, classes
            np.testing.assert_allclose(a[1], b[1], atol=1e-5, err_msg=name)
            # entries scanned, rows coded and re-scored, clusters probed
            np.testing.assert_array_equal(a[2], b[2], err_msg=name)


def test_the_kernel_refuses_nan_and_infinity_naming_the_first_row(data: dict) -> None:
    """RoutedIndex.search leaves the check of the values to the kernel (every build target does it)."""
    index = _build(data, pq_residual=True)
    targets = [index._native, index._native_search(target="portable")]
    for bad, row in ((np.nan, 5), (np.inf, 0), (-np.inf, 69)):
        xq = np.array(data["xq"], dtype=np.float32)
        xq[row, 3] = bad
        for kernel in targets:
            with pytest.raises(ValueError, match=f"NaN or infinity \\(first in row {row}\\)"):
                kernel.search(xq, nprobe=4, fetch=20, top_k=5, threads=2)
        with pytest.raises(ValueError, match=f"first in row {row}"):
            index.search(xq, top_k=5)  # float32, C-contiguous: validate_queries' fast path
    # the largest finite values are searched, not refused
    big = np.full_like(np.asarray(data["xq"][:2], dtype=np.float32), np.finfo(np.float32).max)
    assert index.search(big, top_k=5).class_ids.shape == (2, 5)


def test_route_table_holds_each_centroid_in_int8_within_half_a_step() -> None:
    rng = np.random.default_rng(3)
    cent = rng.standard_normal((37, 30)).astype(np.float32)  # 37: a partial last block; 30: dim padded to 32
    cent[5] = 0  # a zero centroid gets scale 0
    t = pq4.route_table(cent)
    codes = t["route_codes"]  # [blocks, dim4 / 4, 16, 4]
    assert codes.shape == (3, 8, pq4.ROUTE_LANES, 4) and codes.dtype == np.int8
    c8 = codes.transpose(0, 2, 1, 3).reshape(3 * pq4.ROUTE_LANES, 32)
    assert (c8[37:] == 0).all() and (c8[:, 30:] == 0).all() and np.abs(c8).max() <= 127
    scale = t["route_scale"][:37]
    assert (t["route_scale"][37:] == 0).all() and scale[5] == 0
    err = np.abs(cent - scale[:, None] * c8[:37, :30])
    assert (err <= scale[:, None] / 2 + 1e-6).all()
    np.testing.assert_array_equal(t["route_sum"], c8.astype(np.int64).sum(axis=1))
    np.testing.assert_allclose(t["route_l1"][:37], scale * np.abs(c8[:37]).sum(axis=1), rtol=1e-6)


def test_row_codes_decode_within_their_error_bounds() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((500, 33)).astype(np.float32)  # odd dim: the last nibble is padding
    x[:, 7] = 0.25  # a constant dimension gets step 0
    t = pq4.row_codes(x)
    codes, step = t["row_codes"], t["row_step"]
    assert codes.shape == (500, 33 + 17) and step[7] == 0
    c8 = codes[:, :33].astype(np.float64)
    fine = codes[:, 33:]
    c4 = np.stack([fine & 15, fine >> 4], axis=2).reshape(500, 34)[:, :33].astype(np.float64)
    assert c4.max() <= 14
    lo = x.min(axis=0)
    coarse = lo + c8 * step
    assert (np.abs(x - coarse) <= step / 2 + 1e-6).all()
    assert (np.abs(x - (coarse + (c4 - 7) / 14 * step)) <= step / 28 + 1e-6).all()


def test_probes_are_the_best_clusters_and_the_pool_is_re_ranked_exactly(data: dict) -> None:
    index = _build(data, pq_residual=True)
    nprobe = 3
    # With the pool holding every entry of the probed clusters, the answer is exact search over the rows
    # of the nprobe clusters with the best float32 route scores.
    got = index.search(data["xq"], 10, nprobe=nprobe, rerank=index.num_entries)
    top = np.argsort(-(data["xq"] @ index.centroids.T), axis=1)[:, :nprobe]
    for q, probes in enumerate(top):
        rows = np.unique(index._entry_row[np.isin(index._entry_list, probes)])
        scores = data["xb"][rows] @ data["xq"][q]
        best: dict[int, float] = {}
        for r, sc in zip(rows, scores, strict=True):
            c = int(data["row_class"][r])
            best[c] = max(best.get(c, -np.inf), float(sc))
        want = sorted(best.values(), reverse=True)[:10]
        np.testing.assert_allclose(got.scores[q], want, atol=1e-5)
    assert 0 < got.stats["exact_per_query"] < got.stats["coded_per_query"] <= index.num_entries


def test_near_ties_between_classes_are_settled_exactly() -> None:
    # Rows closer together than the 8-bit codes can tell apart: the re-rank must read them all in float32.
    rng = np.random.default_rng(6)
    base = unit_rows(rng.standard_normal((40, 32)))
    xb = unit_rows(np.repeat(base, 25, axis=0) + 1e-4 * rng.standard_normal((1000, 32)))
    row_class = np.arange(1000, dtype=np.int64)  # every near-copy its own class
    xq = unit_rows(base[:12] + 0.01 * rng.standard_normal((12, 32)))
    cfg = IndexConfig(nlist=8, nprobe=8, kmeans_iters=8, storage="pq", pq_m=16, spill=0, backend="native")
    index = RoutedIndex.build(xb, row_class, {int(c): str(c) for c in row_class}, cfg)
    got = index.search(xq, 10, nprobe=index.nlist, rerank=index.num_entries)
    same_up_to_ties(got, index.exact_search(xq, 10))
    assert got.stats["exact_per_query"] >= 10


def test_residual_codes_find_more_of_the_true_classes(data: dict) -> None:
    raw, residual = _build(data, pq_residual=False), _build(data, pq_residual=True)
    truth = raw.exact_search(data["xq"], 10).class_ids
    recall = {
        name: search_recall_at_k(ix.search(data["xq"], 10, nprobe=6, rerank=10).class_ids, truth)
        for name, ix in (("raw", raw), ("residual", residual))
    }
    assert recall["residual"] > recall["raw"], recall


def test_threads_and_concurrent_callers_give_the_same_answers(data: dict) -> None:
    index = _build(data, threads=1)
    want = index.search(data["xq"], 6)
    index.cfg = dataclasses.replace(index.cfg, threads=2)
    np.testing.assert_array_equal(index.search(data["xq"], 6).class_ids, want.class_ids)
    results: list[np.ndarray] = []

    def worker() -> None:  # callers that find the worker pool busy search on their own thread
        for _ in range(20):
            results.append(index.search(data["xq"], 6).class_ids)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 60
    for r in results:
        np.testing.assert_array_equal(r, want.class_ids)


def test_small_batches_missing_slots_and_empty_batches(data: dict) -> None:
    index = _build(data)
    one = index.search(data["xq"][:1], 3)
    np.testing.assert_array_equal(one.class_ids, index.search(data["xq"][:8], 3).class_ids[:1])
    many = index.search(data["xq"][:2], index.num_classes + 5, nprobe=index.nlist, rerank=index.num_entries)
    assert (many.class_ids[:, -5:] == -1).all() and np.isneginf(many.scores[:, -5:]).all()
    assert index.search(np.zeros((0, 32), np.float32), 4).class_ids.shape == (0, 4)


def test_add_remove_and_backend_switch_keep_the_layout_current(data: dict) -> None:
    index = _build(data, backend="faiss", pq_residual=False)
    index.use_backend("native")
    rng = np.random.default_rng(5)
    new = unit_rows(rng.standard_normal((3, 32)))
    index.add(new, np.array([5000, 5001, 5002]), {5000: "a", 5001: "b", 5002: "c"})
    found = index.search(new, 1, nprobe=index.nlist, rerank=index.num_entries)
    np.testing.assert_array_equal(found.class_ids[:, 0], [5000, 5001, 5002])
    gone = np.unique(data["row_class"])[:50]
    index.remove(gone)
    res = index.search(data["xq"], 10, nprobe=index.nlist, rerank=index.num_entries)
    assert not np.isin(res.class_ids, gone).any()
    same_up_to_ties(res, index.exact_search(data["xq"], 10))


def test_save_and_load_keep_residual_codes(data: dict, tmp_path) -> None:
    index = _build(data, pq_residual=True)
    want = index.search(data["xq"], 5)
    index.save(tmp_path / "ix")
    back = RoutedIndex.load(tmp_path / "ix")
    assert back.cfg.backend == "native" and back.cfg.pq_residual
    np.testing.assert_array_equal(back.search(data["xq"], 5).class_ids, want.class_ids)


def test_unsupported_combinations_are_refused(data: dict) -> None:
    with pytest.raises(ValueError, match="4-bit pq storage only"):
        _build(data, storage="sq8")
    with pytest.raises(ValueError, match="pq_bits=4"):
        _build(data, pq_bits=8)
    with pytest.raises(ValueError, match="native backend only"):
        _build(data, backend="faiss", pq_residual=True)
    index = _build(data, pq_residual=True)
    with pytest.raises(ValueError, match="native backend only"):
        index.use_backend("faiss")
    assert faiss.omp_get_max_threads() == 1  # the native backend leaves FAISS's threads alone


def test_a_dimension_that_fills_no_simd_register_is_searched_exactly() -> None:
    # dim 30, 10 sub-quantisers of 3: the routing table pads to 32, the row codes' SIMD loops leave tails.
    d = clustered_prototypes(seed=7, groups=12, rows=900, classes=300, spread=0.5, queries=25, noise=0.4, dim=30)
    cfg = IndexConfig(nlist=10, nprobe=3, kmeans_iters=8, storage="pq", pq_m=10, spill=1, backend="native",
                      pq_residual=True)  # fmt: skip
    index = RoutedIndex.build(d["xb"], d["row_class"], d["labels"], cfg)
    got = index.search(d["xq"], 8, nprobe=index.nlist, rerank=index.num_entries)
    same_up_to_ties(got, index.exact_search(d["xq"], 8))
    portable = index._native_search(target="portable").search(d["xq"], nprobe=3, fetch=40, top_k=8, threads=1)
    np.testing.assert_array_equal(index._native.search(d["xq"], nprobe=3, fetch=40, top_k=8, threads=2)[0], portable[0])


def test_probe_margin_drops_the_same_clusters_as_the_numpy_router(data: dict) -> None:
    index = _build(data, pq_residual=True)
    s = data["xq"] @ index.centroids.T
    order = np.argsort(-s, axis=1)[:, :5]
    top = np.take_along_axis(s, order, axis=1)
    margin = float(np.median(top[:, 0] - top[:, 2]))
    kept = top >= top[:, :1] - np.float32(margin)
    got = index.search(data["xq"], 10, nprobe=5, rerank=index.num_entries, probe_margin=margin)
    assert got.stats["probes_per_query"] == pytest.approx(kept.sum(axis=1).mean())
    assert 1 < got.stats["probes_per_query"] < 5
    # the answer: exact search over the rows of the kept clusters only
    for q in range(len(data["xq"])):
        rows = np.unique(index._entry_row[np.isin(index._entry_list, order[q][kept[q]])])
        best: dict[int, float] = {}
        for r, sc in zip(rows, data["xb"][rows] @ data["xq"][q], strict=True):
            best[int(data["row_class"][r])] = max(best.get(int(data["row_class"][r]), -np.inf), float(sc))
        want = sorted(best.values(), reverse=True)[:10]
        np.testing.assert_allclose(got.scores[q][: len(want)], want, atol=1e-5)
