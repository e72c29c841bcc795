"""One typed configuration for the whole pipeline.

Each concern has its own dataclass; `MegaclassConfig` groups them and is loaded from one
TOML file (`megaclass.toml` by default, every field optional) so no literals are scattered
through the code. `config_hash` gives a stable key for caching artifacts whose inputs did
not change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class GlyphDataConfig:
    """How the glyph data set is rendered from the installed fonts."""

    image_size: int = 32
    font_dirs: tuple[str, ...] = ("/usr/share/fonts",)
    # Unicode ranges (inclusive) whose code points become classes.
    ranges: tuple[tuple[int, int], ...] = (
        (0x0021, 0x024F),  # Latin, Latin-1, Latin Extended A/B
        (0x0370, 0x03FF),  # Greek
        (0x0400, 0x04FF),  # Cyrillic
        (0x0590, 0x05FF),  # Hebrew
        (0x0600, 0x06FF),  # Arabic
        (0x1E00, 0x1FFF),  # Latin Extended Additional, Greek Extended
        (0x2000, 0x2BFF),  # punctuation, symbols, arrows, maths, box drawing, shapes, dingbats
        (0x3040, 0x30FF),  # Hiragana, Katakana
        (0x4E00, 0x9FFF),  # CJK Unified Ideographs
        (0xAC00, 0xD7A3),  # Hangul syllables
    )
    min_fonts_per_class: int = 3  # a class needs this many fonts (train + held-out)
    max_classes: int | None = None  # deterministic subset when set
    held_out_fonts: int = 2  # fonts kept out of training (seen classes, unseen appearance)
    held_out_class_fraction: float = 0.0  # classes never trained on, enrolled later
    seed: int = 0
    workers: int = 2
    # Rendering rule, the same for every font: the em square spans `em_fraction` of the image with
    # the baseline at 80 % of it (glyphs keep their relative size: "o" vs "O", "," vs "'"); the ink is
    # centred horizontally; glyphs that would overflow are shrunk to fit and centred.
    em_fraction: float = 0.8
    supersample: int = 4  # render at this multiple of image_size, then box-downsample (anti-aliasing)
    # Drop a rendering byte-identical to an earlier font's for the same class (TTC faces and font
    # variants often share outlines; duplicates would leak held-out fonts and inflate font counts).
    dedupe: bool = True


@dataclass(frozen=True)
class AugmentConfig:
    """Random distortions applied to training images."""

    enabled: bool = True
    max_rotation_deg: float = 8.0
    max_shift: float = 0.08  # fraction of the image size
    scale_range: tuple[float, float] = (0.9, 1.1)
    blur_prob: float = 0.3
    noise_std: float = 0.04
    stroke_prob: float = 0.3  # dilate or erode (stroke width)
    blur_sigma: tuple[float, float] = (0.3, 0.9)  # Gaussian blur sigma in pixels, when blurred
    stroke_amount: tuple[float, float] = (0.3, 1.0)  # blend towards the 3x3 dilated / eroded image


@dataclass(frozen=True)
class TrainConfig:
    """Metric-learning training of the encoder."""

    embedding_dim: int = 128
    width: int = 32  # channels of the first conv block
    convs_per_stage: int = 1  # conv blocks per encoder stage: 1 is ~2x faster on CPU than 2
    loss: Literal["triplet", "contrastive", "cosface", "arcface", "softmax"] = "triplet"
    mining: Literal["easy", "semihard", "hard", "all"] = "semihard"
    margin: float = 0.2
    samples_per_class: int = 4  # m of the m-per-class sampler
    batch_size: int = 256
    epochs: int = 8
    max_minutes: float | None = None  # stop early when the time budget is spent
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"  # "auto", "cpu" or "cuda"
    threads: int | None = None  # torch CPU threads; None: torch's default (one per core)
    warmup_fraction: float = 0.03  # linear LR warm-up, then cosine decay to zero
    contrastive_neg_margin: float = 0.8  # contrastive: negative pairs pushed beyond this distance
    cosface_margin: float = 0.35  # additive cosine margin
    arcface_margin: float = 0.5  # additive angular margin (radians)
    softmax_scale: float = 30.0  # logit scale s of the margin-softmax losses
    partial_fc_classes: int = 8192  # class centres scored per step (batch classes + random others)


@dataclass(frozen=True)
class ExportConfig:
    """The ONNX export contract, read by the exporter, the repository generator and the tests."""

    opset: int = 17
    input_name: str = "IMAGE"
    output_name: str = "EMBEDDING"
    fp16: bool = False
    parity_atol: float = 1e-4
    parity_batch_sizes: tuple[int, ...] = (1, 7, 64)
    fp16_parity_atol: float = 1e-2  # tolerance used instead of parity_atol when fp16 is set


@dataclass(frozen=True)
class IndexConfig:
    """Prototype building and the routed (coarse-quantised) index."""

    prototypes_per_class: int = 1
    nlist: int | None = None  # coarse clusters; None: about 4 * sqrt(prototypes)
    nprobe: int = 8
    # Adaptive probing: of the nprobe best clusters, past the best only those whose route score is within
    # this of the best one's (None: all nprobe). `tune` chooses it.
    probe_margin: float | None = None
    storage: Literal["flat", "fp16", "sq8", "pq"] = "flat"
    spill: int = 0  # extra clusters a prototype is also assigned to
    score_threshold: float | None = None  # below it the answer is "unknown"
    # Scan kernels: "numpy"/"torch" grouped GEMM; "native" fused 4-bit PQ (README, "scan backends").
    backend: Literal["faiss", "numpy", "torch", "native"] = "faiss"
    seed: int = 0
    # Routed-index details (python_backend/routed_index*.py).
    rerank: int = 0  # compressed storage: candidates per query re-scored exactly; 0: max(4 * top_k, 40)
    balance: float | None = 2.0  # no cluster holds more than this times the mean entries (None: plain k-means)
    kmeans_iters: int = 20
    kmeans_sample: int = 64  # training points per cluster
    soar_lambda: float = 1.0  # SOAR spill: weight of the residual-parallel penalty
    pq_m: int | None = None  # PQ sub-quantisers; None: dim // 4
    pq_bits: int = 4  # 4: FAISS fast-scan kernels
    opq: bool = False  # PQ after a learnt rotation (OPQ); helps on data whose variance is uneven across dims
    pq_residual: bool = False  # PQ of x - its cluster's centroid (far smaller errors on clustered data); native backend
    threads: int = 0  # search threads (FAISS/OpenMP, torch); 0: the libraries' default
    rebuild_imbalance: float = 3.0  # `needs_rebuild` once the largest cluster exceeds this times the mean
    rebuild_drift: float = 1.5  # ... or once entries sit this much farther (mean squared) from their centroids
    device: str = "auto"  # torch backend: "auto", "cpu" or "cuda"


@dataclass(frozen=True)
class ModelServingConfig:
    """Batching and scaling of one Triton model."""

    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = (16, 32, 64)
    max_queue_delay_us: int = 2000
    instances: int = 1
    # Requests beyond it are rejected instead of piling up; 0: unbounded (no queue policy).
    # Off by default: with a queue policy, Triton 2.51 answered about 1 in 100 direct retriever
    # requests after a ~500 ms stall (measured: p99 503 ms with it, 24 ms without; see
    # docs/benchmarks.md). Bound the queue at the load balancer or set this when shedding matters more.
    max_queue_size: int = 0
    dynamic_batching: bool = True


@dataclass(frozen=True)
class ServingConfig:
    """The Triton model repository and server."""

    # CPU defaults for a small machine: two encoder instances with one ONNX Runtime thread each
    # beat one instance with two threads (measured in docs/benchmarks.md); size to the cores.
    encoder: ModelServingConfig = field(default_factory=lambda: ModelServingConfig(instances=2))
    retriever: ModelServingConfig = field(
        default_factory=lambda: ModelServingConfig(max_batch_size=256, preferred_batch_sizes=(64, 128, 256))
    )
    # Which encoder form the repository is generated for: the Python backend with ONNX Runtime
    # (CPU server), Triton's ONNX Runtime backend with the TensorRT accelerator, a TensorRT plan, or
    # the Python backend running the PyTorch encoder on the GPU (a server with only the Python backend).
    target: Literal["cpu", "gpu-onnxruntime", "gpu-tensorrt", "gpu-torch"] = "cpu"
    trt_fp16: bool = True  # FP16 encoder on the GPU (TensorRT precision; torch half for gpu-torch)
    trt_engine_cache_path: str = "/tmp/megaclass-trt-cache"
    default_top_k: int = 5
    max_top_k: int = 100
    host: str = "127.0.0.1"  # 0.0.0.0 exposes the server; an explicit choice
    # Key required (header `megaclass-admin-key`) for model load/unload; None: the environment
    # variable MEGACLASS_ADMIN_KEY, or unrestricted when that is unset too.
    admin_key: str | None = None
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    ready_timeout_s: float = 180.0
    shm_default_byte_size: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class MegaclassConfig:
    """Everything, grouped by concern."""

    glyphs: GlyphDataConfig = field(default_factory=GlyphDataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    work_dir: str = ".cache/megaclass"


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build dataclass `cls` from a (nested) dict, refusing unknown keys."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s): {sorted(unknown)}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            kwargs[name] = _from_dict(type(default), value)
        elif isinstance(value, list):
            kwargs[name] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


# Named presets: the starting point before a file and overrides are applied.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # The README's main job: a few minutes end to end on a 2-core CPU machine.
    "demo": {
        "glyphs": {"max_classes": 1500, "held_out_fonts": 2, "held_out_class_fraction": 0.1},
        "train": {"epochs": 12, "max_minutes": 3.0, "width": 16},
        "work_dir": ".cache/megaclass/demo",
    },
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, defaults: str = "default"
) -> MegaclassConfig:
    """Preset `defaults`, then the TOML file `path` (every field optional), then nested `overrides`."""
    if defaults not in PRESETS:
        raise ValueError(f"unknown preset {defaults!r}; known: {sorted(PRESETS)}")
    data = dict(PRESETS[defaults])
    if path is not None:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10 (the NGC Triton image): the same parser, backported
            import tomli as tomllib
        with open(path, "rb") as f:
            data = _merge(data, tomllib.load(f))
    data = _merge(data, overrides or {})
    return _from_dict(MegaclassConfig, data)


def replace(cfg: Any, **changes: Any) -> Any:
    """`dataclasses.replace`, re-exported so callers need one import."""
    return dataclasses.replace(cfg, **changes)


def config_hash(*parts: Any) -> str:
    """A short, stable hash of dataclasses / plain values, used as a cache key."""

    def plain(x: Any) -> Any:
        if dataclasses.is_dataclass(x):
            return {k: plain(v) for k, v in dataclasses.asdict(x).items()}
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [plain(v) for v in x]
        if isinstance(x, Path):
            return str(x)
        return x

    blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
