"""CPU per request of the server and of the load generator while a head-to-head point runs.

A server and its load generator share the machine's cores, so on a saturated machine every request
costs the server's CPU plus the load generator's. Over a window inside the measured part of a point
we read the CPU time of the server's process tree (tritonserver and its stubs, or uvicorn and its
workers) and of the load generator (every other process this benchmark started: Locust), and divide
by the requests served in it. The load generator's share bounds what any server can reach with it on
these cores: `cores / generator CPU per request`, even if the server cost nothing.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass

from megaclass.loadtest.server_metrics import process_cpu_seconds, tree_cpu_seconds


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds so far of the server's tree and of the load generator, at a moment."""

    server_s: float
    generator_s: float
    at: float  # time.monotonic()


def sample(server_pid: int, generator_pids: list[int] | None = None) -> CpuSample:
    """The server's tree is `server_pid` and its descendants; the load generator is `generator_pids`' trees,
    by default every other descendant of this process (the Locust processes the benchmark started)."""
    server = tree_cpu_seconds(server_pid)
    if generator_pids is None:
        me = os.getpid()
        generator = tree_cpu_seconds(me) - process_cpu_seconds(me) - server
    else:
        generator = sum(map(tree_cpu_seconds, generator_pids))
    return CpuSample(server, generator, time.monotonic())


@dataclass(frozen=True)
class CpuPerRequest:
    """CPU microseconds per request over a window: the server's, the load generator's."""

    server_us: float
    generator_us: float
    window_s: float

    @classmethod
    def between(cls, first: CpuSample, last: CpuSample, requests_per_s: float) -> CpuPerRequest:
        window = last.at - first.at
        done = requests_per_s * window
        if done <= 0:
            return cls(math.nan, math.nan, window)
        return cls(
            (last.server_s - first.server_s) / done * 1e6, (last.generator_s - first.generator_s) / done * 1e6, window
        )


class CpuWindow:
    """Samples the CPU split `start_s` after it starts and again `window_s` later, on a thread, while
    the caller runs the load: `with CpuWindow(pid, 5, 10) as w: run(); w.per_request(rps)`."""

    def __init__(self, server_pid: int, start_s: float, window_s: float):
        self.server_pid, self.start_s, self.window_s = server_pid, start_s, window_s
        self.samples: list[CpuSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for wait in (self.start_s, self.window_s):
            if self._stop.wait(wait):
                return
            self.samples.append(sample(self.server_pid))

    def __enter__(self) -> CpuWindow:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def per_request(self, requests_per_s: float) -> CpuPerRequest | None:
        """The split per request, the window's requests taken at the point's measured rate; None when
        the load ended before the window closed."""
        if len(self.samples) < 2:
            return None
        return CpuPerRequest.between(self.samples[0], self.samples[1], requests_per_s)


def generator_ceiling(generator_us: float, cores: int | None = None) -> float:
    """Requests per second no server can exceed with this load generator on the same cores: the
    cores' CPU time divided by what the load generator alone spends per request."""
    cores = cores or len(os.sched_getaffinity(0))
    return cores * 1e6 / generator_us if generator_us > 0 else math.inf
