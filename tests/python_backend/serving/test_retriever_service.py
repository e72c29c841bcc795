"""Per-request options and one search per batch, without Triton."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megaclass.python_backend.serving.request_batching import InputError
from megaclass.python_backend.serving.retriever_service import (
    UNKNOWN_LABEL,
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


def test_answer_requests_searches_once_and_slices_per_request():
    index = FakeIndex()
    reqs = [
        RetrieverRequest(np.array([[2.0], [7.0]], np.float32), top_k=1, threshold=None),
        InputError("bad request"),
        RetrieverRequest(np.array([[4.0]], np.float32), top_k=3, threshold=-1.5),
    ]
    out, stats = answer_requests(index, reqs)
    assert stats["queries"] == 3
    assert index.calls == [(3, 3)]
    assert out[0].class_ids.tolist() == [[2], [7]]
    assert isinstance(out[1], InputError)
    assert out[2].class_ids.tolist() == [[4, 3, 5]]
    strict = answer_requests(index, [RetrieverRequest(np.array([[4.0]], np.float32), 3, threshold=-0.5)])[0][0]
    assert strict.class_ids.tolist() == [[4, -1, -1]] and strict.labels[0, 1] == UNKNOWN_LABEL


def test_search_tally_sends_small_batches_at_once_and_large_ones_in_sums():
    now = [0.0]
    tally = SearchTally(interval_s=0.5, small_batch=2, clock=lambda: now[0])
    assert tally.add({"queries": 1, "candidates_scanned": 10, "nprobe": 4}, requests=1) == {
        "queries": 1, "candidates": 10, "nprobe": 4}  # fmt: skip
    # Busy: large batches are summed until the interval has passed since the last send.
    assert tally.add({"queries": 16, "candidates_scanned": 160, "nprobe": 4}, requests=16) is None
    now[0] = 0.4
    assert tally.add({"queries": 8, "candidates_scanned": 80, "nprobe": 5}, requests=8) is None
    now[0] = 0.6
    assert tally.add({"queries": 4, "candidates_scanned": 40, "nprobe": 5}, requests=4) == {
        "queries": 28, "candidates": 280, "nprobe": 5}  # fmt: skip
    # Nothing summed: nothing to send, even for a small batch (all requests were rejected).
    assert tally.add({}, requests=1) is None
    # A small batch flushes whatever a burst left behind.
    now[0] = 0.7
    assert tally.add({"queries": 32, "candidates_scanned": 1}, requests=32) is None
    assert tally.add({"queries": 1, "candidates_scanned": 1}, requests=1)["queries"] == 33


def test_search_tally_sends_nprobe_only_when_it_changes():
    tally = SearchTally(small_batch=2)
    assert tally.add({"queries": 1, "nprobe": 4}, requests=1)["nprobe"] == 4
    assert tally.add({"queries": 1, "nprobe": 4}, requests=1)["nprobe"] is None
    assert tally.add({"queries": 1, "nprobe": 6}, requests=1)["nprobe"] == 6
