"""The serving side's configuration: the tensor contract and the Triton models' batching and server.

The export contract (tensor names, opset, parity tolerance) is read by the exporter, the repository
generator and the tests so they cannot drift apart; `ServingConfig` sizes the Triton models and the
server. The offline pipeline's `MegaclassConfig` holds them as its `export` and `serving` sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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
class ModelServingConfig:
    """Batching and scaling of one Triton model."""

    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = (16, 32, 64)
    # Triton waits up to this for a preferred batch even when nothing else is queued: at low load
    # every request pays it. 0: run at once and batch whatever queued while an instance was busy
    # (measured in docs/benchmarks.md, "Serving overhead": no throughput lost on the CPU target).
    max_queue_delay_us: int = 0
    instances: int = 1
    # Requests beyond it are rejected instead of piling up; 0: unbounded (no queue policy).
    # Off by default: with a queue policy, Triton 2.51 answered about 1 in 100 direct retriever
    # requests after a ~500 ms stall (measured: p99 503 ms with it, 24 ms without; see
    # docs/benchmarks.md). Bound the queue at the load balancer or set this when shedding matters more.
    max_queue_size: int = 0
    dynamic_batching: bool = True


@dataclass(frozen=True)
class GpuRetrievalConfig:
    """How a retriever instance on a GPU searches, decided at load (index/gpu_retrieval.py)."""

    # "auto": exact when the live prototypes (at `fp16` precision) fit `memory_budget_mb` of this
    # instance's GPU, else the routed index scanned on the GPU; "exact"/"routed" force one;
    # "index": the RoutedIndex's own backend (the CPU path).
    search: Literal["auto", "exact", "routed", "index"] = "auto"
    # 8 GiB: 32M prototypes x 128 dims in FP16; at 1M x 128 (256 MiB) exact search is one GEMM per batch.
    memory_budget_mb: int = 8192
    fp16: bool = True  # prototypes in FP16 on the GPU, scores accumulated and re-scored in FP32


@dataclass(frozen=True)
class RequestLimits:
    """What one inference request may declare, in one place. The validating front (server/guard/)
    checks sizes, batch and nesting before tritonserver parses anything: Triton 2.51's HTTP/JSON parser
    allocates what a shape declares before it checks it, so one small request could abort the server
    (docs/reliability.md, "Hostile requests"). Top-k and the image limits are written into the
    generated model configs and enforced by the retriever/classify and decode models. Deprecated names a
    config file may still use (export/config.py MOVED_OPTIONS reads them here, with a warning):
    `[serving] max_top_k` (was ServingConfig.max_top_k) and `max_bytes_element` (now `max_image_bytes`)."""

    max_request_bytes: int = 16 * 1024 * 1024  # whole HTTP body or gRPC message
    max_elements_per_input: int = 1 << 24  # product of an input's declared shape
    max_batch: int = 1024  # ceiling on any request's batch; the lower of this and the model's max_batch_size
    max_top_k: int = 100  # classes one answer may ask for (retriever, one-hop classify)
    max_image_bytes: int = 8 * 1024 * 1024  # one encoded image (BYTES element), front and decode model
    max_image_pixels: int = 4096 * 4096  # one decoded image (decode model, checked from the header)
    max_json_depth: int = 8  # nesting of the JSON request (Triton's parser recurses per level)
    max_parameters: int = 32  # request, input and output parameters, each
    config_ttl_s: float = 5.0  # how long the front trusts a model's config before asking Triton again


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
    # gpu-torch: the encoder's preferred batch sizes (and its maximum) captured as CUDA graphs at load.
    encoder_cuda_graphs: bool = True
    # How `classify` is served: "ensemble" (encoder -> retriever, two Python-backend hops on the CPU;
    # the design for GPU encoders in Triton's ONNX Runtime/TensorRT backends), "one-hop" (one
    # Python-backend model running ONNX Runtime and the index in one process, sized like the encoder),
    # or "auto": one-hop for the cpu target, where it measured faster (docs/benchmarks.md,
    # "Serving overhead"), the ensemble for the GPU targets.
    classify_form: Literal["auto", "ensemble", "one-hop"] = "auto"
    trt_fp16: bool = True  # FP16 encoder on the GPU (TensorRT precision; torch half for gpu-torch)
    trt_engine_cache_path: str = "/tmp/megaclass-trt-cache"
    gpu_retrieval: GpuRetrievalConfig = field(default_factory=GpuRetrievalConfig)
    default_top_k: int = 5
    host: str = "127.0.0.1"  # 0.0.0.0 exposes the server; an explicit choice
    # File holding the key required (header `megaclass-admin-key`) for model load/unload; None: the
    # file named by $MEGACLASS_ADMIN_KEY_FILE, else $MEGACLASS_ADMIN_KEY, else unrestricted (refused
    # on a non-loopback host in explicit mode). Never the key itself: configs get committed.
    admin_key_file: str | None = None
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    ready_timeout_s: float = 180.0
    shm_default_byte_size: int = 16 * 1024 * 1024
    # The validating front on the public ports, tritonserver behind it on loopback (server/guard/).
    guard: bool = True
    limits: RequestLimits = field(default_factory=RequestLimits)


def classify_form(serving: ServingConfig) -> Literal["ensemble", "one-hop"]:
    """The form `classify` is generated in for `serving` ("auto" resolved by the target)."""
    if serving.classify_form != "auto":
        return serving.classify_form
    return "one-hop" if serving.target == "cpu" else "ensemble"
