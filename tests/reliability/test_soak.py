"""The soak runner, short: steady Locust load on the suite's stack with RSS sampled. The long run
is `megaclass loadtest soak --duration 10m` (figures in docs/reliability.md)."""

from __future__ import annotations

import pytest

from megaclass.loadtest.soak import SoakSettings, parse_duration, run_soak, soak_markdown, write_outputs


def test_parse_duration():
    assert [parse_duration(t) for t in ("600", "90s", "10m", "1h", "1m30s", "2.5m")] == [600, 90, 600, 3600, 90, 150]
    for bad in ("", "10x", "m", "5m junk"):
        with pytest.raises(ValueError, match="bad duration"):
            parse_duration(bad)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="warm-up < duration"):
        SoakSettings(duration_s=10, warmup_s=10)


@pytest.mark.integration
@pytest.mark.slow
def test_short_soak_has_no_errors_and_flat_memory(stack, tmp_path):
    settings = SoakSettings(duration_s=16, warmup_s=6, users=4, sample_every_s=1)
    result = run_soak(stack.server, settings, tmp_path)
    written = write_outputs(result, settings.warmup_s, tmp_path, "pytest short soak")
    print(soak_markdown(result, settings.warmup_s, "pytest short soak"))
    assert result.requests > 50
    assert result.failures == 0
    growth = result.growth(settings.warmup_s)
    assert {"tritonserver", "encoder_0_0", "retriever_0_0"} <= set(growth)
    # 10 s after warm-up is too short to show a slow leak; it does catch one of a request's size per request
    assert all(g < 15.0 for _, _, g in growth.values()), growth
    assert written["rss"].read_text().count("\n") == len(result.samples) + 1
