"""Negatives mined from the served index: each class's nearest other classes, in easy / soft / hard tiers.

`mine_negatives` searches the routed index with every class's mean prototype, drops the class
itself and sorts each neighbour into a tier by its score: s >= hard_min hard, soft_min <= s < hard_min
soft, else easy, where the bounds are quantiles of all mined scores by default (they follow the
mining encoder's score distribution) or fixed values (`NegativesConfig.bands`). The tiers file is CSV, one neighbour a line:
``class,neighbour,score,tier``. `tier_mix` gives the tier weights at a point of training (linear
from `mix_start` to `mix_end`: easy first, hard later) and `mined_batches` builds m-per-class
batches in which part of the classes are mined negatives of the others, so the in-batch miner
meets them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megaclass.export.config import NegativesConfig
from megaclass.export.train.training import Augment, epoch_seed
from megaclass.python_backend.serving.preprocess import to_model_input

TIERS = ("easy", "soft", "hard")
HEADER = "class,neighbour,score,tier"


@dataclass
class NegativeTiers:
    """Mined neighbours: parallel arrays, one entry per (class, neighbour), best neighbour first."""

    classes: np.ndarray  # int64 [E]
    neighbours: np.ndarray  # int64 [E]
    scores: np.ndarray  # float32 [E]
    tiers: np.ndarray  # int8 [E], index into TIERS
    bands: tuple[float, float] | None = None  # (soft_min, hard_min) the tiers were cut at, when mined here

    def of(self, class_id: int, tier: str) -> np.ndarray:
        """The neighbours of `class_id` in `tier`."""
        return self.neighbours[(self.classes == class_id) & (self.tiers == TIERS.index(tier))]

    def counts(self) -> dict[str, int]:
        return {name: int((self.tiers == i).sum()) for i, name in enumerate(TIERS)}


def score_bands(scores: np.ndarray, cfg: NegativesConfig) -> tuple[float, float]:
    """(soft_min, hard_min) for `scores`, all mined neighbour scores: quantiles of them or the fixed values."""
    if cfg.bands == "fixed":
        soft, hard = cfg.soft_min, cfg.hard_min
    elif cfg.bands == "quantile":
        if not 0.0 <= cfg.soft_quantile <= cfg.hard_quantile <= 1.0:
            raise ValueError(
                f"negatives: need 0 <= soft_quantile ({cfg.soft_quantile}) <= hard_quantile ({cfg.hard_quantile}) <= 1"
            )
        if not len(scores):
            return -np.inf, np.inf
        soft, hard = np.quantile(np.asarray(scores, np.float64), [cfg.soft_quantile, cfg.hard_quantile])
    else:
        raise ValueError(f"negatives.bands must be 'quantile' or 'fixed', got {cfg.bands!r}")
    if not soft <= hard:
        raise ValueError(f"negatives.soft_min ({soft}) must not exceed hard_min ({hard})")
    return float(soft), float(hard)


def tier_of(scores: np.ndarray, soft_min: float, hard_min: float) -> np.ndarray:
    """Tier index of each score: 2 hard (s >= hard_min), 1 soft (soft_min <= s < hard_min), 0 easy."""
    s = np.asarray(scores)
    return np.where(s >= hard_min, 2, np.where(s >= soft_min, 1, 0)).astype(np.int8)


def mine_negatives(index, cfg: NegativesConfig, progress: bool = False) -> NegativeTiers:
    """The `cfg.neighbours` nearest other classes of every class of a `RoutedIndex`, with their tiers."""
    from megaclass.export.enrol.prototypes import class_prototypes

    means, classes = class_prototypes(*index.live_prototypes())
    k = min(cfg.neighbours + 1, len(classes))
    found_c, found_s = [], []
    for s0 in range(0, len(means), 4096):
        res = index.search(means[s0 : s0 + 4096], k, nprobe=cfg.nprobe)
        found_c.append(res.class_ids)
        found_s.append(res.scores)
    ids, scores = np.concatenate(found_c), np.concatenate(found_s)
    keep = (ids != classes[:, None]) & (ids >= 0)
    rank = np.cumsum(keep, axis=1)
    keep &= rank <= cfg.neighbours
    rows = np.nonzero(keep)
    bands = score_bands(scores[rows], cfg)
    return NegativeTiers(
        classes=classes[rows[0]].astype(np.int64),
        neighbours=ids[rows].astype(np.int64),
        scores=scores[rows].astype(np.float32),
        tiers=tier_of(scores[rows], *bands),
        bands=bands,
    )


def write_tiers(tiers: NegativeTiers, path: str | Path) -> Path:
    """The tiers file (CSV: class,neighbour,score,tier)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [HEADER] + [
        f"{c},{n},{s:.6f},{TIERS[t]}"
        for c, n, s, t in zip(tiers.classes, tiers.neighbours, tiers.scores, tiers.tiers, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def read_tiers(path: str | Path) -> NegativeTiers:
    """Read a tiers file; a bad line raises ValueError with its number."""
    path = Path(path)
    lines = path.read_text().splitlines()
    if not lines or lines[0].strip() != HEADER:
        raise ValueError(f"{path}:1: expected the header {HEADER!r}")
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        f = line.split(",")
        if len(f) != 4 or f[3] not in TIERS:
            raise ValueError(f"{path}:{n}: expected class,neighbour,score,tier (tier one of {TIERS}): {line!r}")
        try:
            rows.append((int(f[0]), int(f[1]), float(f[2]), TIERS.index(f[3])))
        except ValueError as e:
            raise ValueError(f"{path}:{n}: {e}: {line!r}") from e
    a = np.array(rows, dtype=np.float64).reshape(-1, 4)
    return NegativeTiers(
        a[:, 0].astype(np.int64), a[:, 1].astype(np.int64), a[:, 2].astype(np.float32), a[:, 3].astype(np.int8)
    )


def tier_mix(cfg: NegativesConfig, progress: float) -> np.ndarray:
    """Weights of (easy, soft, hard) at training `progress` in [0, 1]; tiers not in `cfg.tiers` get 0."""
    unknown = set(cfg.tiers) - set(TIERS)
    if unknown:
        raise ValueError(f"unknown negative tier(s) {sorted(unknown)}; known: {TIERS}")
    p = min(max(progress, 0.0), 1.0)
    w = (1 - p) * np.asarray(cfg.mix_start, float) + p * np.asarray(cfg.mix_end, float)
    w *= np.array([t in cfg.tiers for t in TIERS], dtype=float)
    if w.sum() <= 0:
        raise ValueError(f"the tier mix is empty at progress {p:.2f} for tiers {cfg.tiers}")
    return w / w.sum()


def draw_negative(by_class: dict[int, tuple[np.ndarray, np.ndarray]], c: int, mix: np.ndarray, rng, classes) -> int:
    """A negative class for class `c`: a tier drawn by `mix`, then one of c's neighbours in it (random class if none)."""
    choices = by_class.get(int(c))
    if choices is not None:
        t = int(rng.choice(3, p=mix))
        cand = choices[1][choices[0] == t]
        if len(cand):
            return int(cand[rng.integers(len(cand))])
    return int(classes[rng.integers(len(classes))])


def mined_batches(
    images: np.ndarray,
    targets: np.ndarray,
    tiers: NegativeTiers,
    class_ids: np.ndarray,
    cfg: NegativesConfig,
    m: int,
    batch: int,
    steps: int,
    epochs: int,
    seed: int,
    augment: Augment | None,
):
    """`batches(epoch)`: m samples of each of batch/m classes; `negative_share` of them mined negatives.

    `targets` are contiguous class indices of `images`; `class_ids[target]` the ids the tiers name.
    """
    rows_of = np.split(np.argsort(targets, kind="stable"), np.cumsum(np.bincount(targets))[:-1])
    index_of = {int(c): i for i, c in enumerate(class_ids)}
    known = np.isin(tiers.neighbours, class_ids)
    order = np.flatnonzero(known)[np.argsort(tiers.classes[known], kind="stable")]  # best neighbour first kept
    owners, starts = np.unique(tiers.classes[order], return_index=True)
    by_class = (
        {
            int(c): (tiers.tiers[rows], tiers.neighbours[rows])
            for c, rows in zip(owners, np.split(order, starts[1:]), strict=True)
        }
        if len(owners)
        else {}
    )
    per_batch = batch // m
    n_neg = int(round(per_batch * cfg.negative_share))

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng(epoch_seed(seed, epoch, 1))
        gen = torch.Generator().manual_seed(epoch_seed(seed, epoch, 2))
        mix = tier_mix(cfg, epoch / max(epochs - 1, 1))
        for _ in range(steps):
            anchors = rng.choice(len(class_ids), per_batch - n_neg, replace=False)
            negs = [index_of[draw_negative(by_class, class_ids[a], mix, rng, class_ids)] for a in anchors[:n_neg]]
            chosen = list(dict.fromkeys([*anchors.tolist(), *negs]))
            while len(chosen) < per_batch:  # duplicates: fill with random classes
                c = int(rng.integers(len(class_ids)))
                if c not in chosen:
                    chosen.append(c)
            idx = np.concatenate([rng.choice(rows_of[c], m, replace=len(rows_of[c]) < m) for c in chosen])
            x = torch.from_numpy(to_model_input(images[idx]))
            if augment is not None:
                x = augment(x, gen)
            yield x, torch.from_numpy(targets[idx].astype(np.int64))

    return batches
