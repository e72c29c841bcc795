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
