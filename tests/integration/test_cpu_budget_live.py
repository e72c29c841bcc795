"""The CPU budget measured for real: perf_analyzer against the tiny stack's `classify` (the one-hop
model on the cpu target: its stub does the work the encoder and retriever stubs do in the ensemble)."""

from __future__ import annotations

import pytest


def test_cpu_budget_accounts_for_server_stubs_and_generator(tiny_stack):
    from megaclass.loadtest.benchmarks.cpu_budget import measure_cpu_budget

    size = tiny_stack.images.shape[-1]
    budget = measure_cpu_budget(
        tiny_stack.server, "classify", 2, window_s=2.0, warmup_s=1.5, shapes={"IMAGE": [1, size, size]}
    )
    assert budget.requests_per_s > 10 and budget.window_s >= 2.0
    us = budget.us_per_request
    assert {"tritonserver", "stub:classify", "stub:encoder", "stub:retriever", "load generator", "idle"} <= set(us)
    assert us["tritonserver"] > 0 and us["stub:classify"] > 0
    assert us["stub:encoder"] < us["stub:classify"] / 10  # idle: the one hop does not call them
    assert all(v >= 0 for v in us.values())
    # The parts and the idle time add up to the machine's core time per request (idle is clamped at 0).
    total = sum(us.values())
    assert total >= budget.cores / budget.requests_per_s * 1e6 * 0.9


def test_budget_section_reports_the_tables_and_a_ceiling(tiny_stack):
    from megaclass.loadtest.benchmarks.batching_bench import budget_section
    from megaclass.loadtest.benchmarks.cpu_budget import CpuBudget

    parts = {"tritonserver": 300.0, "stub:encoder": 400.0, "stub:retriever": 300.0, "load generator": 150.0}
    off = CpuBudget("classify", 32, 1000.0, 2, {**parts, "idle": 50.0})
    on = CpuBudget("classify", 32, 2500.0, 2, {"tritonserver": 200.0, "load generator": 150.0, "idle": 30.0}, 10.0)
    onnx = tiny_stack.repo.parent / "encoder.onnx"
    text = budget_section(
        {"batching off": off, "batching on": on}, onnx, tiny_stack.images.shape[-1], tiny_stack.serving
    )
    assert "| tritonserver | 300 | 200 |" in text and "requests/s | 1000 | 2500 |" in text and "10 s window" in text
    compute = float(text.split("own compute is ")[1].split(" µs")[0])
    ceiling = float(text.split("cap the ratio at **")[1].split("×")[0])
    assert compute > 0 and ceiling == pytest.approx(1200 / (350 + compute), abs=0.01)
