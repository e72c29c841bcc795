"""Shared by the python_backend tests: one OpenMP thread."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_openmp_thread():
    """One OpenMP thread: small problems, a shared 2-core machine (spinning OpenMP threads contend)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
