"""The registry of training losses: name -> builder of a (loss, miner) pair.

Every loss takes the encoder's embeddings *before* L2 normalisation and `labels` (contiguous
class indices `0..num_classes-1`); the metric losses normalise through their distance, the
margin-softmax losses through their cosine, and the softmax baseline reads the raw embedding.
Miners (for `triplet` and `contrastive`) follow `TrainConfig.mining`, with d = Euclidean
distance between normalised embeddings, m = `TrainConfig.margin`:

- ``"all"``:      no mining, every triplet / pair of the batch;
- ``"semihard"``: triplets with d(a,p) < d(a,n) <= d(a,p) + m;
- ``"hard"``:     batch-hard, per anchor the farthest positive and the nearest negative;
- ``"easy"``:     easy-positive mining (Xuan et al., 2020): per anchor the nearest positive,
                  with a semi-hard negative for it. (PML's ``type_of_triplets="easy"`` keeps
                  only d(a,n) > d(a,p) + m, which has zero margin loss, so it cannot train.)

`LOSSES` is the registry; `tests/export/train/test_losses.py` fails when a registered loss has no test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pytorch_metric_learning import losses, miners
from torch import nn

from megaclass.export.config import TrainConfig
from megaclass.export.train.partial_fc_loss import PartialFCLoss

MINING = ("easy", "semihard", "hard", "all")


@dataclass
class LossBundle:
    """A loss module (may hold trainable parameters, e.g. class centres) and an optional miner."""

    loss: nn.Module
    miner: nn.Module | None
    classifier: bool  # True: the loss has a per-class head (needs every class in `num_classes`)


def build_miner(mining: str, margin: float) -> nn.Module | None:
    """The triplet miner for `mining` (see the module docstring for the exact selections)."""
    if mining == "all":
        return None
    if mining == "semihard":
        return miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard")
    if mining == "hard":
        return miners.BatchHardMiner()
    if mining == "easy":
        return miners.BatchEasyHardMiner(pos_strategy="easy", neg_strategy="semihard")
    raise ValueError(f"unknown mining {mining!r}; expected one of {MINING}")


def _triplet(cfg: TrainConfig, num_classes: int, dim: int) -> LossBundle:
    return LossBundle(losses.TripletMarginLoss(margin=cfg.margin), build_miner(cfg.mining, cfg.margin), False)


def _contrastive(cfg: TrainConfig, num_classes: int, dim: int) -> LossBundle:
    # loss = d(a, p) for positive pairs + [neg_margin - d(a, n)]^+ for negative pairs
    loss = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=cfg.contrastive_neg_margin)
    return LossBundle(loss, build_miner(cfg.mining, cfg.margin), False)


def _cosface(cfg: TrainConfig, num_classes: int, dim: int) -> LossBundle:
    m, s, k = cfg.cosface_margin, cfg.softmax_scale, cfg.partial_fc_classes
    return LossBundle(PartialFCLoss(num_classes, dim, "cosface", m, s, k, cfg.seed), None, True)


def _arcface(cfg: TrainConfig, num_classes: int, dim: int) -> LossBundle:
    m, s, k = cfg.arcface_margin, cfg.softmax_scale, cfg.partial_fc_classes
    return LossBundle(PartialFCLoss(num_classes, dim, "arcface", m, s, k, cfg.seed), None, True)


class SoftmaxClassifierLoss(nn.Module):
    """The baseline: a full linear head over every class and plain cross-entropy."""

    def __init__(self, num_classes: int, embedding_size: int) -> None:
        super().__init__()
        self.head = nn.Linear(embedding_size, num_classes)
        self.cross_entropy = nn.CrossEntropyLoss()

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None
    ) -> torch.Tensor:
        return self.cross_entropy(self.head(embeddings), labels)


def _softmax(cfg: TrainConfig, num_classes: int, dim: int) -> LossBundle:
    return LossBundle(SoftmaxClassifierLoss(num_classes, dim), None, True)


LOSSES: dict[str, Callable[[TrainConfig, int, int], LossBundle]] = {
    "triplet": _triplet,
    "contrastive": _contrastive,
    "cosface": _cosface,
    "arcface": _arcface,
    "softmax": _softmax,
}


def build_loss(cfg: TrainConfig, num_classes: int, embedding_dim: int) -> LossBundle:
    """The loss (and miner) named by `cfg.loss`."""
    if cfg.loss not in LOSSES:
        raise ValueError(f"unknown loss {cfg.loss!r}; registered: {sorted(LOSSES)}")
    if cfg.mining not in MINING:
        raise ValueError(f"unknown mining {cfg.mining!r}; expected one of {MINING}")
    return LOSSES[cfg.loss](cfg, num_classes, embedding_dim)
