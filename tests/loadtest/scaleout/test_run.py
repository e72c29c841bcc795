"""The local scale-out run: a short real failover run."""

from __future__ import annotations

import numpy as np
import pytest

from megaclass.loadtest.scaleout.config import ScaleoutConfig
from megaclass.loadtest.scaleout.report import format_report
from megaclass.loadtest.scaleout.run import run_scaleout

from .conftest import nginx_available, require


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_failover_run_is_bounded_and_nothing_hangs(tiny_repo, tmp_path, protocol):
    """2 real replicas behind nginx, Locust for a few seconds, one replica SIGKILLed mid-run."""
    require(nginx_available(), "nginx is not installed (Debian package nginx)")
    users = 4
    cfg = ScaleoutConfig(
        replicas=2,
        users=users,
        phase_s=5.0,
        kill_after_s=2.0,
        protocol=protocol,
        client_timeout_s=5.0,
        direct_baseline=False,
        scaling=False,
        repository=tiny_repo,
        work_dir=tmp_path,
    )
    report = run_scaleout(cfg, log=lambda _: None)
    (phase,) = report.phases
    f = phase.failover
    why = format_report(report)  # the whole report when an assertion fails
    # nothing hung: Locust stopped by itself, nothing in flight, no request ran into its deadline
    assert phase.locust_exit is not None and phase.in_flight_at_stop == 0 and not phase.hung, why
    assert phase.latency_ms["max"] < cfg.client_timeout_s * 1000, why
    # both served before the kill; afterwards only the survivor, and it kept serving
    assert phase.per_replica.get("replica-1", 0) > 0 and phase.per_replica.get("replica-0", 0) > 0, why
    assert f["answered_by_killed_after_kill"] == 0, why
    assert f["ok_per_s_after_kill"] > 0, why
    # bounded errors: at most the requests in flight on the dead replica (one per user), all at the kill
    assert f["errors_before_kill"] == 0, why
    assert f["errors_after_kill"] <= users, why
    if f["errors_after_kill"]:
        assert f["last_error_after_kill_s"] < 1.0, why
        assert set(phase.errors) <= {"UNAVAILABLE", "502", "HTTP 502", "InferenceServerException"}, why
    assert phase.ok > 0 and np.isfinite(phase.latency_ms["p99"]), why
    assert (tmp_path / report.machine["started"] / "report.md").exists(), why
