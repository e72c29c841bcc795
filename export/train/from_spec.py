"""Training on a data spec: glyphs, a catalogue or the synthetic set, as `megaclass train` runs it.

`train_from_spec` writes `run.json` beside the checkpoint (`data_sources.write_run`) so evaluation
finds the same data and splits; with `epoch_eval`, each epoch reports retrieval metrics of the
held-out queries against class prototypes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from megaclass.export.config import MegaclassConfig
from megaclass.export.data.data_sources import DataSpec, glyph_data, synthetic_config, write_run
from megaclass.export.train.training import TrainResult, retrieval_eval_fn, train_encoder, train_on_batches


def train_from_spec(
    spec: DataSpec,
    cfg: MegaclassConfig,
    out_dir: Path,
    resume: bool = False,
    progress: bool = True,
    epoch_eval: bool = True,
) -> TrainResult:
    """Train an encoder on the data of `spec` into `out_dir` (checkpoint.pt, metrics.jsonl, run.json)."""
    out_dir = Path(out_dir)
    write_run(out_dir, spec, cfg)
    if spec.kind == "synthetic":
        return _train_synthetic(spec, cfg, out_dir, resume, progress)
    eval_fn = None
    if spec.kind == "glyphs":
        ds, splits = glyph_data(cfg, progress)
        images, labels = splits.train.images, ds.codepoints[splits.train.class_index]
        q = splits.held_out_fonts
        if epoch_eval and len(q.images):
            eval_fn = retrieval_eval_fn(images, labels, q.images, ds.codepoints[q.class_index], prototypes=True)
    elif spec.kind == "catalog":
        from megaclass.export.data.catalog import read_catalog

        cat = read_catalog(spec.catalog)
        rows = cat.rows("train")
        images, labels = cat.images(rows, spec.image_size or cfg.glyphs.image_size), cat.class_ids[rows]
        query = cat.rows("query")
        if epoch_eval and len(query):
            q_images = cat.images(query, images.shape[1])
            eval_fn = retrieval_eval_fn(images, labels, q_images, cat.class_ids[query], prototypes=True)
    else:
        raise ValueError(f"unknown data kind {spec.kind!r}")
    augment = None
    if cfg.augment.enabled:
        from megaclass.export.data.augment import augment_batch

        def augment(x, g):
            return augment_batch(x, cfg.augment, g)

    return train_encoder(
        images, labels, cfg.train, out_dir, augment=augment, progress=progress, eval_fn=eval_fn, resume=resume
    )


def _train_synthetic(spec: DataSpec, cfg: MegaclassConfig, out_dir: Path, resume: bool, progress: bool) -> TrainResult:
    from megaclass.export.data.synthetic import (
        build_synthetic_encoder,
        iter_batches,
        samples_per_class,
        steps_per_epoch,
    )
    from megaclass.export.train.losses import LOSSES

    syn = synthetic_config(spec, cfg)
    t = cfg.train
    counts = samples_per_class(syn)
    torch.manual_seed(t.seed)
    model = build_synthetic_encoder(syn, t)
    classifier = LOSSES[t.loss](t, 2, t.embedding_dim).classifier
    m = None if classifier else t.samples_per_class  # margin-softmax / softmax: plain shuffled epochs
    batch = t.batch_size - (t.batch_size % m if m else 0)
    meta = {"synthetic": dataclasses.asdict(syn), "classes": torch.arange(syn.num_classes)}
    return train_on_batches(
        model,
        lambda epoch: iter_batches(syn, batch, epoch, m_per_class=m, counts=counts),
        steps_per_epoch(syn, batch, counts),
        syn.num_classes,
        t,
        out_dir,
        progress=progress,
        resume=resume,
        meta=meta,
    )
