"""CPU per request of the server's process tree and of the load generator, from real processes."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest

from megaclass.loadtest.benchmarks.cpu_split import CpuPerRequest, CpuSample, CpuWindow, generator_ceiling, sample

# Burns `s` CPU seconds, says so, then idles until killed.
BURN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\nprint('done', flush=True)\ntime.sleep(60)"


def test_per_request_divides_each_trees_cpu_by_the_windows_requests():
    split = CpuPerRequest.between(CpuSample(1.0, 2.0, 10.0), CpuSample(1.5, 2.2, 12.0), requests_per_s=1000)
    assert split.window_s == 2.0
    assert split.server_us == pytest.approx(250.0) and split.generator_us == pytest.approx(100.0)
    assert math.isnan(CpuPerRequest.between(CpuSample(0, 0, 1), CpuSample(1, 1, 2), 0).server_us)


def test_the_ceiling_is_the_cores_time_over_the_load_generators_cost():
    assert generator_ceiling(500.0, cores=2) == pytest.approx(4000.0)
    assert generator_ceiling(0.0, cores=2) == math.inf


def test_sample_splits_the_servers_tree_from_the_other_children():
    """A 'server' whose child burns 0.3 s, beside a 'load generator' that burns 0.6 s."""
    server = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {BURN.format(s=0.3)!r}])"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    generator = subprocess.Popen([sys.executable, "-c", BURN.format(s=0.6)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "done" and generator.stdout.readline().strip() == "done"
        split = sample(server.pid, [generator.pid])  # both started with this test: their CPU so far
    finally:
        for p in (server, generator):
            p.kill()
            p.wait()
    # each tree: its burn plus its interpreters' start-up
    assert 0.3 <= split.server_s < 0.3 + 0.5
    assert 0.6 <= split.generator_s < 0.6 + 0.5


def test_a_window_samples_twice_unless_the_load_ends_first():
    with CpuWindow(server_pid=1, start_s=0.05, window_s=0.1) as window:
        time.sleep(0.4)
    assert len(window.samples) == 2 and window.per_request(100.0) is not None
    with CpuWindow(server_pid=1, start_s=5.0, window_s=5.0) as short:
        pass
    assert short.samples == [] and short.per_request(100.0) is None
