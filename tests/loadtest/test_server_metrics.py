"""Triton's counters and the queue time per request (the autoscaling metric), on a sample page."""

from __future__ import annotations

import pytest

from megaclass.loadtest.server_metrics import parse_triton_counters, queue_time_per_request_us

METRICS = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="classify",version="1"} 100
nv_inference_request_success{model="retriever",version="1"} 100
nv_inference_request_success{model="encoder",version="1"} 100
nv_inference_request_success{model="idle",version="1"} 7
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds
nv_inference_queue_duration_us{model="classify",version="1"} 50
nv_inference_queue_duration_us{model="retriever",version="1"} 200000
nv_inference_queue_duration_us{model="encoder",version="1"} 100000
nv_inference_queue_duration_us{model="idle",version="1"} 999
nv_inference_count{model="encoder",version="1"} 100
"""


def test_counters_are_read_per_model():
    c = parse_triton_counters(METRICS)
    assert c[("nv_inference_request_success", "encoder")] == 100
    assert c[("nv_inference_queue_duration_us", "retriever")] == 200000
    assert not any(m == "nv_inference_count" for m, _ in c)


def test_queue_time_per_request_sums_the_models_that_served():
    before = parse_triton_counters(METRICS)
    after = dict(before)
    after[("nv_inference_request_success", "encoder")] += 50
    after[("nv_inference_queue_duration_us", "encoder")] += 50 * 1500  # 1.5 ms each
    after[("nv_inference_request_success", "retriever")] += 50
    after[("nv_inference_queue_duration_us", "retriever")] += 50 * 2500  # 2.5 ms each
    after[("nv_inference_request_success", "classify")] += 50
    after[("nv_inference_queue_duration_us", "classify")] += 50 * 4
    # "idle" served nothing: it adds nothing (the adapter rule's `> 0` filter)
    assert queue_time_per_request_us(before, after) == pytest.approx(1500 + 2500 + 4)
    assert queue_time_per_request_us(before, before) is None
