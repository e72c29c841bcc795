"""The 384-d text set: real all-MiniLM-L6-v2 embeddings, held-out queries, a growing cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from megaclass.loadtest.benchmarks.text_set import DIM, text_embedding_files, text_embedding_set

SENTENCES = [
    "A man is playing a guitar on the stage.",
    "Someone plays a musical instrument for the crowd.",
    "The kernel schedules tasks on every processor core.",
    "PostgreSQL stores each table as a set of files on disk.",
    "The compiler turns source code into machine instructions.",
    "A woman is slicing vegetables in the kitchen.",
    "Use the ls command to list the files in a folder.",
    "Python raises an exception when a key is missing.",
]


def _cache(tmp_path: Path) -> Path:
    """A cache holding a sentence list already, so nothing is downloaded."""
    cache = tmp_path / "text"
    cache.mkdir()
    (cache / "sentences.txt").write_text("\n".join(SENTENCES) + "\n")
    return cache


def test_embeddings_are_unit_384d_and_meaningful(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    base, queries, digest = text_embedding_set(4, 2, cache=cache)
    assert base.shape == (4, DIM) and queries.shape == (2, DIM) and base.dtype == np.float32 and len(digest) == 16
    both = np.concatenate([base, queries])
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1.0, atol=1e-5)
    assert len({tuple(np.round(r, 4)) for r in both}) == 6  # held-out queries: none is a base sentence
    # the encoder is real: the two guitar sentences are the closest pair of the whole list
    everything, _, _ = text_embedding_set(6, 2, cache=cache)
    vectors = np.concatenate([everything, queries])
    order = np.random.default_rng(0).permutation(len(SENTENCES))
    rows = list(order[:6]) + list(order[::-1][:2])
    sim = vectors @ vectors.T - 2 * np.eye(8)
    i, j = np.unravel_index(np.argmax(sim), sim.shape)
    assert {rows[i], rows[j]} == {0, 1}


def test_the_cache_grows_as_a_prefix_and_files_are_written(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    small, _, digest = text_embedding_set(3, 1, cache=cache)
    large, _, _ = text_embedding_set(5, 1, cache=cache)
    np.testing.assert_allclose(large[:3], small, atol=1e-6)  # the first three were reused, not re-encoded
    assert np.load(cache / f"base-{digest}-s0.npy").shape == (5, DIM)
    p, labels, q = text_embedding_files(5, tmp_path / "files", num_queries=2, cache=cache)
    assert np.load(p).shape == (5, DIM) and np.load(q).shape == (2, DIM)
    assert labels.read_text().split() == ["s0", "s1", "s2", "s3", "s4"]


def test_asking_for_more_than_the_corpus_is_a_clear_error(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(ValueError, match="corpus has 8 sentences"):
        text_embedding_set(8, 1, cache=_cache(tmp_path))
