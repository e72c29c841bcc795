"""`megaclass train | evaluate | export` end to end on a tiny glyph config (about 20 s on a 2-core CPU)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from megaclass.clients.cli import train as commands
from megaclass.export.train.losses import LOSSES, MINING


def run(*argv: str) -> int:
    """The subcommands as `megaclass` registers them (global --config, then the subcommand)."""
    parser = argparse.ArgumentParser(prog="megaclass")
    parser.add_argument("--config", default=None)
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_choices_match_the_registries():
    assert set(commands.LOSS_NAMES) == set(LOSSES)
    assert set(commands.MINING_NAMES) == set(MINING)


TINY = """
work_dir = "{work}"
[glyphs]
held_out_class_fraction = 0.2
workers = 1
[train]
embedding_dim = 16
batch_size = 64
threads = 1
[export]
parity_batch_sizes = [1, 5]
"""


@pytest.mark.slow
def test_train_evaluate_export_smoke(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.format(work=tmp_path / "work"))
    out = tmp_path / "run"
    base = ("--config", str(config))
    assert (
        run(*base, "train", "--max-classes", "20", "--width", "4", "--epochs", "1", "--out", str(out), "--quiet") == 0
    )
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and "precision_at_1" in json.loads(lines[0])
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["peak_rss_mib"] > 0 and summary["classes"] == 16  # 20 classes, 20 % held out
    run_cfg = json.loads((out / "run.json").read_text())
    assert run_cfg["data"]["kind"] == "glyphs" and run_cfg["config"]["glyphs"]["max_classes"] == 20

    assert run(*base, "evaluate", str(out / "checkpoint.pt"), "--quiet") == 0
    report = json.loads((out / "eval" / "report.json").read_text())
    assert set(report["splits"]) == {"seen_classes", "tail", "held_out_classes"}
    seen = report["splits"]["seen_classes"]
    assert seen["queries"] > 0 and 0.0 <= seen["precision_at_1"] <= 1.0 and "map_at_r" in seen
    assert report["splits"]["held_out_classes"]["queries"] > 0
    assert (out / "eval" / "prototypes_pca.png").stat().st_size > 1000
    assert report["severity"]["source"].startswith("k-means")  # the fallback without --taxonomy
    from megaclass.export.config import load_config
    from megaclass.export.lifecycle import tracking

    cfg = load_config(config)  # the tracked evaluate run stores the report as written, severity included
    (evaluated,) = tracking.find_runs(cfg.tracking, cfg.work_dir, "tags.stage = 'evaluate'")
    client = tracking.connect(cfg.tracking, cfg.work_dir)
    stored = {a.path for a in client.list_artifacts(evaluated.info.run_id, "evaluation")}
    assert {"evaluation/report.json", "evaluation/severity.png"} <= stored
    local = client.download_artifacts(evaluated.info.run_id, "evaluation/report.json", str(tmp_path))
    assert json.loads(open(local).read())["severity"] == report["severity"]

    # a taxonomy by Unicode block (code point // 128 -> block -> script half) gives the severity figures
    cps = torch.load(out / "checkpoint.pt", weights_only=True)["classes"].tolist()
    queries = report["splits"]["seen_classes"]["queries"] + report["splits"]["held_out_classes"]["queries"]
    tax = tmp_path / "tax.csv"
    tax.write_text(
        "class,parent\n" + "".join(f"{c},block{c // 128}\nblock{c // 128},half{c // 4096}\n" for c in sorted(set(cps)))
    )
    tax.write_text("\n".join(dict.fromkeys(tax.read_text().splitlines())) + "\n")  # each block once
    assert run(*base, "evaluate", str(out / "checkpoint.pt"), "--quiet", "--taxonomy", str(tax)) == 0
    sev = json.loads((out / "eval" / "report.json").read_text())["severity"]
    assert sev["queries"] == queries and set(sev["precision_at_1_by_level"]) == {"1", "2", "3"}
    p = sev["precision_at_1_by_level"]
    assert p["1"] >= p["2"] >= p["3"] and sum(sev["severity_histogram"].values()) == sev["mistakes"]
    assert (out / "eval" / "severity.png").stat().st_size > 1000
    assert "mistake severity by taxonomy" in capsys.readouterr().out

    assert run(*base, "export", str(out / "checkpoint.pt"), "--tensorrt") == 0
    exp = json.loads((out / "export" / "export_report.json").read_text())
    assert max(exp["fp32"]["max_abs_diff"].values()) < 1e-4
    assert exp["fp16"]["fp16"] is True
    assert (out / "export" / "encoder.onnx").exists() and (out / "export" / "encoder_fp16.onnx").exists()
    try:
        import tensorrt  # noqa: F401

        assert (out / "export" / "model.plan").exists()
    except ImportError:
        assert exp["tensorrt"].startswith("skipped")
        assert "TensorRT is not available" in capsys.readouterr().out


def test_synthetic_softmax_train_and_evaluate(tmp_path):
    """The synthetic long-tailed set through the CLI; a softmax checkpoint also reports its own head."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.format(work=tmp_path / "work"))
    out = tmp_path / "syn"
    base = ("--config", str(config))
    argv = ("train", "--synthetic-classes", "300", "--loss", "softmax", "--width", "4", "--epochs", "1")
    assert run(*base, *argv, "--out", str(out), "--quiet") == 0
    assert run(*base, "evaluate", str(out / "checkpoint.pt"), "--quiet") == 0
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["loss"] == "softmax"
    assert report["splits"]["tail"]["queries"] > 0 and report["splits"]["held_out_classes"]["queries"] == 200
    head = report["softmax_head"]
    assert head["held_out_classes"].startswith("cannot answer")
    assert 0.0 <= head["seen_classes"]["precision_at_1"] <= 1.0
    assert run(*base, "export", str(out / "checkpoint.pt")) == 1  # vectors: no image encoder to export


def test_train_flags_seed_progress_resume(tmp_path, capsys):
    """`megaclass train` flags on the synthetic set: a progress bar, JSON-lines metrics, seeded, resumable."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.format(work=tmp_path / "work"))
    base = ("--config", str(config))
    argv = ("train", "--synthetic-classes", "300", "--loss", "cosface", "--width", "4")

    def losses(out):
        return [json.loads(s)["loss"] for s in (out / "metrics.jsonl").read_text().splitlines()]

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run(*base, *argv, "--seed", "3", "--epochs", "1", "--out", str(a)) == 0
    assert "epoch 1/1" in capsys.readouterr().err  # the tqdm bar (no --quiet)
    assert run(*base, *argv, "--seed", "3", "--epochs", "1", "--out", str(b), "--quiet") == 0
    assert run(*base, *argv, "--seed", "4", "--epochs", "1", "--out", str(c), "--quiet") == 0
    assert losses(a) == losses(b) != losses(c)
    first = losses(a)
    assert run(*base, *argv, "--seed", "3", "--epochs", "2", "--out", str(a), "--resume", "--quiet") == 0
    assert len(losses(a)) == 2 and losses(a)[0] == first[0]  # epoch 1 kept, epoch 2 added
    import torch

    ckpt = torch.load(a / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["seed"] == 3 and ckpt["config"]["loss"] == "cosface"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_train_on_cuda_without_cuda_is_a_message(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.format(work=tmp_path / "work"))
    argv = ("train", "--synthetic-classes", "50", "--device", "cuda", "--out", str(tmp_path / "r"), "--quiet")
    assert run("--config", str(config), *argv) == 1
    assert "CUDA is not available" in capsys.readouterr().err
