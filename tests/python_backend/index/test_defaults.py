"""The index's "auto" defaults: the fast path where the machine supports it, FAISS flat otherwise."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from megaclass.python_backend.index.config import IndexConfig
from megaclass.python_backend.index.defaults import (
    FAISS_FLAT,
    MIN_COMPRESSED_ROWS,
    native_available,
    native_pq_m,
    resolve,
)
from megaclass.python_backend.index.routed_index import RoutedIndex

needs_native = pytest.mark.skipif(native_available() is not None, reason="the native kernel does not build here")


def _unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@needs_native
def test_default_config_builds_the_fast_configuration() -> None:
    n = 2 * MIN_COMPRESSED_ROWS
    index = RoutedIndex.build(_unit(n, 64), np.arange(n), {i: str(i) for i in range(n)}, IndexConfig(kmeans_iters=4))
    cfg = index.cfg
    assert (cfg.backend, cfg.storage, cfg.spill, cfg.pq_residual, cfg.pq_m) == ("native", "pq", 1, True, 32)
    assert index.manifest["params"]["backend"] == "native"  # recorded concrete, not "auto"


def test_small_sets_are_stored_flat_and_explicit_settings_are_kept() -> None:
    assert resolve(IndexConfig(), MIN_COMPRESSED_ROWS - 1, 128) == IndexConfig(**FAISS_FLAT)
    explicit = IndexConfig(backend="numpy", storage="sq8", spill=2, pq_residual=False)
    assert resolve(explicit, 10**6, 128) == explicit


@needs_native
def test_explicit_native_fills_in_the_rest() -> None:
    cfg = resolve(IndexConfig(backend="native"), 5000, 128)
    assert (cfg.storage, cfg.spill, cfg.pq_residual, cfg.pq_m) == ("pq", 1, True, 64)


@pytest.mark.parametrize(
    ("dim", "expected"),
    [(128, 64), (256, 64), (384, 96), (768, 128), (96, 48), (100, 50), (64, 32), (7, None)],
)
def test_native_pq_m_is_64_or_a_quarter_of_the_dimension_within_half_and_128(dim: int, expected: int | None) -> None:
    assert native_pq_m(dim, None) == expected


def test_dimension_the_kernel_cannot_split_falls_back_to_faiss_flat(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = resolve(IndexConfig(), 5000, 7)
    assert dataclasses.replace(cfg) == IndexConfig(**FAISS_FLAT)
    assert "using the FAISS backend with flat storage" in capsys.readouterr().err


def test_without_a_compiler_the_defaults_fall_back_with_a_one_line_notice(tmp_path) -> None:
    """A fresh kernel cache and a compiler that does not exist: FAISS flat, said once on stderr."""
    code = (
        "import numpy as np\n"
        "from megaclass.python_backend.index.config import IndexConfig\n"
        "from megaclass.python_backend.index.routed_index import RoutedIndex\n"
        "x = np.random.default_rng(0).standard_normal((3000, 32)).astype(np.float32)\n"
        "x /= np.linalg.norm(x, axis=1, keepdims=True)\n"
        "ix = RoutedIndex.build(x, np.arange(3000), {i: str(i) for i in range(3000)}, IndexConfig(kmeans_iters=2))\n"
        "print(ix.cfg.backend, ix.cfg.storage, ix.cfg.spill)\n"
        "print(ix.search(x[:5], 1).class_ids[:, 0].tolist())\n"
    )
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "MEGACLASS_NATIVE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["faiss flat 0", "[0, 1, 2, 3, 4]"]
    notices = [line for line in proc.stderr.splitlines() if line.startswith("megaclass index:")]
    assert len(notices) == 1 and "compiler" in notices[0], proc.stderr
