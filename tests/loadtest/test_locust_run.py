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
