"""Threads per model instance: each library gets the instance's share of the cores."""

from __future__ import annotations

import numpy as np

from megaclass.python_backend.index.config import IndexConfig
from megaclass.python_backend.index.routed_index import RoutedIndex
from megaclass.python_backend.serving.thread_budget import (
    cpu_threads_per_instance,
    size_index_threads,
    stub_thread_budget,
    usable_cores,
)


def test_threads_per_instance_share_the_cores():
    cores = usable_cores()
    assert cpu_threads_per_instance(1) == cores
    assert cpu_threads_per_instance(cores) == 1
    assert cpu_threads_per_instance(4 * cores) == 1  # never zero
    assert cpu_threads_per_instance(0) == cores


def test_stub_budget_is_capped_by_the_servers_openmp_setting(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert stub_thread_budget(1) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert stub_thread_budget(1) == usable_cores()


def test_size_index_threads_sets_every_backend():
    import faiss

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((200, 8)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    index = RoutedIndex.build(xb, np.arange(200), {i: str(i) for i in range(200)}, IndexConfig(nlist=4))
    before = index.search(xb[:5], top_k=3).class_ids
    assert index.cfg.threads == 0  # the libraries' default: one per core in every instance
    size_index_threads(index, 1)
    assert index.cfg.threads == 1 and faiss.omp_get_max_threads() == 1
    np.testing.assert_array_equal(index.search(xb[:5], top_k=3).class_ids, before)
