"""Write the Triton model repository: config.pbtxt per model, versions, artifacts.

Configs are built as Triton's own `ModelConfig` protobuf (from tritonclient) and written in
its text format, so a config that Triton cannot parse cannot be written. Every setting comes
from `ServingConfig` / `ExportConfig`. Versions are published atomically: written into a
hidden directory beside the model, then renamed to the next version number.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from megaclass.python_backend.serving.config import ExportConfig, ModelServingConfig, ServingConfig, classify_form
from megaclass.python_backend.serving.version_integrity import make_read_only, make_writable, write_manifest

ENCODER, RETRIEVER, CLASSIFY = "encoder", "retriever", "classify"
# Optional entry for encoded images: `decode` (PNG/JPEG bytes -> pixels) and the ensemble
# `classify_encoded` (bytes -> decode -> encoder -> retriever).
DECODE, CLASSIFY_ENCODED, ENCODED_INPUT = "decode", "classify_encoded", "IMAGE_BYTES"
RETRIEVER_OUTPUTS = [
    ("CLASS_IDS", mc.TYPE_INT64, [-1]),
    ("LABELS", mc.TYPE_STRING, [-1]),
    ("SCORES", mc.TYPE_FP32, [-1]),
    ("INDEX_VERSION", mc.TYPE_STRING, [1]),
]


@dataclass(frozen=True)
class ModelShapes:
    """The tensor shapes the configs need, from the exported encoder."""

    image_size: int
    embedding_dim: int


# Serving targets whose encoder is a Python-backend model (its model.py is published with the artifact).
PYTHON_ENCODER_TARGETS = ("cpu", "gpu-torch")


def encoder_file_name(target: str) -> str:
    """The encoder artifact's file name in a version directory, per serving target."""
    return {
        "cpu": "encoder.onnx",
        "gpu-onnxruntime": "model.onnx",
        "gpu-tensorrt": "model.plan",
        "gpu-torch": "encoder.pt",
    }[target]


def _batching(config: mc.ModelConfig, s: ModelServingConfig, gpu: bool = False) -> None:
    config.max_batch_size = s.max_batch_size
    if s.dynamic_batching:
        db = config.dynamic_batching
        db.preferred_batch_size.extend([b for b in s.preferred_batch_sizes if b <= s.max_batch_size])
        db.max_queue_delay_microseconds = s.max_queue_delay_us
        if s.max_queue_size:
            db.default_queue_policy.max_queue_size = s.max_queue_size
    group = config.instance_group.add()
    group.kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    group.count = s.instances
    config.version_policy.latest.num_versions = 1
    config.parameters["instance_count"].string_value = str(s.instances)


def _tensor(container, name: str, dtype: int, dims: list[int], optional: bool = False) -> None:
    t = container.add()
    t.name, t.data_type = name, dtype
    t.dims.extend(dims)
    if optional:
        t.optional = True


def encoder_config(serving: ServingConfig, export: ExportConfig, shapes: ModelShapes) -> mc.ModelConfig:
    """The encoder for `serving.target`.

    cpu: Python backend running ONNX Runtime (this project's CPU server has no ONNX Runtime
    backend). gpu-onnxruntime: Triton's ONNX Runtime backend with the TensorRT execution
    accelerator (FP16, engine cache). gpu-tensorrt: a TensorRT plan. gpu-torch: Python backend running
    the PyTorch encoder on the instance's GPU (for a server with only the Python backend, such as the
    nvidia-pytriton wheel's); its output reaches the retriever on the GPU through DLPack.
    """
    target = serving.target
    if target == "cpu":
        c = mc.ModelConfig(name=ENCODER, backend="python")
        c.parameters["onnx_file"].string_value = encoder_file_name(target)
    elif target == "gpu-onnxruntime":
        c = mc.ModelConfig(name=ENCODER, platform="onnxruntime_onnx", default_model_filename="model.onnx")
        trt = c.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        trt.parameters["precision_mode"] = "FP16" if serving.trt_fp16 else "FP32"
        trt.parameters["trt_engine_cache_enable"] = "true"
        trt.parameters["trt_engine_cache_path"] = serving.trt_engine_cache_path
    elif target == "gpu-tensorrt":
        c = mc.ModelConfig(name=ENCODER, platform="tensorrt_plan", default_model_filename="model.plan")
    elif target == "gpu-torch":
        c = mc.ModelConfig(name=ENCODER, backend="python")
        c.parameters["runtime"].string_value = "torch"
        c.parameters["weights_file"].string_value = encoder_file_name(target)
        c.parameters["fp16"].string_value = "true" if serving.trt_fp16 else "false"
        if serving.encoder_cuda_graphs:  # one CUDA graph per preferred batch size and the maximum
            enc = serving.encoder
            sizes = sorted({*(b for b in enc.preferred_batch_sizes if b <= enc.max_batch_size), enc.max_batch_size})
            c.parameters["cuda_graph_batch_sizes"].string_value = ",".join(map(str, sizes))
    else:
        raise ValueError(f"unknown serving target {target!r}")
    _batching(c, serving.encoder, gpu=target != "cpu")
    image_dims = [1, shapes.image_size, shapes.image_size]
    _tensor(c.input, export.input_name, mc.TYPE_FP32, image_dims)
    _tensor(c.output, export.output_name, mc.TYPE_FP32, [shapes.embedding_dim])
    warm = c.model_warmup.add(name="zeros", batch_size=1)
    warm.inputs[export.input_name].data_type = mc.TYPE_FP32
    warm.inputs[export.input_name].dims.extend(image_dims)
    warm.inputs[export.input_name].zero_data = True
    return c


def retriever_config(serving: ServingConfig, shapes: ModelShapes) -> mc.ModelConfig:
    """The retriever: Python backend wrapping the routed index."""
    c = mc.ModelConfig(name=RETRIEVER, backend="python")
    gpu = serving.target != "cpu"
    _batching(c, serving.retriever, gpu=gpu)
    if gpu:  # let the encoder's output arrive on the GPU (DLPack, no host copy); search there
        c.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value = "no"
        c.parameters["device"].string_value = "cuda"
        gpu_cfg = serving.gpu_retrieval  # exact or routed on the GPU, chosen at load (index/gpu_retrieval.py)
        c.parameters["search"].string_value = gpu_cfg.search
        c.parameters["gpu_memory_budget_mb"].string_value = str(gpu_cfg.memory_budget_mb)
        c.parameters["gpu_fp16"].string_value = "true" if gpu_cfg.fp16 else "false"
    _tensor(c.input, "EMBEDDING", mc.TYPE_FP32, [shapes.embedding_dim])
    _tensor(c.input, "TOP_K", mc.TYPE_INT32, [1], optional=True)
    _tensor(c.input, "THRESHOLD", mc.TYPE_FP32, [1], optional=True)
    for name, dtype, dims in RETRIEVER_OUTPUTS:
        _tensor(c.output, name, dtype, dims)
    c.parameters["index_dir"].string_value = "index"
    c.parameters["default_top_k"].string_value = str(serving.default_top_k)
    c.parameters["max_top_k"].string_value = str(serving.limits.max_top_k)
    # Zeros, not random_data: Triton fills random_data with random bytes, and a float32 made of random
    # bytes is NaN or Inf once in 256; the retriever refuses those, so the warm-up (and with it the
    # load) failed at random: about 6 % of loads at 16 dimensions, 39 % at 128 (seen in tests/reliability).
    warm = c.model_warmup.add(name="zeros", batch_size=1)
    warm.inputs["EMBEDDING"].data_type = mc.TYPE_FP32
    warm.inputs["EMBEDDING"].dims.append(shapes.embedding_dim)
    warm.inputs["EMBEDDING"].zero_data = True
    return c


def classify_config(serving: ServingConfig, export: ExportConfig, shapes: ModelShapes) -> mc.ModelConfig:
    """The ensemble: image batch -> encoder -> retriever -> top-k classes."""
    c = mc.ModelConfig(name=CLASSIFY, platform="ensemble")
    c.max_batch_size = min(serving.encoder.max_batch_size, serving.retriever.max_batch_size)
    _tensor(c.input, export.input_name, mc.TYPE_FP32, [1, shapes.image_size, shapes.image_size])
    for name, dtype, dims in RETRIEVER_OUTPUTS:
        _tensor(c.output, name, dtype, dims)
    enc = c.ensemble_scheduling.step.add(model_name=ENCODER, model_version=-1)
    enc.input_map[export.input_name] = export.input_name
    enc.output_map[export.output_name] = "_embedding"
    ret = c.ensemble_scheduling.step.add(model_name=RETRIEVER, model_version=-1)
    ret.input_map["EMBEDDING"] = "_embedding"
    for name, _, _ in RETRIEVER_OUTPUTS:
        ret.output_map[name] = name
    return c


def one_hop_classify_config(serving: ServingConfig, export: ExportConfig, shapes: ModelShapes) -> mc.ModelConfig:
    """`classify` in one hop: a Python-backend model running the encoder with ONNX Runtime and the
    index in the same process (cpu target), batched and scaled like the encoder. Its version holds
    links to the served encoder's ONNX file and retriever's index (`publish_one_hop`)."""
    if serving.target != "cpu":
        raise ValueError(f"the one-hop classify runs ONNX Runtime on the CPU (target cpu), not {serving.target!r}")
    c = mc.ModelConfig(name=CLASSIFY, backend="python")
    _batching(c, serving.encoder)
    image_dims = [1, shapes.image_size, shapes.image_size]
    _tensor(c.input, export.input_name, mc.TYPE_FP32, image_dims)
    for name, dtype, dims in RETRIEVER_OUTPUTS:
        _tensor(c.output, name, dtype, dims)
    c.parameters["onnx_file"].string_value = encoder_file_name(serving.target)
    c.parameters["index_dir"].string_value = "index"
    c.parameters["embedding_dim"].string_value = str(shapes.embedding_dim)
    c.parameters["default_top_k"].string_value = str(serving.default_top_k)
    c.parameters["max_top_k"].string_value = str(serving.limits.max_top_k)
    warm = c.model_warmup.add(name="zeros", batch_size=1)
    warm.inputs[export.input_name].data_type = mc.TYPE_FP32
    warm.inputs[export.input_name].dims.extend(image_dims)
    warm.inputs[export.input_name].zero_data = True
    return c


def is_one_hop(repo_dir: Path) -> bool:
    """Whether the repository's `classify` is the one-hop Python-backend model (not the ensemble)."""
    path = Path(repo_dir) / CLASSIFY / "config.pbtxt"
    return path.exists() and parse_config(path.read_text()).backend == "python"


def publish_one_hop(repo_dir: Path, keep: int | None = None) -> int:
    """A new version of the one-hop `classify` from the serving encoder and retriever versions (the
    newest where no pointer is set): their files hard-linked (no copy; published versions are
    read-only and never changed), the retriever's version recorded so that answers show the same
    INDEX_VERSION as the retriever's. The caller promotes it."""
    from megaclass.export.repository.serving_pointer import serving_version

    repo_dir = Path(repo_dir)
    encoder_v = serving_version(repo_dir / ENCODER) or versions(repo_dir / ENCODER)[-1]
    retriever_v = serving_version(repo_dir / RETRIEVER) or versions(repo_dir / RETRIEVER)[-1]
    config = parse_config((repo_dir / CLASSIFY / "config.pbtxt").read_text())
    onnx_file = config.parameters["onnx_file"].string_value
    staging = repo_dir / CLASSIFY / f".sources-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        (staging / "sources.json").write_text(f'{{"encoder": {encoder_v}, "retriever": {retriever_v}}}\n')
        files = {
            "model.py": model_file(CLASSIFY),
            onnx_file: repo_dir / ENCODER / str(encoder_v) / onnx_file,
            "index": repo_dir / RETRIEVER / str(retriever_v) / "index",
            "sources.json": staging / "sources.json",
        }
        return publish_version(repo_dir / CLASSIFY, files, keep=keep, link_dirs=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def decode_config(serving: ServingConfig, export: ExportConfig, shapes: ModelShapes) -> mc.ModelConfig:
    """`decode`: Python backend turning PNG/JPEG bytes into the encoder's input (CPU, any target).

    No warm-up: Triton's warm-up data for a BYTES input is not an image.
    """
    c = mc.ModelConfig(name=DECODE, backend="python")
    _batching(c, serving.encoder)
    _tensor(c.input, ENCODED_INPUT, mc.TYPE_STRING, [1])
    _tensor(c.output, export.input_name, mc.TYPE_FP32, [1, shapes.image_size, shapes.image_size])
    c.parameters["max_image_bytes"].string_value = str(serving.limits.max_image_bytes)
    c.parameters["max_image_pixels"].string_value = str(serving.limits.max_image_pixels)
    return c


def classify_encoded_config(serving: ServingConfig, export: ExportConfig, shapes: ModelShapes) -> mc.ModelConfig:
    """The ensemble for encoded images: bytes -> decode -> encoder -> retriever -> top-k classes."""
    c = mc.ModelConfig(name=CLASSIFY_ENCODED, platform="ensemble")
    c.max_batch_size = min(serving.encoder.max_batch_size, serving.retriever.max_batch_size)
    _tensor(c.input, ENCODED_INPUT, mc.TYPE_STRING, [1])
    for name, dtype, dims in RETRIEVER_OUTPUTS:
        _tensor(c.output, name, dtype, dims)
    dec = c.ensemble_scheduling.step.add(model_name=DECODE, model_version=-1)
    dec.input_map[ENCODED_INPUT] = ENCODED_INPUT
    dec.output_map[export.input_name] = "_image"
    enc = c.ensemble_scheduling.step.add(model_name=ENCODER, model_version=-1)
    enc.input_map[export.input_name] = "_image"
    enc.output_map[export.output_name] = "_embedding"
    ret = c.ensemble_scheduling.step.add(model_name=RETRIEVER, model_version=-1)
    ret.input_map["EMBEDDING"] = "_embedding"
    for name, _, _ in RETRIEVER_OUTPUTS:
        ret.output_map[name] = name
    return c


def config_text(config: mc.ModelConfig) -> str:
    """Triton's text format of a ModelConfig."""
    return text_format.MessageToString(config)


def parse_config(text: str) -> mc.ModelConfig:
    """Parse config.pbtxt text into a ModelConfig (raises on anything Triton would reject)."""
    return text_format.Parse(text, mc.ModelConfig())


def model_file(name: str) -> Path:
    """The packaged Triton model.py of model `name`."""
    return Path(str(resources.files("megaclass.python_backend") / "models" / name / "model.py"))


def versions(model_dir: Path) -> list[int]:
    """Published version numbers of a model, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # same file system: no copy
    except OSError:
        shutil.copy2(src, dst)


def _place(src: Path, dst: Path, link_dirs: bool = False) -> None:
    """A copy, never a hard link to a source that may change (a re-export, an edited model.py): with
    `link_dirs` a directory's files are hard-linked, only for another published (read-only) version."""
    if src.is_dir():
        copy = _link_or_copy if link_dirs else shutil.copy2
        shutil.copytree(src, dst, copy_function=copy, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copy2(src, dst)


def publish_version(
    model_dir: Path, files: Mapping[str, Path], keep: int | None = None, link_dirs: bool = False
) -> int:
    """Write `files` (name in the version dir -> source) as the next version, atomically.

    The version is assembled in a hidden sibling directory (copies, their SHA-256 in `version.json`,
    read-only; see `version_integrity.py`) and renamed into place, so the server never sees a
    half-written version. With `keep`, older versions beyond the last `keep` are removed, except
    the serving version and the one rollback returns to (`serving_pointer.prune`). With `link_dirs`
    a directory's files are hard-linked (only for sources that never change: another published version).
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    version = (versions(model_dir) or [0])[-1] + 1
    staging = model_dir / f".staging-{version}-{os.getpid()}"
    remove_tree(staging)
    staging.mkdir()
    try:
        for name, src in files.items():
            _place(Path(src), staging / name, link_dirs)
        write_manifest(staging)
        make_read_only(staging)
        staging.rename(model_dir / str(version))
    except BaseException:
        remove_tree(staging)
        raise
    if keep is not None:
        from megaclass.export.repository.serving_pointer import prune

        prune(model_dir, keep)
    return version


def remove_tree(path: Path) -> None:
    """Delete a (read-only) version folder."""
    if path.exists():
        make_writable(path)
    shutil.rmtree(path, ignore_errors=True)


def remove_version(model_dir: Path, version: int) -> None:
    """Delete a version: renamed out of sight first, so no reader sees it half-deleted."""
    hidden = model_dir / f".removing-{version}-{os.getpid()}"
    try:
        (model_dir / str(version)).rename(hidden)
    except OSError:
        return
    remove_tree(hidden)


def write_config(model_dir: Path, config: mc.ModelConfig) -> None:
    """Write config.pbtxt atomically (write aside, then rename)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / ".config.pbtxt.tmp"
    tmp.write_text(config_text(config))
    tmp.replace(model_dir / "config.pbtxt")


def build_repository(
    repo_dir: Path,
    onnx_path: Path,
    index_dir: Path,
    shapes: ModelShapes,
    serving: ServingConfig,
    export: ExportConfig,
    keep: int = 3,
    encoded_images: bool = True,
) -> dict[str, int]:
    """Publish encoder, retriever and `classify` (the ensemble or the one-hop model, as
    `serving.classify_form` says) into `repo_dir`; returns versions.

    `onnx_path` is the encoder artifact: ONNX, or a TensorRT plan for the gpu-tensorrt target.
    With `encoded_images`, also `decode` and the `classify_encoded` ensemble (PNG/JPEG bytes in).
    """
    from megaclass.export.repository.serving_pointer import promote

    repo_dir = Path(repo_dir)
    one_hop = classify_form(serving) == "one-hop"
    _write_keeping_pointer(repo_dir / ENCODER, encoder_config(serving, export, shapes))
    _write_keeping_pointer(repo_dir / RETRIEVER, retriever_config(serving, shapes))
    if one_hop:
        _write_keeping_pointer(repo_dir / CLASSIFY, one_hop_classify_config(serving, export, shapes))
    else:
        write_config(repo_dir / CLASSIFY, classify_config(serving, export, shapes))
    encoder_files = {encoder_file_name(serving.target): onnx_path}
    if serving.target in PYTHON_ENCODER_TARGETS:
        encoder_files["model.py"] = model_file(ENCODER)
    published = {
        ENCODER: publish_version(repo_dir / ENCODER, encoder_files, keep=keep),
        RETRIEVER: publish_version(
            repo_dir / RETRIEVER, {"model.py": model_file(RETRIEVER), "index": index_dir}, keep=keep
        ),
    }
    for name in (ENCODER, RETRIEVER):  # building a repository serves what it built
        promote(repo_dir / name, published[name])
    if one_hop:  # from the encoder and retriever versions just promoted
        published[CLASSIFY] = publish_one_hop(repo_dir, keep=keep)
        promote(repo_dir / CLASSIFY, published[CLASSIFY])
    elif not versions(repo_dir / CLASSIFY):
        published[CLASSIFY] = publish_version(repo_dir / CLASSIFY, {}, keep=keep)
    if encoded_images:
        _write_keeping_pointer(repo_dir / DECODE, decode_config(serving, export, shapes))
        write_config(repo_dir / CLASSIFY_ENCODED, classify_encoded_config(serving, export, shapes))
        published[DECODE] = publish_version(repo_dir / DECODE, {"model.py": model_file(DECODE)}, keep=keep)
        if not versions(repo_dir / CLASSIFY_ENCODED):
            published[CLASSIFY_ENCODED] = publish_version(repo_dir / CLASSIFY_ENCODED, {}, keep=keep)
    if DECODE in published:
        promote(repo_dir / DECODE, published[DECODE])
    return published


def _write_keeping_pointer(model_dir: Path, config: mc.ModelConfig) -> None:
    """`write_config`, keeping the serving pointer (version policy) of the config it replaces."""
    path = model_dir / "config.pbtxt"
    if path.exists():
        config.version_policy.CopyFrom(parse_config(path.read_text()).version_policy)
    write_config(model_dir, config)


def use_cpu_instances(repo_dir: Path, models: tuple[str, ...] = (ENCODER, RETRIEVER)) -> None:
    """Turn the GPU instances of a generated repository into CPU ones (the retriever searches on the
    CPU): runs a GPU target's Python-backend models on a machine without a GPU (tests, dry runs)."""
    for name in models:
        config = parse_config((Path(repo_dir) / name / "config.pbtxt").read_text())
        for group in config.instance_group:
            group.kind = mc.ModelInstanceGroup.KIND_CPU
        if "device" in config.parameters:
            config.parameters["device"].string_value = "cpu"
        write_config(Path(repo_dir) / name, config)
