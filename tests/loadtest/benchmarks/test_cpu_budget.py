"""CPU per request: the metric parsing and the ceiling arithmetic (the live measurement is in
tests/integration/test_cpu_budget_live.py)."""

from __future__ import annotations

import dataclasses

import pytest

from megaclass.loadtest.benchmarks.cpu_budget import (
    CpuBudget,
    compare_to_floor,
    completed_requests,
    compute_counts,
    markdown_table,
    model_counts,
    ratio_ceiling,
)

METRICS = """# HELP nv_inference_request_success Number of successful inference requests
nv_inference_request_success{model="classify",version="1"} 120
nv_inference_request_success{model="classify",version="2"} 30
nv_inference_request_success{model="encoder",version="1"} 150
nv_inference_request_failure{model="classify",reason="BACKEND",version="1"} 7
nv_inference_count{model="classify",version="1"} 600
nv_inference_exec_count{model="classify",version="1"} 100
nv_inference_exec_count{model="encoder",version="1"} 40
megaclass_compute_seconds_total{model="classify",version="1"} 0.375
megaclass_compute_seconds_total{model="classify",version="2"} 0.125
megaclass_retriever_queries_total{model="classify",version="1"} 4000
megaclass_retriever_queries_total{model="classify",version="2"} 1000
"""


def test_completed_requests_sums_versions_of_one_model_only():
    assert completed_requests(METRICS, "classify") == 150
    assert completed_requests(METRICS, "encoder") == 150
    assert completed_requests(METRICS, "retriever") == 0


def test_model_counts_give_requests_rows_and_executions():
    assert model_counts(METRICS, "classify") == (150, 600, 100)  # mean batch 6
    assert model_counts(METRICS, "encoder") == (150, 0, 40)
    assert model_counts(METRICS, "retriever") == (0, 0, 0)


def test_compute_counts_give_the_stubs_compute_seconds_and_queries():
    assert compute_counts(METRICS, "classify") == (0.5, 5000)  # 100 µs per query
    assert compute_counts(METRICS, "encoder") == (0, 0)


def test_compare_to_floor_takes_the_compute_out_of_the_stub_only():
    model = CpuBudget("classify", 32, 2000.0, 2, {"tritonserver": 180, "stub:classify": 300, "load generator": 130})
    floor = CpuBudget("classify_floor", 32, 4000.0, 2, {"tritonserver": 150, "stub:classify_floor": 60})
    server, stub = compare_to_floor(model, floor, compute_us=230)  # no compute reported by the stub: two rows
    assert (server.part, server.ratio) == ("tritonserver", pytest.approx(180 / 150))
    assert (stub.model_us, stub.compute_us, stub.floor_us) == (300, 230, 60)
    assert stub.part == "the model's stub, compute timed alone" and stub.ratio == pytest.approx(70 / 60)
    # the compute the stub measured while serving: a third row with it
    served = dataclasses.replace(model, compute_us=250.0)
    _, alone, in_stub = compare_to_floor(served, floor, compute_us=230)
    assert alone.ratio == pytest.approx(70 / 60)
    assert in_stub.part == "the model's stub, compute timed in it" and in_stub.ratio == pytest.approx(50 / 60)


def _budget(**us):
    return CpuBudget("classify", 32, 1000.0, 2, us)


def test_ratio_ceiling_counts_the_unbatched_whole_against_the_batched_fixed_parts():
    off = _budget(tritonserver=400, **{"stub:encoder": 500, "stub:retriever": 300, "load generator": 150, "idle": 50})
    on = _budget(tritonserver=250, **{"stub:encoder": 150, "stub:retriever": 100, "load generator": 150, "idle": 20})
    # unbatched total 1400 µs; batched fixed part 250 + 150 + the model's own 100 µs
    assert ratio_ceiling(off, on, model_compute_us=100) == pytest.approx(1400 / 500)


def test_markdown_table_lists_the_busy_parts_in_order_with_totals():
    off = _budget(tritonserver=400, **{"stub:encoder": 500, "stub:decode": 0, "load generator": 150, "idle": 50})
    on = _budget(tritonserver=250, **{"stub:encoder": 150, "stub:decode": 0.1, "load generator": 150, "idle": 20})
    lines = markdown_table({"batching off": off, "batching on": on}).splitlines()
    assert lines[0] == "| CPU µs per request | batching off | batching on |"
    assert [ln.split("|")[1].strip() for ln in lines[2:]] == [
        "tritonserver", "stub:encoder", "load generator", "idle", "**total**", "requests/s"]  # fmt: skip
    assert lines[-2] == "| **total** | 1100 | 570 |"
