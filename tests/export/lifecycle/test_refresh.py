"""`megaclass refresh` without a server: the steps, resuming, skipping, the gate, lineage and the report."""

from __future__ import annotations

import pytest

from megaclass.clients.cli.main import main
from megaclass.export.config import load_config
from megaclass.export.lifecycle.lineage import LineageError, lineage
from megaclass.export.lifecycle.refresh import RefreshError, RefreshRequest, run_refresh
from megaclass.export.lifecycle.report import write_report
from megaclass.export.lifecycle.steps import REFUSED, STEP_NAMES
from megaclass.export.repository.generate import versions
from megaclass.export.repository.tiny import build_tiny_repository, write_tiny_catalog
from megaclass.python_backend.serving.config import ServingConfig


@pytest.fixture
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    repo, onnx, _ = build_tiny_repository(root, ServingConfig())
    return root, repo, onnx, write_tiny_catalog(root / "catalog", 44, drop=(1000, 1001))


def test_steps_resume_and_a_repeated_refresh_changes_nothing(tiny, tmp_path, capsys):
    root, repo, _, catalog = tiny
    cfg = load_config(None, {"work_dir": str(tmp_path)})
    part = run_refresh(cfg, RefreshRequest(catalog, repo), until="evaluate")
    assert list(part.results) == list(STEP_NAMES[:5]) and not (part.run_dir / "gate").exists()
    stamp = (part.run_dir / "index" / "done.json").stat().st_mtime_ns
    capsys.readouterr()
    full = run_refresh(cfg, RefreshRequest(catalog, repo))
    assert full.run_dir == part.run_dir and full.published
    assert (part.run_dir / "index" / "done.json").stat().st_mtime_ns == stamp  # resumed, not redone
    assert capsys.readouterr().out.count("done before, skipped") == 5
    assert full.results["diff"]["added"] == [1040, 1041, 1042, 1043] and full.results["diff"]["removed"] == [1000, 1001]
    assert versions(repo / "retriever")[-1] == 2
    again = run_refresh(cfg, RefreshRequest(catalog, repo))  # the serving version moved: a new key, no changes
    assert not again.published and again.results["publish"]["reasons"] == ["nothing changed"]
    chain = dict(lineage(cfg.tracking, cfg.work_dir, "2"))
    assert "42 classes" in chain["data"] and "not retrained" in chain["training run"]
    with pytest.raises(LineageError, match="no published version"):
        lineage(cfg.tracking, cfg.work_dir, "7")
    md = write_report(cfg.tracking, cfg.work_dir, tmp_path / "report").read_text()
    assert md.count("| passed") == 2 and "metrics.png" in md


def test_the_cli_refuses_a_worse_encoder_with_its_own_exit_status(tiny, tmp_path, capsys):
    import torch

    from megaclass.export.config import ExportConfig
    from megaclass.export.convert.onnx_export import export_onnx
    from megaclass.export.repository.tiny import EMBEDDING_DIM, IMAGE_SIZE, projection_encoder

    root, repo, _, catalog = tiny
    model = projection_encoder(IMAGE_SIZE, EMBEDDING_DIM)
    with torch.no_grad():
        model.proj.weight[1:] = 0  # rank 1: every class on one line
    export_onnx(model, tmp_path / "bad.onnx", ExportConfig(), image_size=IMAGE_SIZE)
    before = versions(repo / "retriever")
    args = ["refresh", "--catalog", str(catalog), "--repository", str(repo), "--work-dir", str(tmp_path)]
    decision = tmp_path / "decision"
    assert main([*args, "--encoder", str(tmp_path / "bad.onnx"), "--decision-file", str(decision)]) == REFUSED
    assert decision.read_text() == "refused" and versions(repo / "retriever") == before
    assert "kept serving version: precision_at_1" in capsys.readouterr().out


def test_a_retrain_rule_without_a_checkpoint_says_so_and_bad_input_is_a_clear_error(tiny, tmp_path):
    root, repo, _, catalog = tiny
    cfg = load_config(None, {"work_dir": str(tmp_path), "refresh": {"retrain_new_class_share": 0.01}})
    out = run_refresh(cfg, RefreshRequest(catalog, repo), until="retrain")
    assert "new classes are" in out.results["retrain"]["reasons"][0]
    assert "no --checkpoint" in out.results["retrain"]["summary"] and not out.results["retrain"]["retrained"]
    with pytest.raises(RefreshError, match="no such catalogue"):
        run_refresh(cfg, RefreshRequest(root / "missing.csv", repo))
    with pytest.raises(RefreshError, match="no published encoder"):
        run_refresh(cfg, RefreshRequest(catalog, tmp_path))


def test_a_forced_retrain_warm_starts_from_the_checkpoint_and_rebuilds_the_index(tiny, tmp_path):
    from megaclass.export.lifecycle import tracking
    from megaclass.export.repository.tiny import EMBEDDING_DIM, IMAGE_SIZE
    from megaclass.python_backend.serving.encoder_model import GlyphEncoder, save_encoder

    root, repo, _, catalog = tiny
    checkpoint = save_encoder(
        GlyphEncoder(embedding_dim=EMBEDDING_DIM, width=4).eval(), tmp_path / "enc.pt", image_size=IMAGE_SIZE
    )
    overrides = {"refresh": {"warm_start_epochs": 2}, "train": {"batch_size": 32, "samples_per_class": 2}}
    cfg = load_config(None, {"work_dir": str(tmp_path / "work"), **overrides, "augment": {"enabled": False}})
    out = run_refresh(cfg, RefreshRequest(catalog, repo, checkpoint=checkpoint, force_retrain=True), until="evaluate")
    enc = out.results["retrain"]
    assert enc["retrained"] and enc["encoder_changed"] and enc["reasons"] == ["--retrain was given"]
    assert out.results["index"]["mode"] == "rebuilt" and not out.results["tune"].get("skipped")
    train = tracking.find_runs(cfg.tracking, cfg.work_dir, "tags.stage = 'train'")
    assert [r.info.run_id for r in train] == [enc["train_run_id"]]
    client = tracking.connect(cfg.tracking, cfg.work_dir)
    assert len(client.get_metric_history(enc["train_run_id"], "loss")) == 2  # one point per epoch
