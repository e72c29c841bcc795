"""The TensorRT engine builder: the optimisation profile and flags it sets (a fake `tensorrt` where none is installed)."""

from __future__ import annotations

import sys
import types

import pytest

from megaclass.export.tensorrt_engine import EngineProfile, TensorRTUnavailable, build_engine, tensorrt_available


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
