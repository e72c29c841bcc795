"""Reports, mixes, settings and the head-to-head's verdict and write-up, on synthetic CSVs (no server)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from megaclass.loadtest.benchmarks.serving_bench import (
    H2HPoint,
    HeadToHeadConfig,
    load_bench_config,
    read_csv,
    verdict,
    write_csv,
)
from megaclass.loadtest.locust_run import LocustSettings, locust_command, parse_mix, read_stats
from megaclass.loadtest.perf import PerfPoint
from megaclass.loadtest.perf import write_csv as write_perf_csv
from megaclass.loadtest.report import build_report, locust_prefix, read_perf_csv, update_doc_section

STATS_HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
    "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)
HISTORY_HEADER = (
    "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%,"
    "Total Request Count,Total Failure Count,Total Median Response Time,Total Average Response Time,"
    "Total Min Response Time,Total Max Response Time,Total Average Content Size"
)


def fake_locust_run(prefix: Path) -> None:
    """The three CSVs Locust writes, for a run with a few failures."""
    Path(f"{prefix}_stats.csv").write_text(
        STATS_HEADER + "\n"
        "grpc,classify b=1,900,0,10,11.5,2,80,300,90.0,0.0,10,12,13,14,20,30,50,70,80,80,80\n"
        "grpc,classify b=4,100,3,20,22.0,5,90,900,10.0,0.3,20,22,23,24,30,40,60,80,90,90,90\n"
        ",Aggregated,1000,3,11,12.5,2,90,360,100.0,0.3,11,13,14,15,21,32,55,75,90,90,90\n"
    )
    rows = [HISTORY_HEADER]
    for t in range(5):
        rows.append(
            f"{1000 + t},4,,Aggregated,{90 + t},{0.1 * t},10,11,12,13,14,15,16,17,18,19,20,{t * 100},{t},10,11,2,20,300"
        )
    rows.append("1002,4,grpc,classify b=1,80,0,10,11,12,13,14,15,16,17,18,19,20,150,0,10,11,2,20,300")
    Path(f"{prefix}_stats_history.csv").write_text("\n".join(rows) + "\n")
    Path(f"{prefix}_failures.csv").write_text(
        "Method,Name,Error,Occurrences\ngrpc,classify b=4,\"InferenceServerException('queue full')\",3\n"
    )


def test_parse_mix():
    assert parse_mix("1:60, 4:30,16") == ([1, 4, 16], [60.0, 30.0, 1.0])
    assert parse_mix("classify:3,retriever:1") == (["classify", "retriever"], [3.0, 1.0])
    for bad in ("", "1:-1", "1:x", "1:0"):
        with pytest.raises(ValueError):
            parse_mix(bad)


def test_locust_settings_are_checked_and_become_a_bounded_headless_command(tmp_path):
    s = LocustSettings(users=3, spawn_rate=3, run_time_s=5, user_classes=("TritonGrpcUser",), warmup_s=1)
    cmd = locust_command(s, tmp_path / "x", tmp_path / "x.html")
    assert "--headless" in cmd and cmd[cmd.index("-t") + 1] == "5s" and cmd[-1] == "TritonGrpcUser"
    assert cmd[cmd.index("--csv") + 1] == str(tmp_path / "x")
    with pytest.raises(ValueError):
        LocustSettings(user_classes=("NoSuchUser",))
    with pytest.raises(ValueError):
        LocustSettings(users=0)
    with pytest.raises(ValueError):
        LocustSettings(batch_mix="1:-2")


def test_read_stats_and_batch_sizes(tmp_path):
    fake_locust_run(tmp_path / "run")
    stats = read_stats(tmp_path / "run_stats.csv")
    assert [s.batch_size for s in stats] == [1, 4, None]
    total = stats[-1]
    assert (total.requests, total.failures, total.p99_ms) == (1000, 3, 75.0)


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


def test_doc_section_is_replaced_and_others_are_kept(tmp_path):
    doc = tmp_path / "docs" / "benchmarks.md"
    update_doc_section(doc, "mine", "## Mine\nv1")
    doc.write_text(doc.read_text() + "\n## Someone else's\nkeep me\n")
    update_doc_section(doc, "mine", "## Mine\nv2")
    update_doc_section(doc, "other", "## Other\nx")
    text = doc.read_text()
    assert text.startswith("# Benchmarks") and "v2" in text and "v1" not in text
    assert "keep me" in text and text.count("megaclass:mine:begin") == 1 and "## Other" in text


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


def test_bench_config_file_and_overrides(tmp_path):
    bench, cfg = load_bench_config()
    assert bench.concurrency == (1, 8, 32, 64) and "baseline" in bench.targets
    assert cfg.serving.encoder.instances >= 1 and cfg.serving.encoder.max_batch_size >= 32
    bench, _ = load_bench_config(None, {"concurrency": (2,), "duration_s": 1.0})
    assert bench.concurrency == (2,) and bench.duration_s == 1.0
    bad = tmp_path / "bad.toml"
    bad.write_text("[bench]\nnope = 1\n")
    with pytest.raises(ValueError, match="nope"):
        load_bench_config(bad)
    with pytest.raises(ValueError):
        HeadToHeadConfig(targets=("triton-grpc", "nginx"))
