"""MLflow tracking: runs, metrics per step, the registry alias; a broken store only warns."""

from __future__ import annotations

import logging

from megaclass.export.config import TrackingConfig
from megaclass.export.lifecycle import tracking


def test_a_run_holds_params_metrics_tags_and_artifacts_and_registers_with_the_alias(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = TrackingConfig()
    (tmp_path / "manifest.json").write_text("{}")
    with tracking.track(cfg, tmp_path, "train", {"refresh_key": "k1"}) as run:
        run.params({"epochs": 3})
        for epoch in range(3):
            run.metrics({"loss": 1.0 / (epoch + 1), "not_a_number": "x"}, step=epoch)
        run.artifact(tmp_path / "manifest.json", "index")
        version = tracking.register_version(cfg, tmp_path, run, "index", {"retriever_version": 2})
    assert tracking.tracking_uri(cfg, tmp_path) == f"sqlite:///{(tmp_path / 'mlflow' / 'mlflow.db').resolve()}"
    client = tracking.connect(cfg, tmp_path)
    got = client.get_run(run.id)
    assert got.info.status == "FINISHED" and got.data.params["epochs"] == "3"
    assert got.data.tags["stage"] == "train" and got.data.tags["refresh_key"] == "k1" and got.data.tags["git_commit"]
    assert [m.value for m in client.get_metric_history(run.id, "loss")] == [1.0, 0.5, 1 / 3]
    assert [a.path for a in client.list_artifacts(run.id, "index")] == ["index/manifest.json"]
    assert (tmp_path / "mlflow" / "artifacts").is_dir()  # artifacts beside the database, not in the cwd
    assert version == "1"
    assert client.get_model_version_by_alias(cfg.registered_model, cfg.serving_alias).tags["retriever_version"] == "2"
    assert [r.info.run_id for r in tracking.find_runs(cfg, tmp_path, "tags.stage = 'train'")] == [run.id]


def test_a_failing_store_warns_and_the_command_goes_on(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = TrackingConfig(tracking_uri=f"sqlite:///{blocker}/sub/mlflow.db")  # a file where a folder should be
    with caplog.at_level(logging.WARNING), tracking.track(cfg, tmp_path, "train") as run:
        run.metrics({"loss": 1.0})
        ran = True
    assert ran and run.id is None
    assert "MLflow tracking" in caplog.text and "goes on untracked" in caplog.text


def test_disabled_tracking_touches_nothing(tmp_path):
    with tracking.track(TrackingConfig(enabled=False), tmp_path, "train") as run:
        run.metrics({"loss": 1.0})
    assert run.id is None and not (tmp_path / "mlflow").exists()
