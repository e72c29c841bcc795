"""Model repository generation: configs parse as Triton's ModelConfig; versions are atomic."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from megaclass.export.repository.generate import (
    ModelShapes,
    classify_config,
    config_text,
    decode_config,
    encoder_config,
    model_file,
    one_hop_classify_config,
    parse_config,
    publish_version,
    retriever_config,
    versions,
    write_config,
)
from megaclass.python_backend.serving.config import (
    ExportConfig,
    ModelServingConfig,
    RequestLimits,
    ServingConfig,
    classify_form,
)

SHAPES = ModelShapes(image_size=32, embedding_dim=128)


@pytest.mark.parametrize("make", [encoder_config, retriever_config, classify_config, one_hop_classify_config])
def test_generated_configs_parse_as_model_config(make, tmp_path):
    serving, export = ServingConfig(), ExportConfig()
    cfg = make(serving, export, SHAPES) if make is not retriever_config else make(serving, SHAPES)
    write_config(tmp_path / cfg.name, cfg)
    parsed = parse_config((tmp_path / cfg.name / "config.pbtxt").read_text())
    assert parsed == cfg
    assert parsed.max_batch_size > 0


def test_batching_settings_come_from_serving_config():
    s = ServingConfig(encoder=ModelServingConfig(max_batch_size=32, preferred_batch_sizes=(8, 16, 64), instances=3))
    cfg = encoder_config(s, ExportConfig(), SHAPES)
    assert cfg.max_batch_size == 32
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8, 16]  # 64 > max_batch_size is dropped
    assert not cfg.dynamic_batching.HasField("default_queue_policy")  # unbounded by default
    bounded = ServingConfig(encoder=ModelServingConfig(max_queue_size=100))
    assert encoder_config(bounded, ExportConfig(), SHAPES).dynamic_batching.default_queue_policy.max_queue_size == 100
    assert cfg.instance_group[0].count == 3 and cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert list(cfg.input[0].dims) == [1, 32, 32] and list(cfg.output[0].dims) == [128]
    no_batching = ServingConfig(encoder=ModelServingConfig(dynamic_batching=False))
    assert not encoder_config(no_batching, ExportConfig(), SHAPES).HasField("dynamic_batching")


def test_request_limits_reach_the_models_that_enforce_them():
    """Top-k and the image limits live in RequestLimits and are written into the generated configs."""
    limits = RequestLimits(max_top_k=7, max_image_bytes=1000, max_image_pixels=4096)
    s = ServingConfig(limits=limits)
    assert retriever_config(s, SHAPES).parameters["max_top_k"].string_value == "7"
    assert one_hop_classify_config(s, ExportConfig(), SHAPES).parameters["max_top_k"].string_value == "7"
    decode = decode_config(s, ExportConfig(), SHAPES).parameters
    assert (decode["max_image_bytes"].string_value, decode["max_image_pixels"].string_value) == ("1000", "4096")


def test_ensemble_wires_encoder_into_retriever():
    cfg = classify_config(ServingConfig(), ExportConfig(), SHAPES)
    enc, ret = cfg.ensemble_scheduling.step
    assert (enc.model_name, ret.model_name) == ("encoder", "retriever")
    assert enc.output_map["EMBEDDING"] == ret.input_map["EMBEDDING"]
    assert {o.name for o in cfg.output} == {"CLASS_IDS", "LABELS", "SCORES", "INDEX_VERSION"}
    assert cfg.max_batch_size == min(ServingConfig().encoder.max_batch_size, ServingConfig().retriever.max_batch_size)


def test_classify_form_per_target():
    assert classify_form(ServingConfig()) == "one-hop"  # measured faster on the CPU target
    assert classify_form(ServingConfig(target="gpu-onnxruntime")) == "ensemble"
    assert classify_form(ServingConfig(classify_form="ensemble")) == "ensemble"
    with pytest.raises(ValueError, match="target cpu"):
        one_hop_classify_config(ServingConfig(target="gpu-tensorrt"), ExportConfig(), SHAPES)


def test_one_hop_classify_is_sized_like_the_encoder():
    s = ServingConfig(encoder=ModelServingConfig(max_batch_size=32, instances=3, max_queue_delay_us=0))
    cfg = one_hop_classify_config(s, ExportConfig(), SHAPES)
    assert cfg.backend == "python" and cfg.max_batch_size == 32 and cfg.instance_group[0].count == 3
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 0
    assert {o.name for o in cfg.output} == {"CLASS_IDS", "LABELS", "SCORES", "INDEX_VERSION"}
    assert [i.name for i in cfg.input] == ["IMAGE"]


def test_config_text_rejects_garbage():
    with pytest.raises(Exception, match="no field named"):
        parse_config(config_text(encoder_config(ServingConfig(), ExportConfig(), SHAPES)) + "\nbogus_field: 1\n")


def test_model_files_are_packaged():
    for name in ("encoder", "retriever", "classify", "decode"):
        assert "class TritonPythonModel" in model_file(name).read_text()


def test_publish_version_numbers_and_keeps_last_n(tmp_path: Path):
    src = tmp_path / "a.txt"
    src.write_text("x")
    model = tmp_path / "m"
    for expected in (1, 2, 3, 4):
        assert publish_version(model, {"a.txt": src}, keep=2) == expected
    assert versions(model) == [3, 4]
    assert (model / "4" / "a.txt").read_text() == "x"
    assert not [p for p in model.iterdir() if p.name.startswith(".staging")]


def test_publish_is_atomic_for_readers(tmp_path: Path):
    """A reader polling the model dir never sees a version without all its files."""
    big = tmp_path / "big"
    big.mkdir()
    for i in range(200):
        (big / f"f{i}").write_bytes(b"0" * 1000)
    model = tmp_path / "m"
    seen_partial = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            for v in versions(model):
                d = model / str(v) / "big"
                if d.exists() and len(list(d.iterdir())) != 200:
                    seen_partial.append(v)

    t = threading.Thread(target=reader)
    t.start()
    for _ in range(5):
        publish_version(model, {"big": big})
    stop.set()
    t.join()
    assert seen_partial == []
    assert versions(model) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "target, platform, accelerator",
    [("gpu-onnxruntime", "onnxruntime_onnx", "tensorrt"), ("gpu-tensorrt", "tensorrt_plan", None)],
)
def test_gpu_targets(target, platform, accelerator, tmp_path):
    serving = ServingConfig(target=target)
    enc = encoder_config(serving, ExportConfig(), SHAPES)
    assert enc.platform == platform and not enc.backend
    assert enc.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    accels = enc.optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in accels] == ([accelerator] if accelerator else [])
    if accelerator:
        assert accels[0].parameters["precision_mode"] == "FP16"
        assert accels[0].parameters["trt_engine_cache_enable"] == "true"
    ret = retriever_config(serving, SHAPES)
    assert ret.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"
    assert ret.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    for cfg in (enc, ret):
        write_config(tmp_path / cfg.name, cfg)
        assert parse_config((tmp_path / cfg.name / "config.pbtxt").read_text()) == cfg


def test_gpu_torch_target_is_a_python_encoder_on_the_gpu(tmp_path):
    """gpu-torch: the Python backend runs the PyTorch encoder on its GPU (runtime=torch, half precision)."""
    serving = ServingConfig(target="gpu-torch")
    enc = encoder_config(serving, ExportConfig(), SHAPES)
    assert (enc.backend, enc.platform) == ("python", "")
    assert enc.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert enc.parameters["runtime"].string_value == "torch"
    assert enc.parameters["weights_file"].string_value == "encoder.pt"
    assert enc.parameters["fp16"].string_value == "true"
    assert enc.parameters["cuda_graph_batch_sizes"].string_value == "16,32,64"  # preferred sizes and the max
    ret = retriever_config(serving, SHAPES)
    assert ret.parameters["device"].string_value == "cuda"
    assert ret.parameters["search"].string_value == "auto"  # exact or routed on the GPU, chosen at load
    assert ret.parameters["gpu_memory_budget_mb"].string_value == str(serving.gpu_retrieval.memory_budget_mb)
    no_graphs = encoder_config(ServingConfig(target="gpu-torch", encoder_cuda_graphs=False), ExportConfig(), SHAPES)
    assert "cuda_graph_batch_sizes" not in no_graphs.parameters
    write_config(tmp_path / "encoder", enc)
    assert parse_config((tmp_path / "encoder" / "config.pbtxt").read_text()) == enc


@pytest.mark.parametrize("target", ["cpu", "gpu-onnxruntime", "gpu-tensorrt", "gpu-torch"])
def test_build_repository_writes_only_parseable_configs(target, tmp_path: Path):
    """Each file `build_repository` writes is a valid ModelConfig; the encoder form follows the target."""
    from megaclass.export.repository.generate import build_repository, encoder_file_name

    artifact = tmp_path / "encoder.bin"
    artifact.write_bytes(b"model")
    index = tmp_path / "index"
    index.mkdir()
    (index / "meta.json").write_text("{}")
    repo = tmp_path / "repo"
    build_repository(repo, artifact, index, SHAPES, ServingConfig(target=target), ExportConfig())
    configs = {p.parent.name: parse_config(p.read_text()) for p in repo.glob("*/config.pbtxt")}
    assert set(configs) == {"encoder", "retriever", "classify", "decode", "classify_encoded"}
    for name, cfg in configs.items():
        assert cfg.name == name and cfg.max_batch_size > 0
    enc = configs["encoder"]
    want = {
        "cpu": ("", "python"),
        "gpu-onnxruntime": ("onnxruntime_onnx", ""),
        "gpu-tensorrt": ("tensorrt_plan", ""),
        "gpu-torch": ("", "python"),
    }
    assert (enc.platform, enc.backend) == want[target]
    accels = [a.name for a in enc.optimization.execution_accelerators.gpu_execution_accelerator]
    assert accels == (["tensorrt"] if target == "gpu-onnxruntime" else [])
    assert (repo / "encoder" / "1" / encoder_file_name(target)).read_bytes() == b"model"
    assert (repo / "encoder" / "1" / "model.py").exists() == (enc.backend == "python")


@pytest.mark.parametrize("target", ["cpu", "gpu-torch"])
def test_publish_encoder_follows_the_repository_target(target, tmp_path: Path):
    """A new encoder version carries the target's artifact name and, for Python-backend encoders,
    their model.py; an ONNX encoder is checked first, a PyTorch weights file is not ONNX."""
    import torch

    from megaclass.export.convert.onnx_export import export_onnx
    from megaclass.export.repository.generate import build_repository, encoder_file_name
    from megaclass.export.repository.publish import PublishError, publish_encoder
    from megaclass.python_backend.serving.encoder_model import GlyphEncoder, save_encoder

    model = GlyphEncoder(embedding_dim=SHAPES.embedding_dim, width=4).eval()
    if target == "cpu":
        artifact = tmp_path / "encoder.onnx"
        export_onnx(model, artifact, ExportConfig(), image_size=SHAPES.image_size)
    else:
        artifact = save_encoder(model, tmp_path / "encoder.pt")
    index = tmp_path / "index"
    index.mkdir()
    repo = tmp_path / "repo"
    build_repository(repo, artifact, index, SHAPES, ServingConfig(target=target), ExportConfig(), encoded_images=False)
    published = publish_encoder(repo, artifact)
    new = repo / "encoder" / str(published.version)
    assert published.version == 2 and (new / encoder_file_name(target)).exists() and (new / "model.py").exists()
    if target == "gpu-torch":
        assert torch.load(new / "encoder.pt", weights_only=True)["model_class"] == "GlyphEncoder"
    else:
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"not onnx")
        with pytest.raises(PublishError, match="not a valid ONNX"):
            publish_encoder(repo, bad)
