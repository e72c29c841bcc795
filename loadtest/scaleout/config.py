"""The settings of one local scale-out run; every number bounds it (time, users, replicas)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from megaclass.loadtest.scaleout.nginx import LoadBalancerConfig


@dataclass(frozen=True)
class ScaleoutConfig:
    """One scale-out run; every number bounds it (time, users, replicas)."""

    replicas: int = 2
    users: int = 16  # closed-loop Locust users (concurrent requests)
    phase_s: float = 15.0  # load time of each phase
    protocol: str = "grpc"  # grpc | http
    model: str = "classify"
    batch: int = 1  # images per request
    client_timeout_s: float = 10.0  # deadline of every request
    kill_after_s: float | None = None  # failover: kill a replica this long into the phase (None: phase_s / 2)
    direct_baseline: bool = True
    scaling: bool = True  # the nginx phases with 1 .. replicas replicas
    repeats: int = 1  # the scaling phases run this many times, interleaved (x1, x2, x1, x2, ...)
    failover: bool = True
    repository: Path | None = None  # None: build the tiny test repository
    work_dir: Path = Path("runs/scaleout")
    lb: LoadBalancerConfig = field(default_factory=LoadBalancerConfig)
    replica_start_timeout_s: float = 180.0

    def __post_init__(self) -> None:
        if self.protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {self.protocol!r}")
        if self.replicas < 1 or (self.failover and self.replicas < 2):
            raise ValueError("failover needs at least 2 replicas")
        if self.repeats < 1:
            raise ValueError("repeats must be at least 1")
        if self.kill_after_s is not None and not 0 < self.kill_after_s < self.phase_s:
            raise ValueError("kill_after_s must lie inside the phase")
