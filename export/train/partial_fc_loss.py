"""Margin-softmax (CosFace / ArcFace) over a sampled subset of class centres: "partial FC".

An et al., "Partial FC: Training 10 Million Identities on a Single Machine" (2021). Each step
scores the batch only against K = `num_sampled` centres: every class present in the batch
(the positives) plus random other classes (negatives) up to K. Logits, their gradients and
the softmax are `[B, K]` whatever the class count C; the centre table `[C, D]` gets a sparse
gradient (only the K rows touched), so train it with an optimizer that takes sparse
gradients (`torch.optim.SparseAdam`; the training loop does this for parameters listed in
`sparse_parameters`). With K >= C it is the ordinary full margin-softmax.

With cos = <e/|e|, w_j/|w_j|>, s = `scale`, m = `margin` and y the true class:

- CosFace: logit_y = s (cos_y - m),        logit_j = s cos_j;
- ArcFace: logit_y = s cos(theta_y + m),   logit_j = s cos_j,  theta_y = arccos(cos_y); where
  theta_y + m > pi (cos_y < cos(pi - m)) it uses s (cos_y - m sin m) to stay monotonic.

The loss is the mean cross-entropy of those logits; same call shape as a PML loss:
`loss(embeddings, labels, indices_tuple=None)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("cosface", "arcface")


def sample_classes(
    labels: torch.Tensor, num_classes: int, num_sampled: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(class ids `[K]`, positions of `labels` in them `[B]`): the batch's classes first, sorted,
    then distinct random other classes up to K = max(num_sampled, number of batch classes).

    Costs O(K) per call, not O(num_classes).
    """
    positives = torch.unique(labels)
    if num_sampled >= num_classes:
        ids = torch.arange(num_classes, device=labels.device)
        return ids, labels.long()
    chosen = [positives]
    need = num_sampled - positives.numel()
    taken = positives
    while need > 0:
        cand = torch.randint(num_classes, (2 * need + 16,), generator=generator, device="cpu").to(labels.device)
        cand = torch.unique(cand)
        cand = cand[~torch.isin(cand, taken)]
        cand = cand[torch.randperm(cand.numel(), generator=generator, device="cpu").to(labels.device)][:need]
        chosen.append(cand)
        taken = torch.cat([taken, cand])
        need -= cand.numel()
    return torch.cat(chosen), torch.searchsorted(positives, labels)


class PartialFCLoss(nn.Module):
    """CosFace or ArcFace against `num_sampled` sampled class centres per step."""

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        kind: str = "cosface",
        margin: float = 0.35,
        scale: float = 30.0,
        num_sampled: int = 8192,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if num_sampled < 1:
            raise ValueError(f"num_sampled must be positive, got {num_sampled}")
        self.num_classes, self.kind, self.margin, self.scale = num_classes, kind, margin, scale
        self.num_sampled = num_sampled
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.weight = nn.Parameter(torch.randn(num_classes, embedding_size, generator=gen) * 0.01)
        self.generator: torch.Generator | None = None  # None: torch's global RNG (seeded by the trainer)
        self.last_sampled: torch.Tensor | None = None  # class ids of the last step, for tests and stats

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Parameters whose gradients are sparse (need `SparseAdam` or plain SGD)."""
        return [self.weight]

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scaled margin logits `[B, K]`, targets `[B]` in 0..K-1) for one step."""
        ids, targets = sample_classes(labels, self.num_classes, self.num_sampled, self.generator)
        self.last_sampled = ids
        centres = F.embedding(ids, self.weight, sparse=True)
        cos = F.normalize(embeddings, dim=1) @ F.normalize(centres, dim=1).T
        cos_y = cos.gather(1, targets[:, None]).clamp(-1 + 1e-7, 1 - 1e-7)
        if self.kind == "cosface":
            target_logit = cos_y - self.margin
        else:
            m = self.margin
            sin_y = torch.sqrt(1.0 - cos_y * cos_y)
            phi = cos_y * math.cos(m) - sin_y * math.sin(m)
            target_logit = torch.where(cos_y > math.cos(math.pi - m), phi, cos_y - m * math.sin(m))
        out = cos.scatter(1, targets[:, None], target_logit)
        return self.scale * out, targets

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None
    ) -> torch.Tensor:
        logits, targets = self.logits(embeddings, labels.long())
        return F.cross_entropy(logits, targets)
