"""Shared by the routed-index tests: unit-row test data, prototype files, comparing results."""

from __future__ import annotations

import numpy as np
import pytest


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


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """P.npy (3000 unit rows, 16-d), L.txt (three prototypes per label) and Q.npy (200 queries near them)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 16))
    xb = unit_rows(centres[rng.integers(0, 20, 3000)] + 0.6 * rng.standard_normal((3000, 16)))
    labels = [f"label {i // 3}" for i in range(3000)]  # three prototypes per class
    xq = unit_rows(xb[rng.integers(0, 3000, 200)] + 0.4 * rng.standard_normal((200, 16)))
    d = tmp_path_factory.mktemp("files")
    np.save(d / "P.npy", xb)
    (d / "L.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    np.save(d / "Q.npy", xq)
    return {"dir": d, "xb": xb, "labels": labels, "xq": xq}
