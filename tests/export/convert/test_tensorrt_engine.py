"""The TensorRT engine builder: the optimisation profile and flags it sets (a fake `tensorrt` where none is installed)."""

from __future__ import annotations

import sys
import types

import pytest

from megaclass.export.convert.tensorrt_engine import (
    EngineProfile,
    TensorRTUnavailable,
    build_engine,
    tensorrt_available,
)


def fake_tensorrt(calls: dict) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "fake"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls["profile"] = (name, lo, opt, hi)

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls["workspace"] = size

        def set_flag(self, flag):
            calls.setdefault("flags", []).append(flag)

        def add_optimization_profile(self, profile):
            calls["profiles"] = calls.get("profiles", 0) + 1

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["network_flags"] = flags
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"PLAN"

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse(self, data):
            calls["onnx_bytes"] = len(data)
            return True

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace()  # TensorRT 10: no EXPLICIT_BATCH
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16")
    return trt


def test_profile_and_fp16(tmp_path, monkeypatch):
    calls: dict = {}
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(calls))
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    plan = build_engine(onnx, tmp_path / "model.plan", "IMAGE", (1, 32, 32), EngineProfile(1, 8, 64), fp16=True)
    assert plan.read_bytes() == b"PLAN"
    assert calls["profile"] == ("IMAGE", (1, 1, 32, 32), (8, 1, 32, 32), (64, 1, 32, 32))
    assert calls["flags"] == ["fp16"] and calls["profiles"] == 1 and calls["network_flags"] == 0


def test_profile_order_checked():
    with pytest.raises(ValueError):
        EngineProfile(4, 2, 8)


def test_unavailable_is_a_typed_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    assert tensorrt_available()[0] is False
    with pytest.raises(TensorRTUnavailable):
        build_engine(tmp_path / "m.onnx", tmp_path / "p.plan", "IMAGE", (1, 8, 8), EngineProfile())


# --- `megaclass export --tensorrt`: an engine where TensorRT imports, a clear message where it does not


@pytest.fixture
def checkpoint(tmp_path):
    import torch

    from megaclass.export.config import TrainConfig
    from megaclass.python_backend.serving.encoder_model import build_encoder, save_encoder

    torch.manual_seed(0)
    model = build_encoder(TrainConfig(embedding_dim=8, width=4), 16)
    return save_encoder(model.eval(), tmp_path / "run" / "checkpoint.pt", image_size=16)


def export_cli(checkpoint, *extra):
    from ...clients.cli.test_train import run

    return run("export", str(checkpoint), "--no-fp16", "--tensorrt", *extra)


def test_cli_builds_the_engine_with_the_profile(checkpoint, monkeypatch, capsys):
    import json

    calls: dict = {}
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(calls))
    assert export_cli(checkpoint, "--min-batch", "2", "--opt-batch", "8", "--max-batch", "32") == 0
    out = checkpoint.parent / "export"
    assert (out / "model.plan").read_bytes() == b"PLAN"
    assert calls["profile"] == ("IMAGE", (2, 1, 16, 16), (8, 1, 16, 16), (32, 1, 16, 16))
    assert "flags" not in calls  # --no-fp16: an FP32 engine
    report = json.loads((out / "export_report.json").read_text())
    assert report["tensorrt"]["profile"] == {"min_batch": 2, "opt_batch": 8, "max_batch": 32}
    assert "TensorRT engine (fake)" in capsys.readouterr().out


def test_cli_without_tensorrt_says_so_and_succeeds(checkpoint, monkeypatch, capsys):
    import json

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert export_cli(checkpoint) == 0
    out = checkpoint.parent / "export"
    assert (out / "encoder.onnx").exists() and not (out / "model.plan").exists()
    assert json.loads((out / "export_report.json").read_text())["tensorrt"].startswith("skipped")
    assert "TensorRT is not available here" in capsys.readouterr().out


def test_cli_engine_build_failure_is_a_message_not_a_traceback(checkpoint, monkeypatch, capsys):
    import json

    trt = fake_tensorrt({})
    trt.Builder.build_serialized_network = lambda self, network, config: None
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    assert export_cli(checkpoint) == 1
    out = checkpoint.parent / "export"
    assert (out / "encoder.onnx").exists()
    assert json.loads((out / "export_report.json").read_text())["tensorrt"].startswith("failed: TensorRT failed")
    assert "TensorRT engine not built" in capsys.readouterr().err
