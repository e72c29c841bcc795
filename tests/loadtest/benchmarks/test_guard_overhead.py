"""The front's overhead benchmark runs end to end on the tiny stack (its figures: docs/benchmarks.md)."""

from __future__ import annotations

import pytest

from megaclass.loadtest.benchmarks.guard_overhead import measure

pytestmark = pytest.mark.integration


def test_every_path_is_measured() -> None:
    result = measure(requests=20, block=10)
    assert set(result) == {"http direct", "http front", "grpc direct", "grpc front"}
    assert all(0 < r["p50_ms"] <= r["p99_ms"] for r in result.values())
