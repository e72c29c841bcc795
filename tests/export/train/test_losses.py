"""The loss registry: every registered loss trains; miners select what their docstring says.

`test_every_registered_loss_has_a_test` fails when a loss is added to `LOSSES` without a
`test_loss_<name>` function here.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from pytorch_metric_learning import miners

from megaclass.export.config import TrainConfig
from megaclass.export.data.synthetic import (
    SyntheticConfig,
    held_out_queries,
    iter_batches,
    samples_per_class,
    steps_per_epoch,
    training_samples,
)
from megaclass.export.enrol.embedding import embed_inputs
from megaclass.export.evaluate.metrics import retrieval_metrics
from megaclass.export.train.losses import LOSSES, build_loss, build_miner
from megaclass.export.train.training import train_on_batches
from megaclass.python_backend.serving.encoder_model import VectorEncoder

SYN = SyntheticConfig(num_classes=50, min_samples=10, max_samples=30, noise=0.5)
BATCH = 64


@pytest.fixture(scope="module")
def task():
    counts = samples_per_class(SYN)
    gallery = training_samples(SYN, np.arange(SYN.num_classes), counts)
    queries = held_out_queries(SYN, np.arange(SYN.num_classes), 4, counts)
    torch.manual_seed(0)
    untrained = VectorEncoder(SYN.input_dim, 32, 64)
    return counts, gallery, queries, precision(untrained, gallery, queries)


def precision(model, gallery, queries) -> float:
    (gx, gy), (qx, qy) = gallery, queries
    return retrieval_metrics(embed_inputs(model, qx), qy, embed_inputs(model, gx), gy)["precision_at_1"]


def train(loss: str, task, tmp_path, **changes) -> tuple[list[dict], float]:
    counts, gallery, queries, untrained = task
    cfg = TrainConfig(
        loss=loss, embedding_dim=32, batch_size=BATCH, epochs=8, lr=5e-3, partial_fc_classes=20, threads=1, **changes
    )
    torch.manual_seed(0)
    model = VectorEncoder(SYN.input_dim, 32, 64)
    result = train_on_batches(
        model,
        lambda epoch: iter_batches(SYN, BATCH, epoch, m_per_class=cfg.samples_per_class, counts=counts),
        steps_per_epoch(SYN, BATCH, counts),
        SYN.num_classes,
        cfg,
        tmp_path,
        progress=False,
    )
    return result.history, precision(result.model, gallery, queries)


def check_learns(history: list[dict], p1: float, untrained: float) -> None:
    assert history[-1]["loss"] < history[0]["loss"], [h["loss"] for h in history]
    assert p1 > untrained + 0.2 and p1 > 0.7, (untrained, p1)  # chance is 0.02


def test_loss_triplet(task, tmp_path):
    check_learns(*train("triplet", task, tmp_path, mining="semihard"), task[3])


def test_loss_contrastive(task, tmp_path):
    check_learns(*train("contrastive", task, tmp_path, mining="all"), task[3])


def test_loss_cosface(task, tmp_path):
    check_learns(*train("cosface", task, tmp_path), task[3])


def test_loss_arcface(task, tmp_path):
    check_learns(*train("arcface", task, tmp_path), task[3])


def test_loss_softmax(task, tmp_path):
    history, p1 = train("softmax", task, tmp_path)
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    assert p1 > task[3] + 0.15, (task[3], p1)


def test_every_registered_loss_has_a_test():
    missing = [name for name in LOSSES if f"test_loss_{name}" not in globals()]
    assert not missing, f"registered losses without a test_loss_<name> here: {missing}"


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="registered"):
        build_loss(TrainConfig(loss="nope"), 10, 8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mining"):
        build_loss(TrainConfig(mining="nope"), 10, 8)  # type: ignore[arg-type]


def test_classifier_losses_hold_their_class_parameters():
    for name in LOSSES:
        bundle = build_loss(TrainConfig(loss=name, partial_fc_classes=4), 10, 8)
        has_params = any(True for _ in bundle.loss.parameters())
        assert bundle.classifier == has_params, name


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(16, 4, generator=gen), dim=1)
    labels = torch.arange(16) % 4
    return emb, labels, torch.cdist(emb, emb)


def test_semihard_miner_selects_exactly_the_documented_triplets():
    margin = 0.3
    emb, labels, d = _batch(0)
    a, p, n = build_miner("semihard", margin)(emb, labels)
    got = set(zip(a.tolist(), p.tolist(), n.tolist(), strict=True))
    want = {
        (i, j, k)
        for i, j, k in itertools.permutations(range(16), 3)
        if labels[i] == labels[j] and labels[i] != labels[k] and d[i, j] < d[i, k] <= d[i, j] + margin
    }
    assert got == want and want


def test_hard_miner_is_batch_hard():
    emb, labels, d = _batch(1)
    miner = build_miner("hard", 0.2)
    assert isinstance(miner, miners.BatchHardMiner)
    a, p, n = miner(emb, labels)
    for i, j, k in zip(a.tolist(), p.tolist(), n.tolist(), strict=True):
        same = (labels == labels[i]) & (torch.arange(16) != i)
        other = labels != labels[i]
        assert torch.isclose(d[i, j], d[i][same].max()) and torch.isclose(d[i, k], d[i][other].min())


def test_easy_miner_takes_the_nearest_positive_and_a_farther_negative():
    emb, labels, d = _batch(2)
    a1, p, a2, n = build_miner("easy", 0.2)(emb, labels)  # pairs; the triplet loss joins them on the anchor
    assert len(a1) and torch.equal(a1, a2)
    for i, j, k in zip(a1.tolist(), p.tolist(), n.tolist(), strict=True):
        same = (labels == labels[i]) & (torch.arange(16) != i)
        assert torch.isclose(d[i, j], d[i][same].min())
        assert labels[k] != labels[i] and d[i, k] > d[i, j]


def test_all_means_no_miner():
    assert build_miner("all", 0.2) is None
