"""The head-to-head's verdict and its CSV round trip, on synthetic points (no server)."""

from __future__ import annotations

import csv
import math

from megaclass.loadtest.benchmarks.serving_bench import H2HPoint, read_csv, verdict
from megaclass.loadtest.reporting import write_csv


def _points(triton_rps: float, triton_p99: float) -> list[H2HPoint]:
    nan = math.nan
    return [
        H2HPoint("baseline", 32, 1000, 0, 100.0, 100.0, 50, 80, 120, nan),
        H2HPoint("baseline-tuned", 32, 1000, 0, 150.0, 150.0, 40, 70, 100, nan),
        H2HPoint("triton-grpc", 32, 1000, 0, triton_rps, triton_rps, 20, 30, triton_p99, 8.0),
    ]


def test_verdict_needs_twice_the_throughput_and_a_lower_p99():
    assert verdict(_points(250, 60))[0]
    assert not verdict(_points(150, 60))[0]  # not fast enough
    assert not verdict(_points(250, 200))[0]  # p99 not lower
    assert not verdict(_points(250, 60), concurrency=8)[0]  # no points there


def test_head_to_head_csv_round_trip(tmp_path):
    pts = _points(250, 60)
    write_csv(pts, tmp_path / "h.csv")
    back = read_csv(tmp_path / "h.csv")
    assert back[2] == pts[2] and math.isnan(back[0].mean_encoder_batch)
    with open(tmp_path / "h.csv") as f:
        assert next(csv.reader(f))[0] == "target"
