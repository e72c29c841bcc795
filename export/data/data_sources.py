"""Where `megaclass train` and `megaclass evaluate` get their data: glyphs, a catalogue, or the synthetic set.

A `DataSpec` names the source; `train.from_spec.train_from_spec` trains on it (writing `run.json`
beside the checkpoint so evaluation finds the same data and splits) and `eval_sets_from_spec`
builds the enrolment samples and queries of `evaluation.EvalSets`:

- glyphs: enrol = every row in the training fonts (trained classes and held-out classes alike),
  queries = every row in the held-out fonts;
- catalogue: enrol = rows with split "train", queries = rows with split "query"; classes the
  checkpoint was not trained on count as held-out classes;
- synthetic (vectors): a seeded subset of `eval_classes` trained classes (all their training
  samples enrolled, `queries_per_class` unseen samples as queries) plus `held_out_classes` class
  ids beyond the trained range (enrolled from `enrol_per_held_out_class` samples).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from megaclass.export.config import MegaclassConfig
from megaclass.export.evaluate.evaluation import EvalSets

RUN_NAME = "run.json"


@dataclass(frozen=True)
class DataSpec:
    """The data source of a run."""

    kind: Literal["glyphs", "catalog", "synthetic"] = "glyphs"
    catalog: str | None = None  # catalogue file (kind "catalog")
    synthetic_classes: int | None = None  # class count (kind "synthetic")
    image_size: int | None = None  # catalogue images; None: cfg.glyphs.image_size
    # synthetic evaluation subset
    eval_classes: int = 1000
    held_out_classes: int = 100
    queries_per_class: int = 2
    enrol_per_held_out_class: int = 2


def write_run(out_dir: Path, spec: DataSpec, cfg: MegaclassConfig) -> Path:
    """`run.json`: the data spec and the whole configuration of a training run."""
    path = Path(out_dir) / RUN_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": dataclasses.asdict(spec), "config": dataclasses.asdict(cfg)}, indent=2))
    return path


def read_run(out_dir: Path) -> tuple[DataSpec, MegaclassConfig]:
    """The spec and configuration that `write_run` stored."""
    from megaclass.export.config import load_config

    blob = json.loads((Path(out_dir) / RUN_NAME).read_text())
    return DataSpec(**blob["data"]), load_config(None, blob["config"])


# ---------------------------------------------------------------------------------------------
# glyphs


def glyph_data(cfg: MegaclassConfig, progress: bool = True):
    """(data set, splits) of the glyph set, rendered or read from `work_dir/glyphs`."""
    from megaclass.export.data.glyphs import render_glyph_dataset, split_glyphs

    ds = render_glyph_dataset(cfg.glyphs, Path(cfg.work_dir) / "glyphs", progress=progress)
    return ds, split_glyphs(ds, cfg.glyphs)


def enrolment_rows(ds, splits) -> dict[str, np.ndarray]:
    """Boolean row masks: `enrol` (rows in the training fonts) and `query` (rows in the held-out fonts).

    Trained classes are enrolled from their training rows; classes never trained on from their
    rows in the training fonts.
    """
    held = set(splits.held_out_font_names)
    font_is_held = np.array([f in held for f in ds.fonts])
    return {"enrol": ~font_is_held[ds.font_index], "query": font_is_held[ds.font_index]}


def _counts(labels: np.ndarray) -> dict[int, int]:
    classes, counts = np.unique(np.asarray(labels), return_counts=True)
    return {int(c): int(n) for c, n in zip(classes, counts, strict=True)}


# ---------------------------------------------------------------------------------------------
# synthetic


def synthetic_config(spec: DataSpec, cfg: MegaclassConfig):
    """The synthetic population of `spec` (vectors, seeded by the training seed)."""
    from megaclass.export.data.synthetic import SyntheticConfig

    return SyntheticConfig(num_classes=int(spec.synthetic_classes), seed=cfg.train.seed)


# ---------------------------------------------------------------------------------------------
# evaluation


def eval_sets_from_spec(
    spec: DataSpec, cfg: MegaclassConfig, trained_classes: np.ndarray | None, progress: bool = True
) -> EvalSets:
    """Enrolment samples and queries of `spec` (see the module docstring).

    `trained_classes`: the class ids the checkpoint was trained on (None: every class with
    training rows counts as trained, e.g. for a precomputed-embedding catalogue).
    """
    if spec.kind == "glyphs":
        ds, splits = glyph_data(cfg, progress)
        rows = enrolment_rows(ds, splits)
        ids = ds.codepoints[ds.class_index]
        return EvalSets(
            enrol_x=ds.images[rows["enrol"]],
            enrol_y=ids[rows["enrol"]],
            query_x=ds.images[rows["query"]],
            query_y=ids[rows["query"]],
            trained_counts=_counts(ds.codepoints[splits.train.class_index]),
            labels={int(c): chr(int(c)) for c in ds.codepoints},
            description={
                "data": f"glyphs: {len(ds.codepoints)} classes, {len(ds.fonts)} fonts",
                "seen_classes": "trained classes rendered in the held-out fonts",
                "held_out_fonts": ", ".join(Path(f.split("#")[0]).name for f in splits.held_out_font_names),
            },
        )
    if spec.kind == "catalog":
        from megaclass.export.data.catalog import read_catalog

        cat = read_catalog(spec.catalog)
        train_rows, query_rows = cat.rows("train"), cat.rows("query")
        if not len(query_rows):
            raise ValueError(f"{spec.catalog}: no rows with split=query to evaluate")
        counts = _counts(cat.class_ids[train_rows])
        if trained_classes is not None:
            trained = set(np.asarray(trained_classes).tolist())
            counts = {c: n for c, n in counts.items() if c in trained}
        if cat.kind == "images":
            size = spec.image_size or cfg.glyphs.image_size
            enrol_x, query_x = cat.images(train_rows, size), cat.images(query_rows, size)
        else:
            enrol_x, query_x = cat.embeddings[train_rows], cat.embeddings[query_rows]
        return EvalSets(
            enrol_x=enrol_x,
            enrol_y=cat.class_ids[train_rows],
            query_x=query_x,
            query_y=cat.class_ids[query_rows],
            trained_counts=counts,
            labels=dict(cat.labels),
            description={
                "data": f"catalogue {cat.source} ({cat.kind})",
                "seen_classes": "query rows of trained classes",
            },
        )
    if spec.kind == "synthetic":
        from megaclass.export.data.synthetic import held_out_queries, make_samples, samples_per_class, training_samples

        syn = synthetic_config(spec, cfg)
        counts = samples_per_class(syn)
        rng = np.random.default_rng([cfg.train.seed, 17])
        seen = np.sort(rng.choice(syn.num_classes, min(spec.eval_classes, syn.num_classes), replace=False))
        new = syn.num_classes + np.arange(spec.held_out_classes)
        gx, gy = training_samples(syn, seen, counts)
        e = spec.enrol_per_held_out_class
        hy = np.repeat(new, e)
        hx = make_samples(syn, hy, spec.queries_per_class + np.tile(np.arange(e), len(new)))  # after the queries' ids
        qx, qy = held_out_queries(syn, np.concatenate([seen, new]), spec.queries_per_class, counts)
        return EvalSets(
            enrol_x=np.concatenate([gx, hx]),
            enrol_y=np.concatenate([gy, hy]),
            query_x=qx,
            query_y=qy,
            trained_counts={int(c): int(counts[c]) for c in seen},
            description={
                "data": f"synthetic: {syn.num_classes} classes; evaluated on {len(seen)} of them plus {len(new)} held-out classes",
                "seen_classes": "unseen samples of trained classes",
            },
        )
    raise ValueError(f"unknown data kind {spec.kind!r}")


def trained_classes_of(checkpoint: dict[str, Any]) -> np.ndarray | None:
    """The class ids a checkpoint was trained on (its `classes` entry), or None."""
    classes = checkpoint.get("classes")
    return None if classes is None else np.asarray(classes)


# ---------------------------------------------------------------------------------------------
# prototypes


def enrolment_from_spec(
    spec: DataSpec, cfg: MegaclassConfig, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """(samples, class ids, labels) to enrol: the enrolment side of `eval_sets_from_spec`.

    A catalogue enrols its "train" rows; glyphs every row in the training fonts; the synthetic
    set its evaluation subset.
    """
    sets = eval_sets_from_spec(spec, cfg, None, progress) if spec.kind != "catalog" else None
    if sets is not None:
        return sets.enrol_x, sets.enrol_y, sets.labels or {int(c): str(int(c)) for c in np.unique(sets.enrol_y)}
    from megaclass.export.data.catalog import read_catalog

    cat = read_catalog(spec.catalog)
    rows = cat.rows("train")
    x = cat.images(rows, spec.image_size or cfg.glyphs.image_size) if cat.kind == "images" else cat.embeddings[rows]
    return x, cat.class_ids[rows], dict(cat.labels)


def build_prototypes(
    model: Any, spec: DataSpec, cfg: MegaclassConfig, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """(prototypes float32 [P, D], class ids [P], labels) of the enrolment samples of `spec`.

    `model` None: the samples are precomputed embeddings (an embedding catalogue).
    """
    from megaclass.export.enrol.prototypes import class_prototypes
    from megaclass.export.evaluate.evaluation import embed

    x, y, labels = enrolment_from_spec(spec, cfg, progress)
    if model is None and x.dtype == np.uint8:
        raise ValueError("image samples need an encoder checkpoint to embed them")
    protos, ids = class_prototypes(embed(model, x), y, cfg.index.prototypes_per_class, cfg.index.seed)
    return protos, ids, labels
