"""Locust settings, mixes and its statistics CSV (no Locust run)."""

from __future__ import annotations

import pytest

from megaclass.loadtest.locust_run import LocustSettings, locust_command, parse_mix, read_stats

from .conftest import fake_locust_run


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


def _latencies(prefix, times, failures, seconds, timeline):
    import json
    from pathlib import Path

    record = {
        "times_ms": times,
        "measured": {"seconds": seconds, "failures": failures, "warm": True},
        "timeline": timeline,
    }
    Path(f"{prefix}_latencies.json").write_text(json.dumps(record))


def test_parallel_locust_processes_split_the_users_and_their_records_merge_exactly(tmp_path):
    from megaclass.loadtest.locust_run import LocustResult, _split, merge_runs

    parts = _split(LocustSettings(users=5, spawn_rate=5, processes=2, seed=7))
    assert [p.users for p in parts] == [3, 2] and [p.seed for p in parts] == [7, 8]
    assert sum(p.spawn_rate for p in parts) == 5 and {p.processes for p in parts} == {1}
    with pytest.raises(ValueError):
        LocustSettings(users=2, processes=3)

    a, b = tmp_path / "a", tmp_path / "b"
    fake_locust_run(a), fake_locust_run(b)
    _latencies(a, {"grpc classify b=1": [1.0, 2.0, 3.0], "grpc classify b=4": [10.0]}, 1, 10.0,
               [{"t": 0, "ok": 4, "failed": 1, "p50_ms": 2.0, "p95_ms": 9.0}])  # fmt: skip
    _latencies(
        b, {"grpc classify b=1": [4.0, 5.0]}, 2, 12.0, [{"t": 0, "ok": 2, "failed": 0, "p50_ms": 5.0, "p95_ms": 5.0}]
    )
    merge_runs([a, b], tmp_path / "m")
    merged = LocustResult(tmp_path / "m", tmp_path / "m.html", 0, read_stats(tmp_path / "m_stats.csv"), "")
    assert merged.latencies_ms()["grpc classify b=1"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    m = merged.measured()
    assert (m.requests, m.failures, m.seconds) == (6 + 3, 3, 11.0)
    assert m.rows_per_s == pytest.approx((5 + 4) / 11.0)
    assert merged.percentiles_ms((50,)) == [3.5]
    total = merged.total
    assert (total.requests, total.failures, total.rps) == (2000, 6, 200.0)
    assert total.p50_ms == 3.5 and total.max_ms == 10.0  # exact, from the pooled times
    row = next(s for s in merged.stats if s.name == "classify b=1")
    assert row.requests == 1800 and row.p99_ms == pytest.approx(4.96)
    assert merged.timeline() == [{"t": 0, "ok": 6, "failed": 1, "p50_ms": 3.0, "p95_ms": pytest.approx(23 / 3)}]
