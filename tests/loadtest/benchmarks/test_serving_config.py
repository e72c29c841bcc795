"""The head-to-head's configuration file and its checks."""

from __future__ import annotations

import pytest

from megaclass.loadtest.benchmarks.serving_config import HeadToHeadConfig, load_bench_config


def test_bench_config_file_and_overrides(tmp_path):
    bench, cfg = load_bench_config()
    assert bench.concurrency == (1, 8, 32, 64) and "baseline" in bench.targets
    assert cfg.serving.encoder.instances >= 1 and cfg.serving.encoder.max_batch_size >= 32
    bench, _ = load_bench_config(None, {"concurrency": (2,), "duration_s": 1.0})
    assert bench.concurrency == (2,) and bench.duration_s == 1.0
    bad = tmp_path / "bad.toml"
    bad.write_text("[bench]\nnope = 1\n")
    with pytest.raises(ValueError, match="nope"):
        load_bench_config(bad)
    with pytest.raises(ValueError):
        HeadToHeadConfig(targets=("triton-grpc", "nginx"))
