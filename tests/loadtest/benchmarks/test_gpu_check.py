"""The GPU check's report (the run itself needs a GPU machine: scripts/gpu_check.sh)."""

from __future__ import annotations

from megaclass.loadtest.benchmarks.gpu_check import markdown


def test_markdown_has_both_tables_and_the_batching_ratio():
    timings = {b: {"qps": q, "p50_ms": 1.0, "p99_ms": 2.0} for b, q in ((1, 100.0), (64, 6400.0), (1024, 9000.0))}
    point = {"p50_ms": 5.0, "p95_ms": 6.0, "p99_ms": 7.0, "failures": 0}
    report = {
        "device": "GPU X",
        "cpu": "x86_64, 16 cores",
        "index": {
            "classes": 1000,
            "dim": 16,
            "nlist": 32,
            "nprobe": 4,
            "build_s": 1.0,
            "rows": {"routed": {"recall": 0.96, "timings": timings}},
        },
        "serving": {
            "points": [
                {"mode": "dynamic batching", "concurrency": 32, "rps": 800.0, **point},
                {"mode": "no batching", "concurrency": 32, "rps": 200.0, **point},
            ]
        },
    }
    text = markdown(report)
    assert "Device: GPU X" in text and "| routed | 0.960 | 100 | 6,400 | 9,000 | 2.00 |" in text
    assert "| dynamic batching | 32 | 800 |" in text
    assert "c=32: 4.00x" in text
