"""Partial FC: class sampling, agreement with PML's full CosFace/ArcFace, sparse, bounded cost."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses

from megaclass.export.train.partial_fc_loss import PartialFCLoss, sample_classes


def test_sample_classes_by_hand():
    labels = torch.tensor([7, 3, 7, 9])
    ids, targets = sample_classes(labels, num_classes=100, num_sampled=6, generator=torch.Generator().manual_seed(0))
    assert ids[:3].tolist() == [3, 7, 9]  # the batch's classes first, sorted
    assert len(ids) == 6 and len(set(ids.tolist())) == 6 and int(ids.max()) < 100
    assert targets.tolist() == [1, 0, 1, 2]
    assert torch.equal(ids[targets], labels)


def test_sample_classes_covers_everything_when_k_reaches_c():
    labels = torch.tensor([2, 0])
    ids, targets = sample_classes(labels, num_classes=5, num_sampled=5)
    assert ids.tolist() == [0, 1, 2, 3, 4] and targets.tolist() == [2, 0]
    ids, _ = sample_classes(torch.arange(8), num_classes=1000, num_sampled=4)  # more positives than K
    assert ids.tolist() == list(range(8))


def test_negatives_are_uniform_over_the_other_classes():
    gen = torch.Generator().manual_seed(1)
    hits = torch.zeros(50)
    for _ in range(400):
        ids, _ = sample_classes(torch.tensor([0]), 50, 11, gen)
        hits[ids[1:]] += 1
    assert hits[0] == 0 and hits[1:].min() > 0.5 * hits[1:].mean()  # each of 49 classes drawn ~82 times


@pytest.mark.parametrize("kind", ["cosface", "arcface"])
def test_matches_pml_when_every_class_is_sampled(kind):
    torch.manual_seed(0)
    emb, labels = torch.randn(12, 8), torch.randint(0, 6, (12,))
    ours = PartialFCLoss(6, 8, kind=kind, margin=0.3, scale=16.0, num_sampled=6)
    if kind == "cosface":
        ref = losses.CosFaceLoss(6, 8, margin=0.3, scale=16.0)
    else:
        ref = losses.ArcFaceLoss(6, 8, margin=math.degrees(0.3), scale=16.0)
    with torch.no_grad():
        ref.W.copy_(ours.weight.T)
    torch.testing.assert_close(ours(emb, labels), ref(emb, labels), atol=1e-5, rtol=1e-5)


def test_cosface_logits_by_hand():
    loss = PartialFCLoss(2, 2, kind="cosface", margin=0.25, scale=10.0, num_sampled=2)
    with torch.no_grad():
        loss.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))  # centres are normalised
    logits, targets = loss.logits(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
    torch.testing.assert_close(logits, torch.tensor([[10.0 * (1.0 - 0.25), 0.0]]))
    assert targets.tolist() == [0]


def test_arcface_falls_back_past_pi():
    m = 0.5
    loss = PartialFCLoss(2, 2, kind="arcface", margin=m, scale=1.0, num_sampled=2)
    with torch.no_grad():
        loss.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    theta = 2.0  # theta + m < pi: cos(theta + m)
    logits, _ = loss.logits(torch.tensor([[math.cos(theta), math.sin(theta)]]), torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(math.cos(theta + m), abs=1e-5)
    theta = 3.0  # theta + m > pi: cos(theta) - m sin(m)
    logits, _ = loss.logits(torch.tensor([[math.cos(theta), math.sin(theta)]]), torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(math.cos(theta) - m * math.sin(m), abs=1e-5)


def test_gradient_is_sparse_and_touches_only_sampled_rows():
    torch.manual_seed(0)
    loss = PartialFCLoss(10_000, 16, num_sampled=64)
    emb = torch.randn(32, 16, requires_grad=True)
    labels = torch.randint(0, 10_000, (32,))
    value = loss(emb, labels)
    logits, _ = loss.logits(emb, labels)
    assert logits.shape == (32, 64)  # [B, K], whatever the class count
    value.backward()
    grad = loss.weight.grad
    assert grad.is_sparse
    rows = set(grad.coalesce().indices()[0].tolist())
    assert set(labels.tolist()) <= rows and len(rows) <= 64
    assert emb.grad is not None and torch.isfinite(emb.grad).all()


def test_sparse_adam_step_trains_it():
    torch.manual_seed(0)
    loss = PartialFCLoss(200, 8, kind="cosface", num_sampled=32, scale=10.0)
    emb = torch.nn.Parameter(torch.randn(40, 8))
    labels = torch.arange(40) % 20
    opt = torch.optim.SparseAdam(loss.sparse_parameters(), lr=0.05)
    dense = torch.optim.Adam([emb], lr=0.05)
    first = loss(emb, labels).item()
    for _ in range(60):
        opt.zero_grad()
        dense.zero_grad()
        loss(emb, labels).backward()
        opt.step()
        dense.step()
    assert loss(emb, labels).item() < 0.5 * first


def test_invalid_options():
    with pytest.raises(ValueError, match="kind"):
        PartialFCLoss(10, 4, kind="sphereface")
    with pytest.raises(ValueError, match="num_sampled"):
        PartialFCLoss(10, 4, num_sampled=0)


def test_training_loop_steps_at_a_million_classes(tmp_path):
    """The training loop (SparseAdam on the centre table) with partial FC over 1,000,000 classes,
    K = 256 centres per step: a few steps run, and the checkpoint holds the whole [C, D] table."""
    import numpy as np

    from megaclass.export.config import TrainConfig
    from megaclass.export.data.synthetic import (
        SyntheticConfig,
        build_synthetic_encoder,
        iter_batches,
        samples_per_class,
    )
    from megaclass.export.train.training import train_on_batches

    syn = SyntheticConfig(num_classes=1_000_000, input_dim=16)
    cfg = TrainConfig(
        loss="cosface", embedding_dim=8, width=4, batch_size=128, epochs=1, partial_fc_classes=256, threads=1
    )
    counts = samples_per_class(syn)
    torch.manual_seed(0)
    model = build_synthetic_encoder(syn, cfg)

    def batches(epoch):
        stream = iter_batches(syn, cfg.batch_size, epoch, counts=counts)
        return [next(stream) for _ in range(3)]

    result = train_on_batches(model, batches, 3, syn.num_classes, cfg, tmp_path, progress=False)
    assert result.history[0]["steps"] == 3 and np.isfinite(result.history[0]["loss"])
    ckpt = torch.load(result.checkpoint_path, weights_only=True)
    assert ckpt["loss_state"]["weight"].shape == (1_000_000, 8)
