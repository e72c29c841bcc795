"""The peer libraries in the index benchmark: each finds the true classes on a small clustered set."""

from __future__ import annotations

import numpy as np
import pytest

from megaclass.loadtest.benchmarks.index_methods import Workload, exact_method
from megaclass.loadtest.benchmarks.index_peers import (
    available_peers,
    describe_peers,
    hnswlib_run,
    scann_run,
    usearch_run,
)


@pytest.fixture(scope="module")
def workload() -> Workload:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32)).astype(np.float32)
    xb = centres[rng.integers(0, 40, 4000)] + 0.4 * rng.standard_normal((4000, 32)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    ids = np.arange(4000) // 2  # two prototypes per class: aggregation matters
    xq = xb[rng.permutation(4000)[:256]] + 0.05 * rng.standard_normal((256, 32)).astype(np.float32)
    exact, _ = exact_method(xb, ids, 2)
    truth = exact(xq, 10, 0)
    return Workload(xb, ids, {}, xq[128:], truth[128:], xq[:128], truth[:128], 10, None)


def test_every_peer_is_installed_by_setup() -> None:
    present = available_peers()
    assert all(present.values()), present  # scripts/setup.sh installs requirements-bench.txt and scann
    assert describe_peers(present).startswith("peers: scann 1.3.5, usearch")
    assert "absent: hnswlib" in describe_peers({**present, "hnswlib": None})


@pytest.mark.parametrize("make", [scann_run, usearch_run, hnswlib_run], ids=["scann", "usearch", "hnswlib"])
def test_peer_reaches_the_target_on_held_out_queries_and_names_its_setting(workload: Workload, make) -> None:
    args = (workload, 0.9, 64, 2) if make is scann_run else (workload, 16, 0.9, 64, 2)
    run, search = make(*args)
    assert run.recall >= 0.85 and "=" in run.setting and run.build_s > 0 and run.bytes_per_class > 0
    found = search(workload.xq)
    assert found.shape == (128, 10) and search(workload.xq[:1]).shape == (1, 10)  # batch 1 too
    assert np.mean(found[:, 0] == workload.truth[:, 0]) >= 0.85  # top-1 class agrees with exact search


@pytest.mark.parametrize("make", [usearch_run, hnswlib_run], ids=["usearch", "hnswlib"])
def test_hnsw_peers_report_an_ef_that_ran(workload: Workload, make) -> None:
    """Below the neighbours asked (top_k x prototypes per class = 20) the libraries search with ef = 20
    anyway: the setting in the table is never below it."""
    run, _ = make(workload, 16, 0.5, 64, 2)
    assert int(run.setting.split("=")[1]) >= workload.top_k * workload.mult
