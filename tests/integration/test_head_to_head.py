"""The head-to-head command end to end, tiny and short: both servers, Locust, CSV, plots, docs section."""

from __future__ import annotations

import math

import pytest

from megaclass.export.config import replace
from megaclass.loadtest.benchmarks.serving_bench import run_head_to_head
from megaclass.loadtest.benchmarks.serving_config import HeadToHeadConfig, load_bench_config
from megaclass.loadtest.benchmarks.serving_report import write_outputs
from megaclass.python_backend.serving.config import ModelServingConfig, ServingConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_head_to_head_smoke(tiny_stack, tmp_path):
    _, cfg = load_bench_config()
    small = ModelServingConfig(max_batch_size=16, preferred_batch_sizes=(8, 16), max_queue_delay_us=1000)
    cfg = replace(cfg, serving=ServingConfig(encoder=small, retriever=small))
    bench = HeadToHeadConfig(
        concurrency=(1, 4),
        duration_s=4.0,  # the CPU window (from warm-up + 2.5 s, at least 0.5 s) ends before Locust does
        warmup_s=2.0,  # long enough on a loaded 2-core CI machine
        targets=("triton-grpc", "baseline", "floor-http"),
        image_count=16,
    )
    run = run_head_to_head(tmp_path / "out", bench, cfg, repository=tiny_stack.repo, log=lambda *_: None)
    assert [(p.target, p.concurrency) for p in run.points] == [
        ("triton-grpc", 1), ("triton-grpc", 4), ("baseline", 1), ("baseline", 4), ("floor-http", 1), ("floor-http", 4),
    ]  # fmt: skip
    for p in run.points:
        assert p.failures == 0 and p.requests > 0 and p.rps > 0 and p.p99_ms >= p.p50_ms > 0
    assert all(math.isnan(p.mean_encoder_batch) for p in run.points if p.target == "baseline")
    assert all(p.mean_encoder_batch >= 1 for p in run.points if p.target != "baseline")
    # every point's CPU split, over a window inside its measured part
    assert all(p.server_cpu_us > 0 and p.generator_cpu_us > 0 for p in run.points)

    doc = tmp_path / "docs" / "benchmarks.md"
    written = write_outputs(run, tmp_path / "out", doc, "megaclass bench serving --test")
    text = doc.read_text()
    assert "Serving head-to-head" in text and "megaclass bench serving --test" in text
    assert "What bounds Triton here" in text and "Triton floor: a do-nothing classify (HTTP)" in text
    assert "img/serving_h2h_throughput.png" in text and (doc.parent / "img" / "serving_h2h_latency.png").exists()
    assert written["csv"].read_text().startswith("target,concurrency")
