"""The head-to-head's settings: which targets, which concurrency levels, how long, read from a TOML
file whose `[bench]` table is the benchmark's own and whose other tables configure megaclass
(the serving settings of the Triton repository under test).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from megaclass.export.config import MegaclassConfig, load_config

TARGETS = {
    "triton-grpc": "TritonGrpcUser",
    "triton-http": "TritonHttpUser",
    "baseline": "BaselineHttpUser",
    "baseline-tuned": "BaselineHttpUser",
    "baseline-tuned-workers": "BaselineHttpUser",
    "floor-grpc": "TritonGrpcUser",
    "floor-http": "TritonHttpUser",
}
TARGET_LABELS = {
    "triton-grpc": "Triton classify (gRPC)",
    "triton-http": "Triton classify (HTTP)",
    "baseline": "FastAPI baseline (HTTP)",
    "baseline-tuned": "FastAPI baseline, 1 ORT thread (HTTP)",
    "baseline-tuned-workers": "FastAPI baseline, 1 ORT thread, N uvicorn workers (HTTP)",
    "floor-grpc": "Triton floor: a do-nothing classify (gRPC)",
    "floor-http": "Triton floor: a do-nothing classify (HTTP)",
}
BASELINES = ("baseline", "baseline-tuned", "baseline-tuned-workers")
# Triton serving a `classify` that does no work (cpu_budget's classify_floor: the same input and outputs,
# batched and scaled like it): the most any Python-backend classify could serve with this load generator.
FLOORS = ("floor-grpc", "floor-http")


@dataclass(frozen=True)
class HeadToHeadConfig:
    """The benchmark's own settings (the `[bench]` table of the TOML file)."""

    concurrency: tuple[int, ...] = (1, 8, 32, 64)
    duration_s: float = 20.0
    warmup_s: float = 4.0
    batch_size: int = 1
    classes: int = 20000
    image_count: int = 256
    targets: tuple[str, ...] = (
        "triton-grpc", "triton-http", "baseline", "baseline-tuned", "baseline-tuned-workers", "floor-grpc", "floor-http",
    )  # fmt: skip
    baseline_handler: str = "threadpool"
    baseline_threads: int = 0  # "baseline": ONNX Runtime's default, as a user writes it
    tuned_baseline_threads: int = 1  # "baseline-tuned": the one option that closes most of the gap
    baseline_workers: int = 2  # "baseline-tuned-workers": uvicorn worker processes (one per core helps most)
    seed: int = 0
    # Locust processes generating the load (never more than the users): one process tops out near
    # 1,000 requests/s on this machine, below what either side serves at concurrency 32.
    locust_processes: int = 1

    def __post_init__(self) -> None:
        unknown = set(self.targets) - set(TARGETS)
        if unknown or not self.targets:
            raise ValueError(f"targets must be among {sorted(TARGETS)}, got {list(self.targets)}")
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError(f"concurrency levels must be positive, got {self.concurrency}")
        if self.duration_s <= 0 or self.warmup_s < 0 or self.batch_size < 1 or self.classes < 2:
            raise ValueError(f"invalid benchmark settings {self}")
        if self.locust_processes < 1:
            raise ValueError(f"locust_processes must be at least 1, got {self.locust_processes}")
        if self.baseline_workers < 1:
            raise ValueError(f"baseline_workers must be at least 1, got {self.baseline_workers}")
        if self.baseline_handler not in ("threadpool", "inline"):
            raise ValueError(f"baseline_handler must be 'threadpool' or 'inline', got {self.baseline_handler!r}")


def default_config_path() -> Path:
    """loadtest/benchmarks/bench_serving.toml, as installed."""
    return Path(str(resources.files("megaclass.loadtest.benchmarks") / "bench_serving.toml"))


def load_bench_config(
    path: Path | None = None, bench_overrides: dict | None = None
) -> tuple[HeadToHeadConfig, MegaclassConfig]:
    """The `[bench]` table as HeadToHeadConfig, everything else as megaclass's configuration."""
    with open(path or default_config_path(), "rb") as f:
        data = tomllib.load(f)
    bench = {**data.pop("bench", {}), **(bench_overrides or {})}
    fields = {f.name for f in dataclasses.fields(HeadToHeadConfig)}
    unknown = set(bench) - fields
    if unknown:
        raise ValueError(f"unknown [bench] option(s): {sorted(unknown)}; known: {sorted(fields)}")
    bench = {k: tuple(v) if isinstance(v, list) else v for k, v in bench.items()}
    return HeadToHeadConfig(**bench), load_config(None, data)


def baseline_settings(bench: HeadToHeadConfig, target: str) -> tuple[int, int]:
    """(ONNX Runtime threads, uvicorn workers) of a baseline target."""
    if target == "baseline":
        return bench.baseline_threads, 1
    return bench.tuned_baseline_threads, bench.baseline_workers if target == "baseline-tuned-workers" else 1
