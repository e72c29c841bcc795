"""The work of each refresh step (`steps.STEPS`): plain functions of a `RefreshContext` returning a
JSON-able result (stored as the step's `done.json` and read by the later steps)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from megaclass.export import artifacts
from megaclass.export.lifecycle import tracking
from megaclass.export.lifecycle.publish_step import LIFECYCLE_FILE, step_publish
from megaclass.export.lifecycle.refresh import RefreshContext


def _input_size(encoder_path: Path) -> int:
    from megaclass.python_backend.serving.encoder_runtime import OnnxEncoder

    return int(OnnxEncoder(encoder_path).input_shape[-1])


def _embed(encoder_path: Path, images: np.ndarray) -> np.ndarray:
    from megaclass.python_backend.serving.encoder_runtime import OnnxEncoder
    from megaclass.python_backend.serving.preprocess import to_model_input

    enc = OnnxEncoder(Path(encoder_path))
    return np.concatenate([enc.embed(to_model_input(images[i : i + 256])) for i in range(0, len(images), 256)])


def _rows(ctx: RefreshContext, split: str, encoder_path: Path, classes: list[int] | None = None):
    """(images or embeddings, class ids) of the catalogue's `split` rows (only `classes` when given)."""
    cat = ctx.catalog()
    rows = cat.rows(split)
    if classes is not None:
        rows = rows[np.isin(cat.class_ids[rows], classes)]
    if cat.kind == "embeddings":
        return cat.embeddings[rows], cat.class_ids[rows]
    return cat.images(rows, _input_size(encoder_path)), cat.class_ids[rows]


def _embeddings(ctx: RefreshContext, split: str, encoder_path: Path, classes: list[int] | None = None):
    x, y = _rows(ctx, split, encoder_path, classes)
    if ctx.catalog().kind == "embeddings":
        from megaclass.export.enrol.prototypes import l2_normalize

        return l2_normalize(np.asarray(x, dtype=np.float32)), y
    return (_embed(encoder_path, x) if len(x) else np.zeros((0, 1), np.float32)), y


def measure(encoder_path: Path, index_dir: Path, queries: np.ndarray, y: np.ndarray, top_k: int) -> dict[str, float]:
    """precision@1, hit rate@5 and search recall@top_k (routed vs exact) of one encoder + index on queries."""
    from megaclass.export.evaluate.metrics import hit_rate_at_k, precision_at_1
    from megaclass.python_backend.index.routed_index import RoutedIndex
    from megaclass.python_backend.index.tuning import search_recall_at_k

    index = RoutedIndex.load(Path(index_dir))
    routed = index.search(queries, top_k=top_k).class_ids
    exact = index.exact_search(queries, top_k).class_ids
    return {
        "precision_at_1": precision_at_1(routed, y),
        "hit_rate_at_5": hit_rate_at_k(routed, y, min(5, routed.shape[1])),
        "search_recall": search_recall_at_k(routed, exact),
    }


def _serving_queries(ctx: RefreshContext, encoder_path: Path) -> tuple[np.ndarray, np.ndarray]:
    return _embeddings(ctx, "query", encoder_path)


# ------------------------------------------------------------------------------------------ diff
def step_diff(ctx: RefreshContext) -> dict[str, Any]:
    from megaclass.export.lifecycle.catalog_diff import catalog_fingerprint, diff_catalog
    from megaclass.python_backend.index.routed_index import RoutedIndex

    serving = RoutedIndex.load(ctx.serving.index_dir)
    d = diff_catalog(ctx.catalog(), serving.classes, serving.manifest.get("catalog_classes", {}))
    fp = catalog_fingerprint(ctx.catalog())
    with tracking.track(ctx.cfg.tracking, ctx.cfg.work_dir, "diff", ctx.tags()) as run:
        run.params({"catalog": ctx.req.catalog, "serving_retriever_version": ctx.serving.retriever_version})
        run.tags({"data_fingerprint": fp})
        run.metrics({"added": len(d.added), "removed": len(d.removed), "changed": len(d.changed), "kept": d.kept})
    return {**d.as_dict(), "new_class_share": d.new_class_share, "catalog_fingerprint": fp, "summary": d.summary()}


# --------------------------------------------------------------------------------------- retrain
def retrain_reasons(ctx: RefreshContext, serving_metrics: dict[str, float]) -> list[str]:
    """The retrain rules of `cfg.refresh` that fire (see docs/lifecycle.md)."""
    rc, diff = ctx.cfg.refresh, ctx.results["diff"]
    reasons = []
    if ctx.req.force_retrain:
        reasons.append("--retrain was given")
    if diff["new_class_share"] > rc.retrain_new_class_share:
        reasons.append(
            f"new classes are {diff['new_class_share']:.0%} of the catalogue (> {rc.retrain_new_class_share:.0%})"
        )
    before = _published_metrics(ctx.serving.index_dir).get("precision_at_1")
    now = serving_metrics.get("precision_at_1")
    if before is not None and now is not None and before - now > rc.retrain_precision_drop:
        reasons.append(f"serving precision@1 fell from {before:.3f} to {now:.3f} (> {rc.retrain_precision_drop})")
    from megaclass.python_backend.index.routed_index import RoutedIndex

    drift = RoutedIndex.load(ctx.serving.index_dir).drift()
    if drift > rc.retrain_drift:
        reasons.append(f"index drift {drift:.2f} > {rc.retrain_drift}")
    return reasons


def _published_metrics(index_dir: Path) -> dict[str, float]:
    path = Path(index_dir) / LIFECYCLE_FILE
    return json.loads(path.read_text()).get("metrics", {}) if path.exists() else {}


def step_retrain(ctx: RefreshContext) -> dict[str, Any]:
    q, y = _serving_queries(ctx, ctx.serving.encoder_path)
    serving_metrics = (
        measure(ctx.serving.encoder_path, ctx.serving.index_dir, q, y, ctx.cfg.refresh.top_k) if len(y) else {}
    )
    reasons = retrain_reasons(ctx, serving_metrics)
    out: dict[str, Any] = {"reasons": reasons, "serving_metrics": serving_metrics, "queries": int(len(y))}
    if ctx.req.encoder is not None:
        encoder, how = Path(ctx.req.encoder).resolve(), "the candidate encoder given with --encoder"
    elif reasons and ctx.req.checkpoint is not None:
        encoder, run_id = _warm_start(ctx)
        how, out["train_run_id"] = "warm-started retraining", run_id
    else:
        encoder, how = ctx.serving.encoder_path, "the serving encoder"
        if reasons:
            how += " (a retrain rule fired, but no --checkpoint to warm-start from)"
    sha = artifacts.sha256_file(encoder)
    out.update(encoder=str(encoder), encoder_sha256=sha, retrained="train_run_id" in out)
    out["encoder_changed"] = sha != ctx.serving.encoder_sha256
    out["summary"] = f"encoder: {how}" + (
        f"; retrain rules: {'; '.join(reasons)}" if reasons else "; no retrain rule fired"
    )
    return out


def _warm_start(ctx: RefreshContext) -> tuple[Path, str | None]:
    """Fine-tune the serving checkpoint on the catalogue's training rows, export it to ONNX."""
    from megaclass.export.config import replace
    from megaclass.export.convert.onnx_export import export_onnx
    from megaclass.export.train.training import train_encoder
    from megaclass.python_backend.serving.encoder_model import load_encoder

    out = ctx.step_dir("retrain")
    model = load_encoder(ctx.req.checkpoint)
    x, y = _rows(ctx, "train", ctx.serving.encoder_path)
    train_cfg = replace(ctx.cfg.train, epochs=ctx.cfg.refresh.warm_start_epochs, max_minutes=None)
    with tracking.track(ctx.cfg.tracking, ctx.cfg.work_dir, "train", ctx.tags()) as run:
        run.params({**{f"train.{k}": v for k, v in vars(train_cfg).items()}, "warm_start": ctx.req.checkpoint})
        run.tags({"data_fingerprint": ctx.results["diff"]["catalog_fingerprint"]})
        result = train_encoder(x, y, train_cfg, out / "train", model=model, progress=False)
        for epoch, h in enumerate(result.history):
            run.metrics(h, step=epoch)
        onnx = out / "encoder.onnx"
        rep = export_onnx(result.model, onnx, ctx.cfg.export, image_size=x.shape[1])
        run.tags({"encoder_sha256": rep.sha256})
        run.artifact(onnx, "onnx")
        return onnx, run.id


# ----------------------------------------------------------------------------------------- index
def step_index(ctx: RefreshContext) -> dict[str, Any]:
    from megaclass.export.enrol.prototypes import class_prototypes
    from megaclass.export.lifecycle.catalog_diff import class_fingerprints
    from megaclass.python_backend.index.routed_index import RoutedIndex

    diff, enc = ctx.results["diff"], ctx.results["retrain"]
    encoder, cat = Path(enc["encoder"]), ctx.catalog()
    serving = RoutedIndex.load(ctx.serving.index_dir)
    pp = serving.cfg.prototypes_per_class
    if enc["encoder_changed"]:  # new embedding space: every class re-enrolled, the router retrained
        x, y = _embeddings(ctx, "train", encoder)
        protos, ids = class_prototypes(x, y, pp)
        index, mode = RoutedIndex.build(protos, ids, dict(cat.labels), serving.cfg), "rebuilt"
    else:  # the same encoder: enrol and remove without retraining
        index, mode = serving, "incremental"
        index.remove(np.array(diff["removed"] + diff["changed"], dtype=np.int64))
        enrol = diff["added"] + diff["changed"]
        if enrol:
            x, y = _embeddings(ctx, "train", encoder, enrol)
            protos, ids = class_prototypes(x, y, pp)
            index.add(protos, ids, {c: cat.labels[c] for c in enrol})
        if index.needs_rebuild:
            index.rebuild_router()
            mode = "incremental, router rebuilt (needs_rebuild)"
    out = ctx.step_dir("index") / "index"
    extra = {
        "catalog_classes": {str(c): fp for c, fp in class_fingerprints(cat).items()},
        "encoder_sha256": enc["encoder_sha256"],
    }
    index.save(out, extra_manifest=extra)
    with tracking.track(ctx.cfg.tracking, ctx.cfg.work_dir, "index build", ctx.tags()) as run:
        run.params({"mode": mode, **{f"index.{k}": v for k, v in vars(index.cfg).items()}})
        run.tags({"encoder_sha256": enc["encoder_sha256"], "data_fingerprint": diff["catalog_fingerprint"]})
        run.metrics({"classes": index.num_classes, "prototypes": index.num_prototypes, "drift": index.drift()})
        run.artifact(out / "manifest.json", "index")
    summary = f"{mode}: {index.num_classes} classes, {index.num_prototypes} prototypes, {index.nlist} clusters"
    return {
        "index_dir": str(out),
        "mode": mode,
        "classes": index.num_classes,
        "index_run_id": run.id,
        "summary": summary,
    }


def step_tune(ctx: RefreshContext) -> dict[str, Any]:
    from megaclass.python_backend.index.persistence import update_manifest_params
    from megaclass.python_backend.index.routed_index import RoutedIndex
    from megaclass.python_backend.index.tuning import tune

    built = ctx.results["index"]
    if built["mode"] == "incremental":
        return {"skipped": True, "summary": "skipped: the router was kept (needs_rebuild is false)"}
    q, _ = _embeddings(ctx, "query", Path(ctx.results["retrain"]["encoder"]))
    index_dir = Path(built["index_dir"])
    index, rc = RoutedIndex.load(index_dir), ctx.cfg.refresh
    result = tune(index, q, target_recall=rc.tune_target_recall, top_k=min(rc.top_k, index.num_classes))
    params = {"nprobe": result.nprobe, "rerank": result.rerank, "probe_margin": result.probe_margin}
    update_manifest_params(index_dir, params, {"target_recall": rc.tune_target_recall, "recall": result.recall})
    with tracking.track(ctx.cfg.tracking, ctx.cfg.work_dir, "index tune", ctx.tags()) as run:
        run.params({k: v for k, v in params.items()} | {"target_recall": rc.tune_target_recall})
        run.metrics({"search_recall": result.recall, "qps": result.qps})
    return {**params, "recall": result.recall, "summary": f"tuned: nprobe {result.nprobe}, recall {result.recall:.3f}"}


# ------------------------------------------------------------------------------ evaluate, gate
def step_evaluate(ctx: RefreshContext) -> dict[str, Any]:
    enc = ctx.results["retrain"]
    q, y = _embeddings(ctx, "query", Path(enc["encoder"]))
    candidate = measure(Path(enc["encoder"]), Path(ctx.results["index"]["index_dir"]), q, y, ctx.cfg.refresh.top_k)
    serving = enc["serving_metrics"]
    with tracking.track(ctx.cfg.tracking, ctx.cfg.work_dir, "evaluate", ctx.tags()) as run:
        run.metrics(
            {f"candidate_{k}": v for k, v in candidate.items()} | {f"serving_{k}": v for k, v in serving.items()}
        )
        run.metrics({"queries": len(y)})
    text = ", ".join(f"{k} {candidate[k]:.3f} (serving {serving.get(k, float('nan')):.3f})" for k in candidate)
    return {"candidate": candidate, "serving": serving, "queries": int(len(y)), "summary": f"candidate: {text}"}


def step_gate(ctx: RefreshContext) -> dict[str, Any]:
    from megaclass.export.lifecycle.gate import decide

    ev = ctx.results["evaluate"]
    decision = decide(ev["candidate"], ev["serving"] or None, ev["queries"], ctx.cfg.gate)
    with tracking.track(ctx.cfg.tracking, ctx.cfg.work_dir, "gate", ctx.tags()) as run:
        run.tags({"decision": "passed" if decision.passed else "refused", "reasons": "; ".join(decision.reasons)})
        run.params({k: v for k, v in vars(ctx.cfg.gate).items()})
        run.metrics({f"candidate_{k}": v for k, v in ev["candidate"].items()})
        run.metrics({f"serving_{k}": v for k, v in ev["serving"].items()})
    verdict = "passed" if decision.passed else "REFUSED: " + "; ".join(decision.reasons)
    return {**decision.as_dict(), "gate_run_id": run.id, "summary": f"gate {verdict}"}


STEP_FUNCTIONS: dict[str, Callable[[RefreshContext], dict[str, Any]]] = {
    "diff": step_diff,
    "retrain": step_retrain,
    "index": step_index,
    "tune": step_tune,
    "evaluate": step_evaluate,
    "gate": step_gate,
    "publish": step_publish,
}
