"""The stub watchdog's decisions, without a server (the live behaviour: test_faults.py)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
from collections import deque

import pytest

from megaclass.python_backend.server.watchdog import (
    ModelRefused,
    Recovery,
    StubWatchdog,
    stub_identity,
    stub_shm_region,
)

STUB_CMDLINE = [
    "/tmp/w/backends/python/triton_python_backend_stub", "/repo/retriever/3/model.py",
    "triton_python_backend_shm_region_0f1e", "1048576", "1048576", "4242", "/tmp/w/backends/python",
    "336", "retriever_0_1", "DEFAULT",
]  # fmt: skip


def test_stub_command_line_is_understood():
    assert stub_identity(STUB_CMDLINE) == ("retriever", "retriever_0_1")
    assert stub_shm_region(STUB_CMDLINE) == "triton_python_backend_shm_region_0f1e"
    for other in ([], ["/usr/bin/python", "x.py", "y"], ["tritonserver", "--model-repository=/r"]):
        assert stub_identity(other) is None and stub_shm_region(other) is None


class FakeServer:
    """What the watchdog uses of a TritonServer; `restart` is recorded."""

    def __init__(self, proc: subprocess.Popen):
        self.process, self.stopping, self.restarts = proc, False, 0
        self.http_url, self.ready_timeout_s = "127.0.0.1:1", 5
        self._log_tail, self.shm_regions = deque(maxlen=50), set()

    def is_running(self) -> bool:
        return self.process.poll() is None

    def restart(self, timeout: float) -> None:
        self.restarts += 1


@pytest.fixture
def server():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield FakeServer(proc)
    finally:
        proc.kill()
        proc.wait()


def _dead_stub(watchdog, model="retriever", explicit=True):
    watchdog._recover(Recovery(model, f"{model}_0_0", 99999, "reload" if explicit else "restart", time.monotonic()))


def test_a_dead_stub_reloads_its_model(server, monkeypatch):
    w = StubWatchdog(server, explicit=True)
    reloaded = []
    monkeypatch.setattr(w, "_reload", reloaded.append)
    _dead_stub(w)
    assert reloaded == ["retriever"] and server.restarts == 0
    assert w.recoveries[0].recovered_at is not None and w.recoveries[0].error is None


def _refuse(times: list, n: int):
    """A `_reload` that the server refuses the first `n` times."""

    def reload(model):
        times.append(model)
        if len(times) <= n:
            raise ModelRefused("HTTP 400: bad index")

    return reload


def test_a_refused_reload_is_tried_again_then_left_without_restart(server, monkeypatch):
    """The repository's version does not load: a restart would not load it either."""
    w = StubWatchdog(server, explicit=True, reload_attempts=3, reload_retry_s=0.01)
    calls = []
    monkeypatch.setattr(w, "_reload", _refuse(calls, 99))
    _dead_stub(w)
    assert len(calls) == 3 and server.restarts == 0 and "reload refused" in w.recoveries[0].error
    assert "fix the repository" in "".join(server._log_tail)


def test_a_passing_refusal_is_overcome_by_trying_again(server, monkeypatch):
    w = StubWatchdog(server, explicit=True, reload_attempts=3, reload_retry_s=0.01)
    calls = []
    monkeypatch.setattr(w, "_reload", _refuse(calls, 1))
    _dead_stub(w)
    assert len(calls) == 2 and w.recoveries[0].recovered_at is not None and w.recoveries[0].error is None


def test_an_unanswered_reload_restarts_the_server(server, monkeypatch):
    w = StubWatchdog(server, explicit=True)
    monkeypatch.setattr(w, "_reload", lambda m: (_ for _ in ()).throw(urllib.error.URLError("refused")))
    _dead_stub(w)
    assert server.restarts == 1 and w.recoveries[0].action == "restart"


def test_without_model_control_a_dead_stub_restarts_the_server(server):
    w = StubWatchdog(server, explicit=False)
    _dead_stub(w, explicit=False)
    assert server.restarts == 1 and w.recoveries[0].recovered_at is not None


def test_restarts_are_capped(server):
    w = StubWatchdog(server, explicit=False, max_restarts=2)
    for _ in range(4):
        _dead_stub(w, explicit=False)
    assert server.restarts == 2
    assert "gave up" in w.recoveries[-2].error and w._stop.is_set()


def test_an_exited_server_is_restarted(server):
    w = StubWatchdog(server, explicit=True)
    server.process.kill()
    server.process.wait()
    w.check_once()
    assert server.restarts == 1 and w.recoveries[0].instance == "tritonserver"


def test_an_unresponsive_server_is_restarted(server):
    """The process runs but /v2/health/live does not answer (here: nothing listens at all)."""
    w = StubWatchdog(server, explicit=True, unresponsive_after_s=0.3)
    w.check_once()
    assert server.restarts == 0  # not yet: one failed probe is not enough
    time.sleep(0.4)
    w.check_once()
    assert server.restarts == 1 and "has not answered /v2/health/live" in "".join(server._log_tail)


def test_a_stopping_server_is_left_alone(server):
    w = StubWatchdog(server, explicit=True)
    server.stopping = True
    server.process.kill()
    server.process.wait()
    w.check_once()
    assert server.restarts == 0 and w.recoveries == []


def test_no_children_no_action(server):
    w = StubWatchdog(server, explicit=True).start()
    try:
        time.sleep(1.2)
        assert w.recoveries == [] and w.dead_stubs() == []
    finally:
        w.stop()
    assert not w._thread.is_alive()


def test_recovery_seconds():
    r = Recovery("m", "m_0_0", 1, "reload", detected_at=10.0)
    assert r.seconds is None
    r.recovered_at = 12.5
    assert r.seconds == 2.5
