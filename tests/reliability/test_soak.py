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


def _result(samples, failures=0, sampling_errors=()):
    from megaclass.loadtest.soak import RssSample, SoakResult

    return SoakResult(
        settings={"min_samples": 3}, started="", machine="", requests=100, failures=failures, rps=10.0,
        p50_ms=1.0, p99_ms=2.0, samples=[RssSample(t, {"tritonserver": rss}) for t, rss in samples],
        sampling_errors=list(sampling_errors),
    )  # fmt: skip


def test_verdict_needs_enough_samples_after_the_warm_up():
    flat = [(t, 100 << 20) for t in (0, 2, 6, 8, 10)]
    assert _result(flat).verdict(warmup_s=6)[0] == "met"
    assert _result(flat).verdict(warmup_s=9)[0] == "not measured"  # one sample after the warm-up
    assert _result([]).verdict(warmup_s=0) == ("not measured", "0 RSS sample(s) after the warm-up, 3 needed")
    assert _result(flat, failures=1).verdict(warmup_s=9)[0] == "missed"  # failed requests miss regardless
    leaking = [(t, (100 + 10 * t) << 20) for t in (6, 8, 10)]
    assert _result(leaking).verdict(warmup_s=6)[0] == "missed"
    status, why = _result(flat[:2], sampling_errors=["3.0 s: AccessDenied: pid 7"]).verdict(warmup_s=6)
    assert status == "not measured" and "1 sampling error(s), first: 3.0 s: AccessDenied: pid 7" in why


@pytest.mark.integration
def test_a_soak_with_the_sampler_broken_is_not_measured(stack, tmp_path, monkeypatch):
    """The RSS sampler failing on every sample: the verdict is "not measured", with the errors reported."""
    from megaclass.loadtest import soak

    def broken(server):
        raise PermissionError("cannot read /proc/<pid>/status")

    monkeypatch.setattr(soak, "sample_rss", broken)
    settings = SoakSettings(duration_s=6, warmup_s=2, users=2, sample_every_s=0.5)
    result = run_soak(stack.server, settings, tmp_path)
    assert result.requests > 0 and result.failures == 0 and result.samples == []
    assert len(result.sampling_errors) >= 5 and "PermissionError" in result.sampling_errors[0]
    status, why = result.verdict(settings.warmup_s)
    assert status == "not measured" and "sampling error(s)" in why
    text = soak_markdown(result, settings.warmup_s, "pytest broken sampler")
    assert "not measured" in text and ": met" not in text
