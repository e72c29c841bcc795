"""The head-to-head's verdict and its CSV round trip, on synthetic points (no server)."""

from __future__ import annotations

import csv
import math
from dataclasses import replace

from megaclass.loadtest.benchmarks.serving_bench import H2HPoint, read_csv, verdict
from megaclass.loadtest.reporting import write_csv


def _points(triton_rps: float, triton_p99: float, triton_p50_c1: float = 1.2) -> list[H2HPoint]:
    nan = math.nan
    return [
        H2HPoint("baseline", 1, 1000, 0, 800.0, 800.0, 1.1, 1.3, 2.0, nan),
        H2HPoint("baseline-tuned", 1, 1000, 0, 900.0, 900.0, 1.0, 1.2, 2.0, nan),
        H2HPoint("triton-grpc", 1, 1000, 0, 700.0, 700.0, triton_p50_c1, 1.5, 2.0, 1.0),
        H2HPoint("baseline", 32, 1000, 0, 100.0, 100.0, 50, 80, 120, nan),
        H2HPoint("baseline-tuned-workers", 32, 1000, 0, 150.0, 150.0, 40, 70, 100, nan, 9000.0, 4000.0),
        H2HPoint("triton-grpc", 32, 1000, 0, triton_rps, triton_rps, 20, 30, triton_p99, 8.0, 1500.0, 2500.0),
    ]


def test_verdict_is_judged_against_the_best_baseline_at_each_level():
    assert verdict(_points(450, 60))[0]
    assert not verdict(_points(350, 60))[0]  # 3x the plain baseline, not 3x the best one
    assert not verdict(_points(450, 110))[0]  # p99 not lower than the best baseline's
    assert not verdict(_points(450, 60, triton_p50_c1=1.4))[0]  # 1.4x the best p50 at concurrency 1
    assert verdict(_points(450, 60, triton_p50_c1=1.3))[0]  # within 1.3x
    assert not verdict(_points(450, 60), high=8)[0]  # no points there


def test_head_to_head_csv_round_trip(tmp_path):
    pts = _points(250, 60)
    write_csv(pts, tmp_path / "h.csv")
    back = read_csv(tmp_path / "h.csv")
    assert back[5] == pts[5] and math.isnan(back[0].mean_encoder_batch)
    assert math.isnan(back[0].server_cpu_us) and back[4].generator_cpu_us == 4000.0
    with open(tmp_path / "h.csv") as f:
        assert next(csv.reader(f))[0] == "target"


def test_the_cpu_table_gives_the_load_generators_ceiling_against_the_best_baseline():
    from megaclass.loadtest.benchmarks.serving_report import ceiling_paragraph, cpu_rows

    rows = cpu_rows(_points(450, 60), 32, cores=2)
    # the baseline point and the Triton point carry CPU figures; 2 cores / 2500 µs = 800 req/s = 5.33x 150
    assert [r[0] for r in rows] == [
        "FastAPI baseline, 1 ORT thread, N uvicorn workers (HTTP)",
        "Triton classify (gRPC)",
    ]
    assert rows[1][2:] == ["1500", "2500", "4000", "800", "5.33x"]
    assert "do not rule 3x out" in ceiling_paragraph(_points(450, 60), 32, cores=2)
    # a load generator that alone costs more than a third of the best baseline's share: 3x is out of reach
    slow = [
        p if p.target != "triton-grpc" or p.concurrency != 32 else replace(p, generator_cpu_us=5000.0)
        for p in _points(450, 60)
    ]
    text = ceiling_paragraph(slow, 32, cores=2)
    assert "at most 400 req/s = 2.67x" in text and "cannot be reached" in text
    assert cpu_rows(_points(450, 60), 1) == []  # nothing measured there


def test_a_do_nothing_classify_bounds_its_protocol_and_is_not_judged():
    from megaclass.loadtest.benchmarks.serving_report import ceiling_paragraph

    floor = H2HPoint("floor-grpc", 32, 1000, 0, 420.0, 420.0, 5, 8, 20, 16.0)
    points = [*_points(450, 60), floor]
    text = ceiling_paragraph(points, 32, cores=2)
    # the generator allows 800 req/s, the floor served 420: at most 2.80x the best baseline's 150
    assert "at most 420 req/s = 2.80x" in text and "do-nothing classify served 420" in text
    assert "cannot be reached" in text
    ok, why = verdict(points)
    assert ok and "floor" not in why  # judged: Triton's classify only
