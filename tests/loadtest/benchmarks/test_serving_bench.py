"""The head-to-head's verdict and its CSV round trip, on synthetic points (no server)."""

from __future__ import annotations

import csv
import math

from megaclass.loadtest.benchmarks.serving_bench import H2HPoint, read_csv, verdict
from megaclass.loadtest.reporting import write_csv


def _points(triton_rps: float, triton_p99: float, triton_p50_c1: float = 1.2) -> list[H2HPoint]:
    nan = math.nan
    return [
        H2HPoint("baseline", 1, 1000, 0, 800.0, 800.0, 1.1, 1.3, 2.0, nan),
        H2HPoint("baseline-tuned", 1, 1000, 0, 900.0, 900.0, 1.0, 1.2, 2.0, nan),
        H2HPoint("triton-grpc", 1, 1000, 0, 700.0, 700.0, triton_p50_c1, 1.5, 2.0, 1.0),
        H2HPoint("baseline", 32, 1000, 0, 100.0, 100.0, 50, 80, 120, nan),
        H2HPoint("baseline-tuned-workers", 32, 1000, 0, 150.0, 150.0, 40, 70, 100, nan),
        H2HPoint("triton-grpc", 32, 1000, 0, triton_rps, triton_rps, 20, 30, triton_p99, 8.0),
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
    with open(tmp_path / "h.csv") as f:
        assert next(csv.reader(f))[0] == "target"
