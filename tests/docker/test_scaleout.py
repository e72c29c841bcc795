"""The local scale-out run: metric arithmetic, log parsing, and a short real failover run."""

from __future__ import annotations

import numpy as np
import pytest

from megaclass.loadtest.scaleout.run import (
    ScaleoutConfig,
    format_report,
    parse_triton_counters,
    queue_time_per_request_us,
    read_access_log,
    run_scaleout,
)
from tests.docker.conftest import nginx_available, require

METRICS = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="classify",version="1"} 100
nv_inference_request_success{model="retriever",version="1"} 100
nv_inference_request_success{model="encoder",version="1"} 100
nv_inference_request_success{model="idle",version="1"} 7
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds
nv_inference_queue_duration_us{model="classify",version="1"} 50
nv_inference_queue_duration_us{model="retriever",version="1"} 200000
nv_inference_queue_duration_us{model="encoder",version="1"} 100000
nv_inference_queue_duration_us{model="idle",version="1"} 999
nv_inference_count{model="encoder",version="1"} 100
"""


def test_counters_are_read_per_model():
    c = parse_triton_counters(METRICS)
    assert c[("nv_inference_request_success", "encoder")] == 100
    assert c[("nv_inference_queue_duration_us", "retriever")] == 200000
    assert not any(m == "nv_inference_count" for m, _ in c)


def test_queue_time_per_request_sums_the_models_that_served():
    before = parse_triton_counters(METRICS)
    after = dict(before)
    after[("nv_inference_request_success", "encoder")] += 50
    after[("nv_inference_queue_duration_us", "encoder")] += 50 * 1500  # 1.5 ms each
    after[("nv_inference_request_success", "retriever")] += 50
    after[("nv_inference_queue_duration_us", "retriever")] += 50 * 2500  # 2.5 ms each
    after[("nv_inference_request_success", "classify")] += 50
    after[("nv_inference_queue_duration_us", "classify")] += 50 * 4
    # "idle" served nothing: it adds nothing (the adapter rule's `> 0` filter)
    assert queue_time_per_request_us(before, after) == pytest.approx(1500 + 2500 + 4)
    assert queue_time_per_request_us(before, before) is None


def test_access_log_lists_every_replica_a_request_tried(tmp_path):
    log = tmp_path / "access.log"
    log.write_text(
        "1795768782.692|55759|502|127.0.0.1:38573|502|0.003\n"
        "1795768784.898|55759|200|127.0.0.1:38573, 127.0.0.1:50977|502, 200|0.005\n"
        "1795768784.899|55759|200|127.0.0.1:50977|200|0.004\n"
    )
    rows = read_access_log(log)
    assert [r[1] for r in rows] == [502, 200, 200]
    assert rows[1][2] == ["127.0.0.1:38573", "127.0.0.1:50977"]


def test_config_bounds_are_checked():
    with pytest.raises(ValueError):
        ScaleoutConfig(replicas=1, failover=True)
    with pytest.raises(ValueError):
        ScaleoutConfig(phase_s=5, kill_after_s=6)
    with pytest.raises(ValueError):
        ScaleoutConfig(protocol="smtp")


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
