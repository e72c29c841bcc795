"""The CPU budget measured for real: perf_analyzer against the tiny stack's `classify` (the one-hop
model on the cpu target: its stub does the work the encoder and retriever stubs do in the ensemble)."""

from __future__ import annotations

import dataclasses

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
    # The stub's own compute (encoder run + search, its thread's CPU time, sent as a metric): part of its CPU.
    assert 0 < budget.compute_us < us["stub:classify"]
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


def test_floor_models_serve_classifys_interface_and_are_measured(tiny_stack, tmp_path):
    """The do-nothing floors load in a real Triton: `classify_floor` answers with classify's four outputs
    (top-k rows, BYTES labels), and the budget of each reports its mean batch."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    from megaclass.loadtest.benchmarks.cpu_budget import FLOOR_MODELS, floor_repository, measure_cpu_budget
    from megaclass.python_backend.server.triton_server import free_port, running_server

    size = tiny_stack.images.shape[-1]
    repo = floor_repository(tmp_path / "floor", size, max_batch_size=8, instances=1, batching=True, top_k=3)
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    with running_server(repo, work_dir=tmp_path / "triton", **ports) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        x = np.zeros((2, 1, size, size), np.float32)
        inp = grpcclient.InferInput("IMAGE", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = client.infer("classify_floor", [inp])
        assert res.as_numpy("CLASS_IDS").shape == (2, 3) and res.as_numpy("SCORES").shape == (2, 3)
        assert res.as_numpy("LABELS").tolist() == [[b"label"] * 3] * 2
        assert res.as_numpy("INDEX_VERSION").shape == (2, 1)
        assert client.infer("identity", [inp]).as_numpy("OUTPUT").shape == x.shape
        for model in FLOOR_MODELS:
            budget = measure_cpu_budget(server, model, 4, window_s=1.5, warmup_s=1.0, shapes={"IMAGE": [1, size, size]})
            assert budget.requests_per_s > 10 and budget.us_per_request[f"stub:{model}"] > 0
            assert 1.0 <= budget.mean_batch <= 8.0


def test_budget_section_compares_with_the_floor(tiny_stack):
    from megaclass.loadtest.benchmarks.batching_bench import budget_section
    from megaclass.loadtest.benchmarks.cpu_budget import CpuBudget

    off = CpuBudget("classify", 32, 1000.0, 2, {"tritonserver": 300.0, "stub:classify": 900.0, "idle": 50.0})
    on = CpuBudget("classify", 32, 2500.0, 2, {"tritonserver": 200.0, "stub:classify": 400.0}, 10.0, 6.0)
    floor = CpuBudget("classify_floor", 32, 5000.0, 2, {"tritonserver": 150.0, "stub:classify_floor": 60.0}, 10.0, 6.0)
    onnx, index_dir = tiny_stack.repo.parent / "encoder.onnx", tiny_stack.repo.parent / "index"
    budgets = {"batching off": off, "batching on": on, "classify_floor (floor), on": floor}
    text = budget_section(budgets, onnx, tiny_stack.images.shape[-1], tiny_stack.serving, index_dir)
    assert "batch 6, the mean batch `classify` ran with batching on: 6.0" in text
    server_row = next(line for line in text.splitlines() if line.startswith("| tritonserver | 200 | 0 |"))
    assert server_row.endswith("| 150 | 1.33× | no |")
    stub_row = next(
        line for line in text.splitlines() if line.startswith("| the model's stub, compute timed alone | 400 |")
    )
    compute = float(stub_row.split("|")[3])
    assert compute > 0 and float(stub_row.split("|")[4]) == pytest.approx(400 - compute, abs=1)
    assert "timed in it" not in text  # the budget has no compute reported by the stub
    # with it: a row that takes the compute the stub measured while serving out of its CPU
    budgets["batching on"] = dataclasses.replace(on, compute_us=350.0)
    text = budget_section(budgets, onnx, tiny_stack.images.shape[-1], tiny_stack.serving, index_dir)
    assert "as the stub measured it while serving: 350 µs per image" in text
    assert "| the model's stub, compute timed in it | 400 | 350 | 50 | 60 | 0.83× | yes |" in text
