"""The offline pipeline's order: data -> train -> ONNX -> prototypes -> index -> repository.

Each stage is cached under `work_dir/<stage>/<hash of its inputs>` (`megaclass.export.artifacts`),
so a second run reuses what did not change. The demo, the benchmarks and later pipelines call
`build_artifacts` (everything up to the index) and `publish_if_changed` (the repository).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from megaclass.export import artifacts
from megaclass.export.config import MegaclassConfig, config_hash

console = Console()


@dataclass(frozen=True)
class DemoArtifacts:
    """What the model repository is built from: the ONNX encoder and the saved routed index."""

    onnx_path: Path
    index_dir: Path
    image_size: int
    embedding_dim: int


def _step(n: int, text: str) -> None:
    console.rule(f"[bold]{n}. {text}")


def build_artifacts(cfg: MegaclassConfig) -> tuple[DemoArtifacts, object, dict]:
    """Data -> encoder -> ONNX -> prototypes -> index, each stage cached. Returns data for queries.

    Prototypes of trained classes come from their training rows, classes never trained on are
    enrolled from their rows in the training fonts; the queries are the rows in held-out fonts.
    """
    from megaclass.export.data.data_sources import enrolment_rows, glyph_data

    _step(1, "glyph data set")
    ds, splits = glyph_data(cfg)
    n_classes, n_fonts = len(ds.codepoints), len(ds.fonts)
    console.print(
        f"{len(ds.images)} images, {n_classes} classes, {n_fonts} fonts; training on {len(splits.train.images)} "
        f"images of {len(np.unique(splits.train.class_index))} classes; held-out fonts: "
        f"{', '.join(Path(f.split('#')[0]).name for f in splits.held_out_font_names)}"
    )

    _step(2, f"train the encoder ({cfg.train.loss} loss, {cfg.train.mining} mining)")
    data_key = artifacts.array_fingerprint(splits.train.class_index, splits.train.font_index, ds.codepoints)
    model, train_dir = _train(cfg, ds, splits, data_key)

    _step(3, "export to ONNX (dynamic batch, parity with PyTorch)")
    onnx_path, report = _export(cfg, model, train_dir)
    console.print(f"ONNX parity max |diff| per batch size: {report['max_abs_diff']}")

    _step(4, "class prototypes and the routed index")
    rows = enrolment_rows(ds, splits)
    index_dir = artifacts.stage_dir(Path(cfg.work_dir), "index", config_hash(cfg.index, report["sha256"], data_key))
    index = _index(cfg, model, ds, rows, index_dir, report["sha256"])
    console.print(f"{index.num_classes} classes, {index.num_prototypes} prototypes, dimension {index.dim}")
    return (
        DemoArtifacts(onnx_path, index_dir / "index", cfg.glyphs.image_size, index.dim),
        (ds, splits, rows),
        report,
    )


def _train(cfg: MegaclassConfig, ds, splits, data_key: str):
    """The trained encoder (reused when data and training settings are unchanged) and its stage directory."""
    from megaclass.export.train.training import train_encoder
    from megaclass.python_backend.serving.encoder_model import load_encoder

    train_dir = artifacts.stage_dir(
        Path(cfg.work_dir), "train", config_hash(cfg.glyphs, cfg.augment, cfg.train, data_key)
    )
    if artifacts.is_done(train_dir):
        console.print(f"reusing the trained encoder in {train_dir}")
        return load_encoder(train_dir / "checkpoint.pt"), train_dir
    from megaclass.export.data.augment import augment_batch

    artifacts.start_stage(train_dir)
    labels = ds.codepoints[splits.train.class_index]
    result = train_encoder(
        splits.train.images, labels, cfg.train, train_dir, augment=lambda x, g: augment_batch(x, cfg.augment, g)
    )
    artifacts.mark_done(train_dir, {"history": result.history})
    return result.model, train_dir


def _export(cfg: MegaclassConfig, model, train_dir: Path) -> tuple[Path, dict]:
    """The ONNX encoder (parity checked against PyTorch) and its report: max |diff| and sha256."""
    from megaclass.export.convert.onnx_export import export_onnx

    ckpt_hash = artifacts.sha256_file(train_dir / "checkpoint.pt")
    export_dir = artifacts.stage_dir(Path(cfg.work_dir), "export", config_hash(cfg.export, ckpt_hash))
    onnx_path = export_dir / "encoder.onnx"
    if artifacts.is_done(export_dir):
        console.print(f"reusing {onnx_path}")
        return onnx_path, artifacts.read_done(export_dir)
    artifacts.start_stage(export_dir)
    rep = export_onnx(model, onnx_path, cfg.export, image_size=cfg.glyphs.image_size)
    report = {"max_abs_diff": rep.max_abs_diff, "sha256": rep.sha256}
    artifacts.mark_done(export_dir, report)
    return onnx_path, report


def _index(cfg: MegaclassConfig, model, ds, rows: dict[str, np.ndarray], index_dir: Path, encoder_sha256: str):
    """Class prototypes from the enrolment rows, then the routed index over them (saved in `index_dir`)."""
    from megaclass.export.enrol.embedding import embed_images
    from megaclass.export.enrol.prototypes import class_prototypes
    from megaclass.python_backend.index.routed_index import RoutedIndex

    if artifacts.is_done(index_dir):
        console.print(f"reusing the index in {index_dir}")
        return RoutedIndex.load(index_dir / "index")
    artifacts.start_stage(index_dir)
    enrol = ds.subset(rows["enrol"])
    emb = embed_images(model, enrol.images)
    protos, proto_ids = class_prototypes(emb, enrol.codepoints[enrol.class_index], cfg.index.prototypes_per_class)
    labels = {int(c): chr(int(c)) for c in ds.codepoints}
    t0 = time.perf_counter()
    index = RoutedIndex.build(protos, proto_ids, labels, cfg.index)
    index.save(index_dir / "index", extra_manifest={"encoder_sha256": encoder_sha256})
    artifacts.mark_done(index_dir, {"build_s": time.perf_counter() - t0})
    return index


def publish_if_changed(repository: Path, art: DemoArtifacts, cfg: MegaclassConfig) -> dict[str, int | str]:
    """Publish a new version only when the artifacts or serving settings changed."""
    from megaclass.export.repository.generate import ModelShapes, build_repository

    key = config_hash(cfg.serving, cfg.export, artifacts.sha256_file(art.onnx_path), str(art.index_dir))
    marker = Path(repository) / ".published.json"
    if marker.exists() and json.loads(marker.read_text()).get("key") == key:
        return {"unchanged": "reusing the published versions"}
    versions = build_repository(
        Path(repository), art.onnx_path, art.index_dir, ModelShapes(art.image_size, art.embedding_dim),
        cfg.serving, cfg.export,
    )  # fmt: skip
    marker.write_text(json.dumps({"key": key, "versions": versions}))
    return versions
