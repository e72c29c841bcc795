"""MLflow tracking and model registry for every offline step, cheap and never fatal.

A step opens `track(cfg, work_dir, stage)`; the handle logs parameters, per-step metrics, tags
and artifact files. The store is `cfg.tracking_uri`, else `$MLFLOW_TRACKING_URI`, else a local
SQLite database under `work_dir/mlflow` (artifacts beside it). Any MLflow failure — not
installed, store unreachable, a locked database — logs one warning and the command goes on:
tracking records what happened, it never decides it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from megaclass.export.config import TrackingConfig

log = logging.getLogger(__name__)


def tracking_uri(cfg: TrackingConfig, work_dir: str | Path) -> str:
    """Where runs go: the configured URI, `$MLFLOW_TRACKING_URI`, or SQLite under `work_dir/mlflow`."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = (Path(work_dir) / "mlflow").resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def git_commit() -> str:
    """The source tree's commit (with `-dirty` when it has local changes), or "unknown"."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _warn(what: str, exc: BaseException) -> None:
    log.warning("MLflow tracking: %s failed (%s: %s); the command goes on untracked", what, type(exc).__name__, exc)


# One client per store and experiment in a process: opening a SQL store checks its schema (seconds).
_CLIENTS: dict[tuple[str, str], Any] = {}


def connect(cfg: TrackingConfig, work_dir: str | Path) -> Any | None:
    """An `MlflowClient` on the store with the experiment set, or None (disabled, or MLflow failed)."""
    if not cfg.enabled:
        return None
    try:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline by default: no usage reports
        for name in ("alembic", "mlflow.store.db.utils"):  # "Creating initial MLflow database tables..."
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow import MlflowClient

        # A client on the URI, not the fluent API: mlflow.set_tracking_uri writes $MLFLOW_TRACKING_URI,
        # which would send later runs of this process (another work_dir) to this store.
        uri = tracking_uri(cfg, work_dir)
        if (uri, cfg.experiment) in _CLIENTS:
            return _CLIENTS[(uri, cfg.experiment)]
        client = MlflowClient(uri, uri)
        if client.get_experiment_by_name(cfg.experiment) is None:
            location = None
            if not (cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
                location = (Path(work_dir) / "mlflow" / "artifacts").resolve().as_uri()
            client.create_experiment(cfg.experiment, artifact_location=location)
        _CLIENTS[(uri, cfg.experiment)] = client
        return client
    except Exception as exc:  # noqa: BLE001 - tracking must never break a command
        _warn("connecting to the store", exc)
        return None


class Run:
    """One MLflow run; every method is a no-op when tracking is off and only warns when MLflow fails."""

    def __init__(self, client: Any | None, run_id: str | None):
        self.client, self.id = client, run_id

    def _do(self, what: str, fn, *args, **kwargs) -> None:
        if self.client is None or self.id is None:
            return
        try:
            fn(self.id, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            _warn(what, exc)

    def _batch(self, what: str, **kwargs: Any) -> None:
        """One `log_batch` call: one database transaction, however many values."""
        self._do(what, lambda rid: self.client.log_batch(rid, **kwargs))

    def params(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        if self.client is not None and values:
            self._batch("logging params", params=[Param(k, str(v)[:6000]) for k, v in values.items()])

    def tags(self, values: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        if self.client is not None and values:
            self._batch("setting tags", tags=[RunTag(k, str(v)) for k, v in values.items()])

    def metrics(self, values: dict[str, Any], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [
            Metric(k, float(v), now, step or 0)
            for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and v == v
        ]
        if self.client is not None and rows:
            self._batch("logging metrics", metrics=rows)

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if not path.exists():
            return
        if path.is_dir():
            self._do(f"storing {path}", lambda rid: self.client.log_artifacts(rid, str(path), artifact_path))
        else:
            self._do(f"storing {path}", lambda rid: self.client.log_artifact(rid, str(path), artifact_path))


@contextlib.contextmanager
def track(cfg: TrackingConfig, work_dir: str | Path, stage: str, tags: dict[str, Any] | None = None) -> Iterator[Run]:
    """A run named `stage` (tags: stage, git commit, `tags`); FINISHED, or FAILED when the block raises."""
    client = connect(cfg, work_dir)
    run = Run(None, None)
    if client is not None:
        try:
            exp = client.get_experiment_by_name(cfg.experiment)
            info = client.create_run(exp.experiment_id, run_name=stage).info
            run = Run(client, info.run_id)
        except Exception as exc:  # noqa: BLE001
            _warn("starting a run", exc)
    run.tags({"stage": stage, "git_commit": git_commit(), **(tags or {})})
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        run._do("ending the run", lambda rid: client.set_terminated(rid, status))


def register_version(
    cfg: TrackingConfig, work_dir: str | Path, run: Run, artifact_path: str, tags: dict[str, Any]
) -> str | None:
    """Register `runs:/<run>/<artifact_path>` as a new version of `cfg.registered_model`, tagged with
    `tags`, and point the serving alias at it; the version number, or None when tracking failed."""
    if run.client is None or run.id is None:
        return None
    client = run.client
    try:
        from mlflow.exceptions import MlflowException

        try:
            client.get_registered_model(cfg.registered_model)
        except MlflowException:
            client.create_registered_model(cfg.registered_model)
        mv = client.create_model_version(
            cfg.registered_model,
            source=f"runs:/{run.id}/{artifact_path}",
            run_id=run.id,
            tags={k: str(v) for k, v in tags.items()},
        )
        client.set_registered_model_alias(cfg.registered_model, cfg.serving_alias, mv.version)
        return str(mv.version)
    except Exception as exc:  # noqa: BLE001
        _warn("registering the published version", exc)
        return None


def find_runs(cfg: TrackingConfig, work_dir: str | Path, filter_string: str) -> list[Any]:
    """Runs of the experiment matching an MLflow filter (e.g. "tags.stage = 'train'"), newest first."""
    client = connect(cfg, work_dir)
    if client is None:
        return []
    exp = client.get_experiment_by_name(cfg.experiment)
    return list(client.search_runs([exp.experiment_id], filter_string, order_by=["attributes.start_time DESC"]))
