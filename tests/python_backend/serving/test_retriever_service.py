"""Per-request options and one search per batch, without Triton."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megaclass.python_backend.serving.request_batching import InputError
from megaclass.python_backend.serving.retriever_service import (
    UNKNOWN_LABEL,
    EncodedLabels,
    RetrieverRequest,
    SearchTally,
    answer_requests,
    parse_options,
)

OPTS = {"default_top_k": 5, "max_top_k": 50, "num_classes": 10}


def test_parse_options_defaults_inputs_and_parameters():
    assert parse_options(None, None, None, **OPTS) == (5, None)
    assert parse_options(np.array([[3]], np.int32), np.array([[0.5]], np.float32), None, **OPTS) == (3, 0.5)
    assert parse_options(None, None, json.dumps({"top_k": 2, "threshold": 0.1}), **OPTS) == (2, 0.1)


@pytest.mark.parametrize("k", [0, -1, 11])
def test_top_k_out_of_range(k):
    with pytest.raises(InputError, match="top_k must be between 1 and 10"):
        parse_options(np.array([k]), None, None, **OPTS)


@pytest.mark.parametrize("t", [1.5, -2.0, float("nan")])
def test_threshold_out_of_range(t):
    with pytest.raises(InputError, match="threshold"):
        parse_options(None, np.array([t], np.float32), None, **OPTS)


class FakeIndex:
    """Deterministic stand-in recording calls: score = -|query - class| over 10 classes."""

    def __init__(self):
        self.calls = []

    def search(self, queries, top_k):
        self.calls.append((queries.shape[0], top_k))
        classes = np.arange(10)
        scores = -np.abs(queries[:, :1] - classes[None])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]

        class R:
            pass

        r = R()
        r.class_ids = order.astype(np.int64)
        r.scores = np.take_along_axis(scores, order, 1).astype(np.float32)
        r.labels = np.vectorize(lambda c: f"c{c}", otypes=[object])(order)
        return r


LABELS = EncodedLabels(np.arange(10), [f"c{c}" for c in range(10)])


def test_answer_requests_searches_once_per_top_k_and_slices_per_request():
    index = FakeIndex()
    reqs = [
        RetrieverRequest(np.array([[2.0], [7.0]], np.float32), top_k=1, threshold=None),
        InputError("bad request"),
        RetrieverRequest(np.array([[4.0]], np.float32), top_k=3, threshold=-1.5),
        RetrieverRequest(np.array([[5.0]], np.float32), top_k=1, threshold=None),
    ]
    out, stats = answer_requests(index, reqs, LABELS)
    assert stats["queries"] == 4
    assert index.calls == [(3, 1), (1, 3)]  # one search per distinct top_k, never the batch's largest
    assert out[0].class_ids.tolist() == [[2], [7]] and out[3].class_ids.tolist() == [[5]]
    assert out[0].labels.tolist() == [[b"c2"], [b"c7"]]
    assert isinstance(out[1], InputError)
    assert out[2].class_ids.tolist() == [[4, 3, 5]]
    strict = answer_requests(index, [RetrieverRequest(np.array([[4.0]], np.float32), 3, threshold=-0.5)], LABELS)
    strict = strict[0][0]
    assert strict.class_ids.tolist() == [[4, -1, -1]]
    assert strict.labels.tolist() == [[b"c4", UNKNOWN_LABEL.encode(), UNKNOWN_LABEL.encode()]]


def test_encoded_labels_empty_slots_unknown_and_sparse_ids():
    labels = EncodedLabels(np.array([3, 7, 20]), ["three", "seven", "twenty"])
    ids = np.array([[20, 3, -1, -1, 5]])
    scores = np.array([[0.9, 0.5, 0.2, -np.inf, 0.1]], np.float32)
    assert labels.take(ids, scores).tolist() == [[b"twenty", b"three", b"<unknown>", b"", b""]]


@pytest.mark.parametrize("storage", ["sq8", "pq"])
def test_answer_does_not_depend_on_batch_mates(storage):
    """A top-5 request batched with a top-100 one gets exactly its answer alone (compressed storage:
    the re-rank depth grows with top_k, so searching the batch with the largest k would change it)."""
    from megaclass.python_backend.index.config import IndexConfig
    from megaclass.python_backend.index.routed_index import RoutedIndex

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((2000, 16)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    ids = np.arange(2000, dtype=np.int64)
    from megaclass.python_backend.index.defaults import FAISS_FLAT

    # FAISS's scan, whose re-rank depth follows top_k (the native kernel's exact re-rank would hide it)
    cfg = IndexConfig(
        **{**FAISS_FLAT, "nlist": 16, "nprobe": 4, "storage": storage}, pq_m=8 if storage == "pq" else None
    )
    index = RoutedIndex.build(xb, ids, {int(i): f"class {i}" for i in ids}, cfg)
    q = xb[:40] + 0.3 * rng.standard_normal((40, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    small = RetrieverRequest(q[:20], top_k=5, threshold=None)
    alone = answer_requests(index, [small])[0][0]
    mixed = answer_requests(index, [RetrieverRequest(q[20:], top_k=100, threshold=None), small])[0][1]
    assert np.array_equal(mixed.class_ids, alone.class_ids)
    assert np.array_equal(mixed.scores, alone.scores)
    assert mixed.labels.tolist() == alone.labels.tolist()
    if storage == "pq":  # coarse codes: the old single search with the batch's largest k answered otherwise
        largest = index.search(q[:20], top_k=100)
        assert not np.array_equal(largest.class_ids[:, :5], alone.class_ids)


def test_search_tally_sends_at_most_once_per_interval():
    now = [0.0]
    tally = SearchTally(interval_s=0.5, clock=lambda: now[0])
    # After a quiet spell: sent at once.
    assert tally.add({"queries": 1, "candidates_scanned": 10, "nprobe": 4, "compute_s": 0.25}) == {
        "queries": 1, "candidates": 10, "nprobe": 4, "compute_s": 0.25}  # fmt: skip
    # Within the interval: summed, whatever the batch size.
    assert tally.add({"queries": 1, "candidates_scanned": 10, "nprobe": 4, "compute_s": 0.5}) is None
    tally.compute_s += 0.25  # the one-hop model's encoder run (TritonRetriever.timed)
    now[0] = 0.4
    assert tally.add({"queries": 8, "candidates_scanned": 80, "nprobe": 5}) is None
    now[0] = 0.6
    assert tally.add({"queries": 4, "candidates_scanned": 40, "nprobe": 5}) == {
        "queries": 13, "candidates": 130, "nprobe": 5, "compute_s": 0.75}  # fmt: skip
    # Nothing summed: nothing to send (all requests were rejected).
    now[0] = 2.0
    assert tally.add({}) is None
    assert tally.add({"queries": 1, "candidates_scanned": 1})["queries"] == 1


def test_answer_requests_counts_the_search_threads_cpu_time():
    """compute_s: the calling thread's CPU seconds in the index's searches (one per distinct top_k)."""
    import time

    class SlowIndex:
        dim = 4

        def search(self, queries, top_k):
            end = time.thread_time() + 0.02  # CPU work, not a sleep: a sleep takes no CPU time
            while time.thread_time() < end:
                pass
            n = len(queries)
            return type(
                "R", (), {"class_ids": np.zeros((n, top_k), np.int64), "scores": np.zeros((n, top_k), np.float32)}
            )()

    labels = EncodedLabels(np.arange(3), ["a", "b", "c"])
    requests = [RetrieverRequest(np.ones((1, 4), np.float32), k, None) for k in (2, 2, 3)]
    answers, stats = answer_requests(SlowIndex(), requests, labels)
    assert len(answers) == 3 and stats["queries"] == 3
    assert 0.04 <= stats["compute_s"] < 0.5  # two searches of >= 20 ms CPU each


def test_search_tally_sends_nprobe_only_when_it_changes():
    now = [0.0]
    tally = SearchTally(interval_s=0.5, clock=lambda: now[0])
    assert tally.add({"queries": 1, "nprobe": 4})["nprobe"] == 4
    now[0] = 1.0
    assert tally.add({"queries": 1, "nprobe": 4})["nprobe"] is None
    now[0] = 2.0
    assert tally.add({"queries": 1, "nprobe": 6})["nprobe"] == 6
