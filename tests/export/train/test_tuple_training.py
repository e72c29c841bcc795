"""Training from tuples: pseudo-labels, PML indices, and a few steps end to end from a tuple file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megaclass.export.config import load_config
from megaclass.export.data.tuples import load_tuples, tuples_from_labels, write_tuples
from megaclass.export.train.tuple_training import given_indices, pseudo_labels, train_from_tuples


def test_pseudo_labels_join_similar_links_only():
    pos = np.array([[0, 1], [1, 2], [3, 4], [5, 6]])
    labels = pseudo_labels(pos, np.array([True, True, False, True]), 7)
    assert labels[0] == labels[1] == labels[2]
    assert len({labels[0], labels[3], labels[4], labels[5]}) == 4 and labels[5] == labels[6]


def test_given_indices_pairs_split_by_similarity():
    pos = np.array([[0, 1], [2, 3], [4, 5]])
    a1, p, a2, n = given_indices("pairs", pos, np.array([True, False, True]))
    assert a1.tolist() == [0, 4] and p.tolist() == [1, 5] and a2.tolist() == [2] and n.tolist() == [3]


def _blobs(classes: int, per: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A class = a bright square at its own place, with noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per)
    images = rng.integers(0, 40, (len(labels), 16, 16)).astype(np.uint8)
    for i, c in enumerate(labels):
        r, col = divmod(int(c), 4)
        images[i, r * 4 : r * 4 + 4, col * 4 : col * 4 + 4] = 255
    return images, labels


@pytest.mark.parametrize(("kind", "loss", "in_batch"), [("triplets", "triplet", False), ("pairs", "contrastive", True)])
def test_trains_from_a_tuple_file(tmp_path, kind, loss, in_batch):
    images, labels = _blobs(16, 6)
    np.save(tmp_path / "items.npy", images)
    rows, similar = tuples_from_labels(labels, kind, 300, seed=0)
    ts = load_tuples(write_tuples(tmp_path / "t.csv", kind, rows, similar), tmp_path / "items.npy")
    cfg = load_config(
        None,
        {
            "train": {"loss": loss, "mining": "hard", "epochs": 3, "batch_size": 48, "width": 8, "embedding_dim": 16},
            "tuples": {"in_batch_negatives": in_batch},
        },
    )
    result = train_from_tuples(ts, cfg, tmp_path / "run", progress=False)
    assert len(result.history) == 3 and all(np.isfinite(h["loss"]) for h in result.history)
    with torch.no_grad():
        x = torch.from_numpy(images[:, None].astype(np.float32) / 255.0)
        emb = result.model(x).numpy()
    sim = emb @ emb.T
    same = labels[:, None] == labels[None, :]
    assert sim[same].mean() > sim[~same].mean() + 0.1
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def test_labelled_losses_are_refused(tmp_path):
    images, labels = _blobs(4, 3)
    rows, _ = tuples_from_labels(labels, "triplets", 10)
    ts = load_tuples(write_tuples(tmp_path / "t.csv", "triplets", rows), images)
    with pytest.raises(ValueError, match="training from tuples takes loss"):
        train_from_tuples(ts, load_config(None, {"train": {"loss": "cosface"}}), tmp_path / "run", progress=False)
