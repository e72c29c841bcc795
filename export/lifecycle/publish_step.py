"""The refresh's last step: publish the candidate that passed the gate, load it, register it in MLflow.

A refused candidate publishes nothing: the serving version keeps answering and the result says why.
The published index carries `lifecycle.json` (catalogue fingerprint, the metrics it was published
with), read by the next refresh's precision-drop retrain rule and by `megaclass lineage`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megaclass.export.lifecycle import tracking
from megaclass.export.lifecycle.refresh import RefreshContext

LIFECYCLE_FILE = "lifecycle.json"


def _nothing_changed(ctx: RefreshContext) -> bool:
    diff, enc = ctx.results["diff"], ctx.results["retrain"]
    return not (diff["added"] or diff["removed"] or diff["changed"] or enc["encoder_changed"])


def lineage_tags(ctx: RefreshContext) -> dict[str, Any]:
    """What `megaclass lineage` prints: data -> training run -> encoder -> index -> published version."""
    enc, diff = ctx.results["retrain"], ctx.results["diff"]
    return {
        "catalog": str(ctx.req.catalog),
        "data_fingerprint": diff["catalog_fingerprint"],
        "classes": diff["catalog_classes"],
        "train_run_id": enc.get("train_run_id") or "",
        "encoder_sha256": enc["encoder_sha256"],
        "encoder_source": enc["encoder"],
        "index_run_id": ctx.results["index"].get("index_run_id") or "",
        "gate_run_id": ctx.results["gate"].get("gate_run_id") or "",
        "refresh_key": ctx.key,
    }


def step_publish(ctx: RefreshContext) -> dict[str, Any]:
    from megaclass.export.repository.publish import PublishError, load_models, publish_encoder, publish_index

    gate = ctx.results["gate"]
    if not gate["passed"]:
        why = "; ".join(gate["reasons"])
        return {"published": False, "reasons": gate["reasons"], "summary": f"kept serving version: {why}"}
    if _nothing_changed(ctx):
        return {"published": False, "reasons": ["nothing changed"], "summary": "nothing changed; nothing published"}
    enc, repo = ctx.results["retrain"], Path(ctx.req.repository)
    index_dir = Path(ctx.results["index"]["index_dir"])
    info = {"metrics": ctx.results["evaluate"]["candidate"], **lineage_tags(ctx)}
    (index_dir / LIFECYCLE_FILE).write_text(json.dumps(info, indent=2))
    keep = ctx.cfg.refresh.keep_versions
    done = []
    if enc["encoder_changed"]:
        done.append(publish_encoder(repo, Path(enc["encoder"]), keep=keep, promote_it=True))
    done.append(publish_index(repo, index_dir, keep=keep, promote_it=True))  # the gate passed: it serves
    versions = {p.model: p.version for p in done}
    if ctx.req.url:
        try:
            load_models(ctx.req.url, list(versions), ctx.req.protocol, ctx.req.admin_key, repo=repo)
        except PublishError as exc:
            return {"published": False, "versions": versions, "reasons": [str(exc)], "summary": f"load failed: {exc}"}
    registered = _register(ctx, versions, index_dir)
    text = ", ".join(f"{m} v{v}" for m, v in versions.items())
    return {
        "published": True,
        "versions": versions,
        "registered_version": registered,
        "summary": f"published {text}" + (f"; registered as version {registered}" if registered else ""),
    }


def _register(ctx: RefreshContext, versions: dict[str, int], index_dir: Path) -> str | None:
    """A `publish` run holding the index manifest and gate decision, registered with the serving alias."""
    from megaclass.python_backend.index.persistence import read_manifest
    from megaclass.python_backend.serving.retriever_service import index_fingerprint

    fingerprint = index_fingerprint(read_manifest(index_dir))
    retriever_version = versions.get("retriever")
    index_version = f"{retriever_version}:{fingerprint}"
    tags = {**lineage_tags(ctx), "index_version": index_version, "retriever_version": retriever_version}
    if "encoder" in versions:
        tags["encoder_version"] = versions["encoder"]
    cfg = ctx.cfg.tracking
    with tracking.track(cfg, ctx.cfg.work_dir, "publish", ctx.tags()) as run:
        run.tags(tags)
        run.metrics(ctx.results["evaluate"]["candidate"])
        run.artifact(index_dir / "manifest.json", "index")
        run.artifact(index_dir / LIFECYCLE_FILE, "index")
        run.artifact(ctx.step_dir("gate") / "done.json", "gate")
        return tracking.register_version(cfg, ctx.cfg.work_dir, run, "index", tags)
