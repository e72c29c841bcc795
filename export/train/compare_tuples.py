"""Labelled training vs tuple-only training vs index-mined negatives: the second table of docs/training.md.

Every row trains the same encoder from the same seed on the same glyph training split for the
same epochs and steps per epoch (the labelled run's), with the same loss (triplet, batch-hard
mining) and augmentation, and is evaluated as served (`evaluation.evaluate_sets`):

- labelled: m-per-class batches of the class labels;
- tuple-only, triplets / pairs: tuples generated from the training split (`tuples_from_labels`),
  written in the tuple file format and read back; the trainer sees only the tuples;
- index-mined negatives: the labelled run's encoder enrols the training classes in a routed index,
  `mine_negatives` tiers each class's neighbours, and a fresh encoder trains on batches that pair
  classes with mined negatives on the easy -> hard schedule (`NegativesConfig`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from megaclass.export.config import MegaclassConfig, replace
from megaclass.export.data.data_sources import DataSpec, eval_sets_from_spec, glyph_data
from megaclass.export.evaluate.evaluation import evaluate_sets, write_report
from megaclass.export.train.compare_losses import markdown_table

BEGIN, END = "<!-- compare-tuples:begin -->", "<!-- compare-tuples:end -->"
ROWS = ("labelled", "triplets", "pairs", "mined")
NAMES = {
    "labelled": "labelled classes, triplet (hard mining)",
    "triplets": "tuple-only: triplets",
    "pairs": "tuple-only: pairs",
    "mined": "labelled + index-mined negatives (easy → hard)",
}


def _augment(cfg: MegaclassConfig):
    if not cfg.augment.enabled:
        return None
    from megaclass.export.data.augment import augment_batch

    return lambda x, g: augment_batch(x, cfg.augment, g)


def _mined_run(model, images, labels, cfg: MegaclassConfig, out_dir: Path, steps: int, batch: int, progress: bool):
    """Mine tiers with `model`'s routed index of the training classes, then train a fresh encoder on them."""
    import torch

    from megaclass.export.enrol.prototypes import class_prototypes
    from megaclass.export.evaluate.evaluation import embed
    from megaclass.export.train.negatives import mine_negatives, mined_batches, write_tiers
    from megaclass.export.train.training import train_on_batches
    from megaclass.python_backend.index.routed_index import RoutedIndex
    from megaclass.python_backend.serving.encoder_model import build_encoder

    protos, ids = class_prototypes(embed(model, images), labels)
    index = RoutedIndex.build(protos, ids, {int(c): chr(int(c)) for c in ids}, cfg.index)
    tiers = mine_negatives(index, cfg.negatives)
    write_tiers(tiers, out_dir / "negatives.csv")
    classes, targets = np.unique(labels, return_inverse=True)
    t = cfg.train
    batches = mined_batches(
        images,
        targets,
        tiers,
        classes,
        cfg.negatives,
        t.samples_per_class,
        batch,
        steps,
        t.epochs,
        t.seed,
        _augment(cfg),
    )
    torch.manual_seed(t.seed)
    fresh = build_encoder(t, images.shape[1])
    meta = {"image_size": int(images.shape[1]), "classes": torch.from_numpy(classes.astype(np.int64))}
    result = train_on_batches(fresh, batches, steps, len(classes), t, out_dir, progress=progress, meta=meta)
    return result, tiers.counts()


def compare_tuples(
    cfg: MegaclassConfig, out_dir: Path, rows: tuple[str, ...] = ROWS, progress: bool = True
) -> list[dict[str, Any]]:
    """Train and evaluate each row (see the module docstring); one dict per row, also in out_dir/<row>/."""
    from megaclass.export.data.tuples import load_tuples, tuples_from_labels, write_tuples
    from megaclass.export.train.from_spec import train_from_spec
    from megaclass.export.train.training import batch_size_for
    from megaclass.export.train.tuple_training import train_from_tuples

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = DataSpec(kind="glyphs")
    cfg = replace(cfg, train=replace(cfg.train, loss="triplet", mining="hard"))
    ds, splits = glyph_data(cfg, progress)
    images, labels = splits.train.images, ds.codepoints[splits.train.class_index]
    batch = batch_size_for(len(np.unique(labels)), cfg.train.samples_per_class, cfg.train.batch_size)
    steps = max(len(images) // batch, 1)
    sets = eval_sets_from_spec(spec, cfg, None, progress=progress)
    labelled_model, out = None, []
    for row in rows:
        t0, extra = time.perf_counter(), {}
        if row == "labelled":
            result = train_from_spec(spec, cfg, out_dir / row, progress=progress, epoch_eval=False)
            labelled_model = result.model
        elif row in ("triplets", "pairs"):
            kind, width = row, 3 if row == "triplets" else 2
            count = steps * (cfg.train.batch_size // width)
            tuple_rows, similar = tuples_from_labels(labels, kind, count, seed=cfg.train.seed)
            if not (out_dir / "items.npy").exists():
                np.save(out_dir / "items.npy", images)
            path = write_tuples(out_dir / f"{kind}.csv", kind, tuple_rows, similar)
            ts = load_tuples(path, out_dir / "items.npy")
            extra = {"tuples": len(ts)}
            result = train_from_tuples(
                ts, cfg, out_dir / row, steps_per_epoch=steps, augment=_augment(cfg), progress=progress
            )
        elif row == "mined":
            if labelled_model is None:
                raise ValueError("the mined row needs the labelled row first (its index gives the neighbours)")
            result, counts = _mined_run(labelled_model, images, labels, cfg, out_dir / row, steps, batch, progress)
            extra = {"tiers": counts}
        else:
            raise ValueError(f"unknown row {row!r}; expected one of {ROWS}")
        report, _ = evaluate_sets(result.model, sets, cfg.index, ks=(5,))
        record = {
            "method": NAMES[row],
            "row": row,
            "epochs": len(result.history),
            "train_s": result.history[-1]["elapsed_s"] if result.history else 0.0,
            "wall_s": time.perf_counter() - t0,
            "splits": report["splits"],
            **extra,
        }
        write_report({**record, "report": report}, out_dir / row / "compare_row.json")
        out.append(record)
    return out


def update_doc(doc: Path, table: str) -> Path:
    """Put `table` between the compare-tuples markers of `doc` (the block appended when missing)."""
    doc = Path(doc)
    text = doc.read_text() if doc.exists() else "# Training\n"
    block = f"{BEGIN}\n{table}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Tuples and index-mined negatives\n\n" + block + "\n"
    doc.write_text(text)
    return doc


__all__ = ["compare_tuples", "markdown_table", "update_doc"]
