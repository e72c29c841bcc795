"""ONNX export: checker, dynamic batch, FP32/FP16 parity, typed parity failures."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from megaclass.export.config import ExportConfig, TrainConfig, replace
from megaclass.export.convert.onnx_export import ParityError, export_onnx, sha256_file
from megaclass.python_backend.serving.encoder_model import build_encoder

SIZE = 24


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_encoder(TrainConfig(embedding_dim=16, width=8), SIZE)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them is exercised
        for bn in (mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    return m.eval()


def test_fp32_parity_names_and_dynamic_batch(model, tmp_path):
    cfg = ExportConfig(parity_batch_sizes=(1, 7, 64))
    report = export_onnx(model, tmp_path / "encoder.onnx", cfg, SIZE)
    assert set(report.max_abs_diff) == {1, 7, 64}
    assert max(report.max_abs_diff.values()) < 1e-4
    assert report.sha256 == sha256_file(report.path) and report.opset == cfg.opset and not report.fp16
    graph = onnx.load(str(report.path))
    assert graph.opset_import[0].version == cfg.opset
    (inp,), (out,) = graph.graph.input, graph.graph.output
    assert (inp.name, out.name) == (cfg.input_name, cfg.output_name)
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [1, SIZE, SIZE]
    assert out.type.tensor_type.shape.dim[1].dim_value == 16
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    for batch in (2, 3, 33, 129):  # batch sizes never seen at export
        x = np.random.default_rng(batch).random((batch, 1, SIZE, SIZE), dtype=np.float32)
        (y,) = session.run(None, {cfg.input_name: x})
        assert y.shape == (batch, 16) and y.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)


def test_export_leaves_model_untouched_and_is_deterministic(model, tmp_path):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = export_onnx(model, tmp_path / "a.onnx", ExportConfig(), SIZE)
    b = export_onnx(model, tmp_path / "b.onnx", ExportConfig(), SIZE)
    assert a.sha256 == b.sha256
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.dtype == before[k].dtype, k


def test_fp16_keeps_float32_io_within_loose_tolerance(model, tmp_path):
    cfg = ExportConfig(fp16=True)
    fp32 = export_onnx(model, tmp_path / "fp32.onnx", ExportConfig(), SIZE)
    report = export_onnx(model, tmp_path / "fp16.onnx", cfg, SIZE)
    assert report.fp16 and report.atol == cfg.fp16_parity_atol
    assert 0 < max(report.max_abs_diff.values()) < 1e-2
    assert report.path.stat().st_size < 0.7 * fp32.path.stat().st_size  # weights stored as float16
    graph = onnx.load(str(report.path))
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_parity_error_lists_every_batch_size(model, tmp_path):
    cfg = ExportConfig(fp16=True, fp16_parity_atol=0.0, parity_batch_sizes=(1, 5))
    with pytest.raises(ParityError) as info:
        export_onnx(model, tmp_path / "strict.onnx", cfg, SIZE)
    err = info.value
    assert set(err.max_abs_diff) == {1, 5} and err.atol == 0.0
    assert "batch 1:" in str(err) and "batch 5:" in str(err)


def test_other_opset_and_names(model, tmp_path):
    cfg = replace(ExportConfig(), opset=13, input_name="x", output_name="y", parity_batch_sizes=(3,))
    report = export_onnx(model, tmp_path / "o13.onnx", cfg, SIZE)
    graph = onnx.load(str(report.path))
    assert graph.opset_import[0].version == 13
    assert graph.graph.input[0].name == "x" and graph.graph.output[0].name == "y"


def test_failed_export_leaves_the_previous_file_untouched(model, tmp_path):
    """The graph goes to a temporary file and replaces `path` only after parity passes."""
    path = tmp_path / "encoder.onnx"
    good = export_onnx(model, path, ExportConfig(), SIZE)
    before = path.read_bytes()
    with pytest.raises(ParityError, match=str(path)):
        export_onnx(model, path, ExportConfig(fp16=True, fp16_parity_atol=0.0, parity_batch_sizes=(1, 3)), SIZE)
    assert path.read_bytes() == before and sha256_file(path) == good.sha256
    assert [p.name for p in tmp_path.iterdir()] == ["encoder.onnx"]  # no temporary file left
