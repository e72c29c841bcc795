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
    # How `classify` is served: "ensemble" (encoder -> retriever, two Python-backend hops on the CPU;
    # the design for GPU encoders in Triton's ONNX Runtime/TensorRT backends), "one-hop" (one
    # Python-backend model running ONNX Runtime and the index in one process, sized like the encoder),
    # or "auto": one-hop for the cpu target, where it measured faster (docs/benchmarks.md,
    # "Serving overhead"), the ensemble for the GPU targets.
    classify_form: Literal["auto", "ensemble", "one-hop"] = "auto"
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


def classify_form(serving: ServingConfig) -> Literal["ensemble", "one-hop"]:
    """The form `classify` is generated in for `serving` ("auto" resolved by the target)."""
    if serving.classify_form != "auto":
        return serving.classify_form
    return "one-hop" if serving.target == "cpu" else "ensemble"
