"""The GPU check end to end as a dry run on the CPU (the same code the device call runs): the retrieval
table, the batching sweep on a real tritonserver, the saturation, and the files it leaves."""

from __future__ import annotations

import json

import pytest

from megaclass.export.config import load_config
from megaclass.loadtest.benchmarks.gpu_check import main

pytestmark = pytest.mark.integration


def test_dry_run_writes_the_section_the_config_and_the_docs_copy(tmp_path):
    out = tmp_path / "out"
    argv = ["--out", str(out), "--work", str(tmp_path / "work"), "--sizes", "3000", "--serving-classes", "3000",
            "--dim", "16", "--budget-mb", "1", "--batch-sizes", "8", "--delays-us", "500", "--instances", "1",
            "--sweep-concurrency", "4", "--concurrency", "2,4", "--seconds", "1", "--processes", "2"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "gpu_check.json").read_text())
    assert "retrieval_error" not in report and "serving_error" not in report, report
    (table,) = report["retrieval"]
    assert table["plan"]["mode"] == "index"  # no GPU: the routed index on the CPU
    rows = table["rows"]
    assert len(rows) == 4 and all(r["recall"] >= 0.95 for r in rows.values())
    assert rows["exact, torch cpu (float32)"]["recall"] == 1.0
    srv = report["serving"]
    assert srv["final"]["failures"] == 0 and srv["final"]["rps"] > 0
    assert 0 < srv["retriever_compute_share"] < 1
    text = (out / "gpu_check.md").read_text()
    assert "Device: **no GPU (dry run on the CPU)**" in text and "| 3,000 | routed, torch cpu |" in text
    assert "Chosen: max batch 8, queue delay 500 us, 1 encoder instances" in text
    assert load_config(out / "megaclass-gpu.toml").serving.encoder.max_batch_size == 8
    docs = (out / "benchmarks.md").read_text()
    assert docs.startswith("# Benchmarks") and "<!-- megaclass:gpu-path:begin -->" in docs
