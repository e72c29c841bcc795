"""The load-test report from synthetic Locust and perf_analyzer CSVs (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from megaclass.loadtest.perf import PerfPoint
from megaclass.loadtest.perf import write_csv as write_perf_csv
from megaclass.loadtest.report import build_report, locust_prefix, read_perf_csv

from .conftest import fake_locust_run


def test_report_from_locust_and_perf_csvs(tmp_path):
    fake_locust_run(tmp_path / "run")
    perf_csv = tmp_path / "perf.csv"
    write_perf_csv(
        [PerfPoint("classify", "grpc", c, 100.0 * c, 1000 * c, 1500 * c, 1800 * c, 2000 * c, 1) for c in (1, 2, 4)],
        perf_csv,
    )
    rows = read_perf_csv(perf_csv)
    assert [r.concurrency for r in rows] == [1, 2, 4] and rows[0].request_rate == 0.0
    md, page = build_report(tmp_path / "out", locust=[tmp_path / "run_stats.csv"], perf=[perf_csv], title="T")
    text = md.read_text()
    assert text.startswith("# T")
    assert "1000 requests, 3 failures (0.30 %)" in text and "queue full" in text
    assert "classify grpc b=1" in text
    for png in ("locust_over_time.png", "perf_throughput.png", "perf_latency.png"):
        assert (tmp_path / "out" / "plots" / png).stat().st_size > 1000
        assert f"plots/{png}" in text and f'src="plots/{png}"' in page.read_text()
    with pytest.raises(ValueError):
        build_report(tmp_path / "none")
    with pytest.raises(FileNotFoundError):
        build_report(tmp_path / "none", locust=[tmp_path / "missing"])


def test_locust_prefix():
    for name in ("a/run_stats.csv", "a/run_stats_history.csv", "a/run.html", "a/run"):
        assert locust_prefix(Path(name)) == Path("a/run")
