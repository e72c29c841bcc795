"""Storage forms × scan backends: exact at full probe, the same answers across backends, spilling."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from megaclass.python_backend.index.config import IndexConfig
from megaclass.python_backend.index.defaults import FAISS_FLAT
from megaclass.python_backend.index.routed_index import RoutedIndex
from megaclass.python_backend.index.tuning import search_recall_at_k

from .conftest import clustered_prototypes, same_up_to_ties


@pytest.fixture(scope="module")
def data() -> dict:
    return clustered_prototypes(seed=0, groups=25, rows=2500, classes=1100, spread=0.6, queries=60, noise=0.5)


def _build(data: dict, **kw: object) -> RoutedIndex:
    cfg = IndexConfig(**{"nlist": 20, "nprobe": 3, "kmeans_iters": 8, **FAISS_FLAT, **kw})
    return RoutedIndex.build(data["xb"], data["row_class"], data["labels"], cfg)


@pytest.mark.parametrize("storage", ["flat", "fp16", "sq8", "pq"])
def test_exact_at_full_probe_with_full_rerank(data: dict, storage: str) -> None:
    index = _build(data, storage=storage, pq_m=8)
    truth = index.exact_search(data["xq"], 10)
    backends = ["faiss"] if storage == "pq" else ["faiss", "numpy", "torch"]
    for backend in backends:
        index.use_backend(backend)
        got = index.search(data["xq"], 10, nprobe=index.nlist, rerank=index.num_entries)
        same_up_to_ties(got, truth)
        assert got.stats["backend"] == backend and got.stats["storage"] == storage


@pytest.mark.parametrize("storage", ["flat", "fp16", "sq8"])
def test_backends_give_the_same_answers(data: dict, storage: str) -> None:
    index = _build(data, storage=storage, spill=1)
    answers = {}
    for backend in ("faiss", "numpy", "torch"):
        index.use_backend(backend)
        answers[backend] = index.search(data["xq"], 5, nprobe=3, rerank=40)
    for backend in ("numpy", "torch"):
        if storage == "flat":
            same_up_to_ties(answers[backend], answers["faiss"])
        else:  # approximate candidates may differ near the cut; the re-ranked answers barely do
            agree = search_recall_at_k(answers[backend].class_ids, answers["faiss"].class_ids)
            assert agree >= 0.97, (backend, agree)
        assert answers[backend].stats["candidates"] == pytest.approx(answers["faiss"].stats["candidates"])


def test_compressed_storage_recall_grows_with_rerank(data: dict) -> None:
    index = _build(data, storage="pq", pq_m=8)
    truth = index.exact_search(data["xq"], 10).class_ids
    recalls = [
        search_recall_at_k(index.search(data["xq"], 10, nprobe=index.nlist, rerank=r).class_ids, truth)
        for r in (10, 40, 160, 640)
    ]
    assert recalls == sorted(recalls) and recalls[-1] >= 0.99


def test_spilling_stores_copies_merges_duplicates_and_helps_at_low_nprobe(data: dict) -> None:
    plain = _build(data, spill=0)
    spilled = _build(data, spill=1)
    assert plain.num_entries == 2500
    assert 1.9 * 2500 <= spilled.num_entries <= 2 * 2500
    truth = plain.exact_search(data["xq"], 10).class_ids
    for backend in ("faiss", "numpy"):
        spilled.use_backend(backend)
        res = spilled.search(data["xq"], 10, nprobe=spilled.nlist)
        assert (res.class_ids == truth).mean() > 0.99
        for row in res.class_ids:  # a class spilled into two probed clusters still counts once
            assert len(set(row[row >= 0])) == (row >= 0).sum()
    spilled.use_backend("faiss")
    gain = []
    for nprobe in (1, 2, 3):
        r0 = search_recall_at_k(plain.search(data["xq"], 10, nprobe=nprobe).class_ids, truth)
        r1 = search_recall_at_k(spilled.search(data["xq"], 10, nprobe=nprobe).class_ids, truth)
        gain.append(r1 - r0)
    assert np.mean(gain) > 0


def test_balance_bounds_cluster_sizes(data: dict) -> None:
    index = _build(data, balance=1.5, spill=1)
    sizes = index.list_sizes()
    assert sizes.max() <= np.ceil(1.5 * index.num_entries / index.nlist) + 1
    assert index.imbalance() <= 1.55


def test_two_threads_give_the_same_answers(data: dict) -> None:
    one = _build(data, threads=1)
    two = RoutedIndex(
        cfg=dataclasses.replace(one.cfg, threads=2),
        centroids=one.centroids,
        vectors=one._vectors,
        row_class=one._row_class,
        entry_row=one._entry_row,
        entry_list=one._entry_list,
        classes=one._classes,
        labels=one._labels,
        codec=one.codec,
    )
    import faiss

    faiss.omp_set_num_threads(2)  # FAISS spreads the batch's queries over both threads (parallel mode 3)
    try:
        assert two._faiss[1].parallel_mode == 3
        a, b = one.search(data["xq"], 7), two.search(data["xq"], 7)
    finally:
        faiss.omp_set_num_threads(1)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)
    assert a.stats["candidates"] == pytest.approx(b.stats["candidates"])


@pytest.mark.gpu
def test_torch_backend_on_cuda_matches_faiss(data: dict) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    index = _build(data, device="cuda")
    want = index.search(data["xq"], 5)
    index.use_backend("torch")
    assert index._grouped["codes"].device.type == "cuda"
    same_up_to_ties(index.search(data["xq"], 5), want)


def test_with_storage_keeps_the_router_and_opq_rotation_is_orthogonal(data: dict) -> None:
    flat = _build(data, spill=1)
    pq = flat.with_storage("pq", pq_m=8)
    assert pq.cfg.storage == "pq" and pq.cfg.backend == "faiss"
    np.testing.assert_array_equal(pq.centroids, flat.centroids)
    np.testing.assert_array_equal(pq.list_sizes(), flat.list_sizes())
    opq = _build(data, storage="pq", pq_m=8, opq=True)
    r = opq.codec["opq_rotation"]
    np.testing.assert_allclose(r @ r.T, np.eye(r.shape[0]), atol=1e-4)
    truth = opq.exact_search(data["xq"], 5)
    same_up_to_ties(opq.search(data["xq"], 5, nprobe=opq.nlist, rerank=opq.num_entries), truth)
    with pytest.raises(ValueError, match="faiss or native backend"):
        opq.use_backend("numpy")


def test_configured_threads_hold_in_whichever_thread_searches(data: dict) -> None:
    import threading

    import faiss

    index = _build(data, threads=1)
    seen = []

    def worker() -> None:
        faiss.omp_set_num_threads(2)  # this thread's own OpenMP setting, as a server thread may have
        index.search(data["xq"][:4], 3)
        seen.append(faiss.omp_get_max_threads())

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [1]


def test_probe_margin_probes_the_same_clusters_in_every_backend(data: dict) -> None:
    index = _build(data, storage="sq8", spill=1)
    s = np.sort(data["xq"] @ index.centroids.T, axis=1)[:, ::-1][:, :6]
    margin = float(np.median(s[:, 0] - s[:, 3]))  # about half the queries probe fewer than 4
    want = (s >= s[:, :1] - np.float32(margin)).sum(axis=1).mean()
    answers = {}
    for backend in ("faiss", "numpy", "torch"):
        index.use_backend(backend)
        answers[backend] = index.search(data["xq"], 5, nprobe=6, rerank=index.num_entries, probe_margin=margin)
        assert answers[backend].stats["probes_per_query"] == pytest.approx(want)
        assert answers[backend].stats["probe_margin"] == margin
        # a margin of 0 probes the best cluster only; an unbounded one every nprobe cluster
        one = index.search(data["xq"], 5, nprobe=6, rerank=index.num_entries, probe_margin=0.0)
        same_up_to_ties(one, index.search(data["xq"], 5, nprobe=1, rerank=index.num_entries))
        wide = index.search(data["xq"], 5, nprobe=6, rerank=index.num_entries, probe_margin=1e9)
        same_up_to_ties(wide, index.search(data["xq"], 5, nprobe=6, rerank=index.num_entries))
    for backend in ("numpy", "torch"):
        same_up_to_ties(answers[backend], answers["faiss"])
        assert answers[backend].stats["candidates"] == pytest.approx(answers["faiss"].stats["candidates"])
    assert answers["faiss"].stats["candidates"] < wide.stats["candidates"]
    # the configured margin is the default; a negative or NaN one is refused
    index.cfg = dataclasses.replace(index.cfg, probe_margin=margin)
    assert index.search(data["xq"], 5, nprobe=6).stats["probes_per_query"] == pytest.approx(want)
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="probe_margin"):
            index.search(data["xq"], 5, nprobe=6, probe_margin=bad)
