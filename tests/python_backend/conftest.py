"""Shared by the routed-index tests: one OpenMP thread, and unit-row test data."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_openmp_thread():
    """One OpenMP thread: small problems, a shared 2-core machine (spinning OpenMP threads contend)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, float32 (what the index stores)."""
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered_prototypes(
    *, seed: int, groups: int, rows: int, classes: int, spread: float, queries: int, noise: float, dim: int = 32
) -> dict:
    """Unit prototypes around `groups` centres, `classes` class ids drawn at random (several prototypes
    per class), and queries near random prototypes: {"xb", "row_class", "labels", "xq"}."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, dim))
    xb = unit_rows(centres[rng.integers(0, groups, rows)] + spread * rng.standard_normal((rows, dim)))
    row_class = rng.integers(0, classes, rows).astype(np.int64)
    labels = {int(c): f"c{c}" for c in np.unique(row_class)}
    xq = unit_rows(xb[rng.integers(0, rows, queries)] + noise * rng.standard_normal((queries, dim)))
    return {"xb": xb, "row_class": row_class, "labels": labels, "xq": xq}


def same_up_to_ties(a, b) -> None:
    """Two search results agree: the same scores, and where class ids differ, only between tied scores."""
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
    diff = a.class_ids != b.class_ids
    assert np.allclose(a.scores[diff], b.scores[diff], atol=1e-4)
