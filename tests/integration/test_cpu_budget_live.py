"""The CPU budget measured for real: perf_analyzer against the tiny stack's ensemble."""

from __future__ import annotations


def test_cpu_budget_accounts_for_server_stubs_and_generator(tiny_stack):
    from megaclass.loadtest.cpu_budget import measure_cpu_budget

    size = tiny_stack.images.shape[-1]
    budget = measure_cpu_budget(
        tiny_stack.server, "classify", 2, window_s=2.0, warmup_s=1.5, shapes={"IMAGE": [1, size, size]}
    )
    assert budget.requests_per_s > 10
    us = budget.us_per_request
    assert {"tritonserver", "stub:encoder", "stub:retriever", "load generator", "idle"} <= set(us)
    assert us["tritonserver"] > 0 and us["stub:encoder"] > 0 and us["stub:retriever"] > 0
    assert all(v >= 0 for v in us.values())
    # The parts and the idle time add up to the machine's core time per request (idle is clamped at 0).
    total = sum(us.values())
    assert total >= budget.cores / budget.requests_per_s * 1e6 * 0.9
