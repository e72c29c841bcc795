"""Training the encoder from tuples (pairs, triplets) instead of class labels.

Each step draws `batch_size // width` tuples of the file (width 2 for pairs, 3 for triplets),
embeds their distinct items once and hands the loss the tuples as PML's `indices_tuple`:
triplets as `(a, p, n)`, pairs as `(a1, p, a2, n)` from the similar and dissimilar rows. The loss
is `train.loss` (`triplet` or `contrastive`; PML converts pairs and triplets into what it needs).
With `tuples.in_batch_negatives`, items linked as similar form pseudo-classes and the miner of
`train.mining` picks negatives among every other item of the batch as well (see `TupleConfig`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from megaclass.export.config import MegaclassConfig
from megaclass.export.data.tuples import TupleSet
from megaclass.export.train.training import Augment, EvalFn, TrainResult, epoch_seed, train_on_batches
from megaclass.python_backend.serving.encoder_model import build_encoder
from megaclass.python_backend.serving.preprocess import to_model_input

TUPLE_LOSSES = ("triplet", "contrastive")


def pseudo_labels(tuples: np.ndarray, similar: np.ndarray, num_items: int) -> np.ndarray:
    """Connected components of the similar links (pair rows with similar, anchor-positive of triplets).

    `tuples` [T, 2|3] item positions in 0..num_items-1; items in no similar link are their own class.
    """
    parent = np.arange(num_items)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for row, sim in zip(tuples, similar, strict=True):
        if sim:
            ra, rb = root(int(row[0])), root(int(row[1]))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return np.unique([root(i) for i in range(num_items)], return_inverse=True)[1].astype(np.int64)


def given_indices(kind: str, pos: np.ndarray, similar: np.ndarray) -> tuple[torch.Tensor, ...]:
    """The batch's own tuples as PML's indices_tuple: `(a, p, n)` or `(a1, p, a2, n)`."""
    t = torch.from_numpy
    if kind == "triplets":
        return t(pos[:, 0]), t(pos[:, 1]), t(pos[:, 2])
    yes, no = pos[similar], pos[~similar]
    return t(yes[:, 0]), t(yes[:, 1]), t(no[:, 0]), t(no[:, 1])


def tuple_batches(ts: TupleSet, tuples_per_batch: int, steps: int, seed: int, in_batch: bool, augment: Augment | None):
    """`batches(epoch)` for `train_on_batches`: (inputs, labels[, indices_tuple]) of `steps` batches."""
    similar = ts.similar if ts.similar is not None else np.ones(len(ts), dtype=bool)

    def batches(epoch: int) -> Iterator[tuple]:
        rng = np.random.default_rng(epoch_seed(seed, epoch, 1))
        order = np.concatenate([rng.permutation(len(ts)) for _ in range(-(-steps * tuples_per_batch // len(ts)))])
        gen = torch.Generator().manual_seed(epoch_seed(seed, epoch, 2))
        for b in range(steps):
            pick = order[b * tuples_per_batch : (b + 1) * tuples_per_batch]
            items, inverse = np.unique(ts.tuples[pick], return_inverse=True)
            pos = inverse.reshape(len(pick), -1).astype(np.int64)
            x = torch.from_numpy(to_model_input(ts.images[items]))
            if augment is not None:
                x = augment(x, gen)
            if in_batch:
                yield x, torch.from_numpy(pseudo_labels(pos, similar[pick], len(items)))
            else:
                yield x, torch.arange(len(items)), given_indices(ts.kind, pos, similar[pick])

    return batches


def train_from_tuples(
    ts: TupleSet,
    cfg: MegaclassConfig,
    out_dir: Path,
    steps_per_epoch: int | None = None,
    augment: Augment | None = None,
    progress: bool = True,
    eval_fn: EvalFn | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train an encoder on the tuples of `ts` into `out_dir` (checkpoint.pt, metrics.jsonl).

    `steps_per_epoch` None: one pass over the tuples per epoch.
    """
    t = cfg.train
    if t.loss not in TUPLE_LOSSES:
        raise ValueError(f"training from tuples takes loss {TUPLE_LOSSES}, not {t.loss!r} (it needs class labels)")
    width = ts.tuples.shape[1]
    per_batch = max(t.batch_size // width, 2)
    steps = steps_per_epoch or max(len(ts) // per_batch, 1)
    torch.manual_seed(t.seed)
    model = build_encoder(t, int(ts.images.shape[1]))
    batches = tuple_batches(ts, per_batch, steps, t.seed, cfg.tuples.in_batch_negatives, augment)
    meta = {"image_size": int(ts.images.shape[1]), "tuples": ts.kind, "tuple_count": len(ts)}
    # num_classes only sizes classifier heads, which tuple losses do not have
    return train_on_batches(
        model, batches, steps, 2, t, out_dir, progress=progress, eval_fn=eval_fn, resume=resume, meta=meta
    )
