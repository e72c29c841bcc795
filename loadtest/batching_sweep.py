"""Choose the Triton models' batching by measurement: maximum/preferred batch size, queue delay and
instance count, one setting at a time (coordinate descent: each step keeps the best value found so
far), each point a freshly generated repository on a real server driven by `saturate`. The chosen
values are written into the configuration file (`[serving.encoder]` / `[serving.retriever]`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from megaclass.loadtest.saturate import best_point, saturate
from megaclass.python_backend.server.triton_server import free_port, start_server
from megaclass.python_backend.serving.config import ModelServingConfig, ServingConfig

SECTIONS = ("encoder", "retriever")


@dataclass(frozen=True)
class SweepGrid:
    """The values tried for each setting (applied to both models; instances to the encoder alone:
    the retriever holds one index copy per instance)."""

    max_batch_sizes: tuple[int, ...] = (64, 256, 1024)
    queue_delays_us: tuple[int, ...] = (100, 500, 2000)
    encoder_instances: tuple[int, ...] = (1, 2, 4)


@dataclass(frozen=True)
class SweepPoint:
    max_batch_size: int
    max_queue_delay_us: int
    encoder_instances: int
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    failures: int


def with_setting(serving: ServingConfig, max_batch: int, delay_us: int, instances: int) -> ServingConfig:
    """`serving` with both models batching up to `max_batch` (preferred: it and its half and quarter)."""
    preferred = tuple(sorted({max(1, max_batch // 4), max(1, max_batch // 2), max_batch}))

    def model(m: ModelServingConfig, n: int) -> ModelServingConfig:
        return replace(m, max_batch_size=max_batch, preferred_batch_sizes=preferred, max_queue_delay_us=delay_us,
                       instances=n)  # fmt: skip

    return replace(serving, encoder=model(serving.encoder, instances), retriever=model(serving.retriever, 1))


def measure_setting(
    build: Callable[[ServingConfig, Path], Path],
    serving: ServingConfig,
    work: Path,
    inputs: dict[str, np.ndarray],
    levels: Sequence[int],
    seconds: float,
    model: str = "classify",
    processes: int = 4,
) -> SweepPoint:
    """Serve the repository `build(serving, folder)` makes and saturate it; its best point."""
    name = f"b{serving.encoder.max_batch_size}-d{serving.encoder.max_queue_delay_us}-i{serving.encoder.instances}"
    repo = build(serving, work / name)
    server = start_server(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                          work_dir=work / name / "triton", ready_timeout_s=serving.ready_timeout_s,
                          shm_default_byte_size=serving.shm_default_byte_size)  # fmt: skip
    try:
        points = saturate(server.grpc_url, model, inputs, levels, seconds, 1.0, processes, progress=None)
    finally:
        server.stop()
    best = best_point(points) or points[-1]
    enc = serving.encoder
    return SweepPoint(enc.max_batch_size, enc.max_queue_delay_us, enc.instances, best.concurrency, best.rps,
                      best.p50_ms, best.p99_ms, best.failures)  # fmt: skip


def sweep_batching(
    build: Callable[[ServingConfig, Path], Path],
    serving: ServingConfig,
    grid: SweepGrid,
    work: Path,
    inputs: dict[str, np.ndarray],
    levels: Sequence[int],
    seconds: float = 4.0,
    p99_limit_ms: float | None = None,
    progress: Any = print,
    processes: int = 4,
) -> tuple[ServingConfig, list[SweepPoint]]:
    """Instances, then batch size, then queue delay, each with the best of the earlier steps kept;
    best = most req/s without failures (within `p99_limit_ms` when given). Returns (chosen, points)."""
    current = {
        "instances": grid.encoder_instances[0],
        "batch": grid.max_batch_sizes[0],
        "delay": grid.queue_delays_us[0],
    }
    points: dict[tuple[int, int, int], SweepPoint] = {}
    for key, values in (("instances", grid.encoder_instances), ("batch", grid.max_batch_sizes),
                        ("delay", grid.queue_delays_us)):  # fmt: skip
        tried = []
        for v in values:
            setting = {**current, key: v}
            at = (setting["batch"], setting["delay"], setting["instances"])
            if at not in points:
                cfg = with_setting(serving, *at)
                points[at] = measure_setting(build, cfg, work, inputs, levels, seconds, processes=processes)
                if progress:
                    progress(f"sweep: {asdict(points[at])}")
            tried.append((v, points[at]))
        ok = [(v, p) for v, p in tried if not p.failures and (p99_limit_ms is None or p.p99_ms <= p99_limit_ms)]
        if ok:
            current[key] = max(ok, key=lambda t: t[1].rps)[0]
    return with_setting(serving, current["batch"], current["delay"], current["instances"]), list(points.values())


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v) if isinstance(v, str) else str(v)


def write_serving_sections(path: Path, serving: ServingConfig, note: str = "") -> None:
    """Replace (or add) the `[serving.encoder]` and `[serving.retriever]` tables of the TOML file
    `path` with `serving`'s values; the rest of the file is kept as it was."""
    text = path.read_text() if path.exists() else ""
    for section in SECTIONS:  # a table runs from its header to the next header
        text = re.sub(rf"(?ms)^\[serving\.{section}\]\n.*?(?=^\[|\Z)", "", text)
    blocks = [text.rstrip() + "\n\n" if text.strip() else ""]
    if note:
        blocks.append(f"# {note}\n")
    for section in SECTIONS:
        values = asdict(getattr(serving, section))
        blocks.append(f"[serving.{section}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items()))
        blocks.append("\n")
    path.write_text("".join(blocks).rstrip() + "\n")


def repository_builder(source: Path, export: Any) -> tuple[Callable[[ServingConfig, Path], Path], tuple[int, ...]]:
    """A builder of repositories from the newest encoder and index published in `source` (for the
    serving target each ServingConfig names), and the encoder's input item shape."""
    from megaclass.export.repository.generate import ModelShapes, build_repository, encoder_file_name, parse_config
    from megaclass.loadtest.benchmarks.serving_artifacts import newest_version_file

    enc_cfg = parse_config((source / "encoder" / "config.pbtxt").read_text())
    item = tuple(int(d) for d in enc_cfg.input[0].dims)
    shapes = ModelShapes(item[-1], int(enc_cfg.output[0].dims[-1]))

    def build(serving: ServingConfig, folder: Path) -> Path:
        encoder = newest_version_file(source / "encoder", encoder_file_name(serving.target))
        index = newest_version_file(source / "retriever", "index")
        repo = folder / "repository"
        build_repository(repo, encoder, index, shapes, serving, export, encoded_images=False)
        return repo

    return build, item
