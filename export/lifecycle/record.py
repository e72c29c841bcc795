"""What the hand-run commands record in MLflow: `train`, `export`, `evaluate`, `index build | tune`, `publish`.

Each is one run with its parameters, metrics (per epoch for training), the data fingerprint, the
git commit (`tracking.track` adds it) and its artifacts. Runs are linked by content hashes: an
export run's `checkpoint_sha256` is its training run's, an index's `encoder_sha256` the export's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from megaclass.export import artifacts
from megaclass.export.config import MegaclassConfig, config_hash
from megaclass.export.lifecycle import tracking


def _flat(prefix: str, obj: Any) -> dict[str, Any]:
    return {f"{prefix}.{k}": v for k, v in dataclasses.asdict(obj).items()}


def data_fingerprint(spec: Any, cfg: MegaclassConfig) -> str:
    """A short hash of the data a run read: the catalogue file's bytes, or the generator's settings."""
    if getattr(spec, "kind", None) == "catalog" and spec.catalog and Path(spec.catalog).exists():
        return artifacts.sha256_file(Path(spec.catalog))[:16]
    return config_hash(spec, cfg.glyphs if getattr(spec, "kind", None) == "glyphs" else None)


def record_train(cfg: MegaclassConfig, spec: Any, out: Path, history: list[dict[str, Any]], checkpoint: Path) -> None:
    """The training run: settings, one metrics row per epoch, the run folder's small files."""
    with tracking.track(cfg.tracking, cfg.work_dir, "train") as run:
        run.params({**_flat("train", cfg.train), **_flat("data", spec)})
        run.tags(
            {"data_fingerprint": data_fingerprint(spec, cfg), "checkpoint_sha256": artifacts.sha256_file(checkpoint)}
        )
        for epoch, row in enumerate(history):
            run.metrics(row, step=epoch)
        for name in ("metrics.jsonl", "run.json", "train_summary.json"):
            run.artifact(Path(out) / name)


def record_export(cfg: MegaclassConfig, checkpoint: Path, report: dict[str, Any], out: Path) -> None:
    """The export run: the ONNX files, their parity with PyTorch, hashes linking checkpoint and encoder."""
    with tracking.track(cfg.tracking, cfg.work_dir, "export") as run:
        run.params(_flat("export", cfg.export))
        run.tags({"checkpoint_sha256": artifacts.sha256_file(checkpoint)})
        fp32 = report.get("fp32", {})
        if fp32.get("sha256"):
            run.tags({"encoder_sha256": fp32["sha256"]})
        for batch, diff in (fp32.get("max_abs_diff") or {}).items():
            run.metrics({f"parity_max_abs_diff_b{batch}": diff})
        for name in ("encoder.onnx", "encoder_fp16.onnx", "export_report.json"):
            run.artifact(Path(out) / name, "onnx")


def record_evaluate(cfg: MegaclassConfig, checkpoint: Path | None, report: dict[str, Any], out: Path) -> None:
    """The evaluation run: every split's metrics, the report and its plot."""
    with tracking.track(cfg.tracking, cfg.work_dir, "evaluate") as run:
        if checkpoint is not None:
            run.tags({"checkpoint_sha256": artifacts.sha256_file(checkpoint)})
        for split, metrics in report.get("splits", {}).items():
            run.metrics({f"{split}.{k}": v for k, v in metrics.items()})
        run.artifact(Path(out) / "report.json", "evaluation")
        run.artifact(Path(out) / "prototypes_pca.png", "evaluation")
        run.artifact(Path(out) / "severity.png", "evaluation")


def record_index(
    cfg: MegaclassConfig, stage: str, index_dir: Path, params: dict[str, Any], metrics: dict[str, Any]
) -> None:
    """An `index build` or `index tune` run with the index manifest."""
    with tracking.track(cfg.tracking, cfg.work_dir, stage) as run:
        run.params(params)
        run.metrics(metrics)
        run.artifact(Path(index_dir) / "manifest.json", "index")


def record_publish(cfg: MegaclassConfig, repo: Path, published: dict[str, int], index_dir: Path | None) -> None:
    """The publish run; a published index is registered as a model version with the serving alias."""
    tags: dict[str, Any] = {f"{model}_version": v for model, v in published.items()}
    tags["repository"] = str(Path(repo).resolve())
    with tracking.track(cfg.tracking, cfg.work_dir, "publish") as run:
        if index_dir is None:
            run.tags(tags)
            return
        from megaclass.python_backend.index.persistence import read_manifest
        from megaclass.python_backend.serving.retriever_service import index_fingerprint

        manifest = read_manifest(Path(index_dir))
        tags["index_version"] = f"{published['retriever']}:{index_fingerprint(manifest)}"
        tags["encoder_sha256"] = manifest.get("encoder_sha256", "")
        run.tags(tags)
        run.artifact(Path(index_dir) / "manifest.json", "index")
        tracking.register_version(cfg.tracking, cfg.work_dir, run, "index", tags)
