"""`megaclass lineage VERSION`: which data, training run, encoder and index produced an answer.

VERSION is the `INDEX_VERSION` every answer carries (`<retriever version>:<index fingerprint>`)
or just the retriever version. The registered model version published with it holds the chain in
its tags; the runs it names add their parameters and metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from megaclass.export.config import TrackingConfig
from megaclass.export.lifecycle import tracking


class LineageError(LookupError):
    """No registered version matches."""


def find_version(cfg: TrackingConfig, work_dir: str | Path, version: str) -> Any:
    """The registered model version published as retriever `version` (newest when several match)."""
    client = tracking.connect(cfg, work_dir)
    if client is None:
        raise LineageError("MLflow tracking is disabled or unreachable (see the warning above)")
    retriever = version.split(":")[0]
    found = client.search_model_versions(f"name = '{cfg.registered_model}' and tags.retriever_version = '{retriever}'")
    if ":" in version:
        found = [mv for mv in found if mv.tags.get("index_version") == version]
    if not found:
        raise LineageError(f"no published version {version!r} in {tracking.tracking_uri(cfg, work_dir)}")
    return max(found, key=lambda mv: int(mv.version))


def _aliases(client: Any, cfg: TrackingConfig, mv: Any) -> list[str]:
    """The aliases pointing at `mv` (a search result does not carry them)."""
    try:
        current = client.get_model_version_by_alias(cfg.registered_model, cfg.serving_alias)
    except Exception:  # noqa: BLE001 - no alias set yet
        return []
    return [cfg.serving_alias] if str(current.version) == str(mv.version) else []


def lineage(cfg: TrackingConfig, work_dir: str | Path, version: str) -> list[tuple[str, str]]:
    """The chain as (stage, description) rows: data, training run, encoder, index, published version."""
    mv = find_version(cfg, work_dir, version)
    client = tracking.connect(cfg, work_dir)
    t = mv.tags
    aliases = _aliases(client, cfg, mv)
    train = t.get("train_run_id") or ""
    if train:
        run = client.get_run(train)
        hist = client.get_metric_history(train, "loss") if "loss" in run.data.metrics else []
        train_text = (
            f"run {train} (warm start from {run.data.params.get('warm_start', '?')}, {len(hist)} epochs logged)"
        )
    else:
        train_text = "none in this refresh: the encoder was not retrained"
    index_text = f"run {t.get('index_run_id', '?')}"
    if t.get("index_run_id"):
        run = client.get_run(t["index_run_id"])
        index_text += f" ({run.data.params.get('mode', '?')}, {int(run.data.metrics.get('classes', 0))} classes)"
    return [
        (
            "data",
            f"catalogue {t.get('catalog', '?')} (fingerprint {t.get('data_fingerprint', '?')}, {t.get('classes', '?')} classes)",
        ),
        ("training run", train_text),
        ("encoder", f"sha256 {t.get('encoder_sha256', '?')[:16]} from {t.get('encoder_source', '?')}"),
        ("index", index_text),
        (
            "gate",
            f"run {t['gate_run_id']}: passed"
            if t.get("gate_run_id")
            else "none: published by hand (megaclass publish)",
        ),
        (
            "published version",
            f"INDEX_VERSION {t.get('index_version', '?')}; {mv.name} version {mv.version}"
            + (f" (alias: {', '.join(aliases)})" if aliases else "")
            + f"; publish run {mv.run_id}",
        ),
    ]
