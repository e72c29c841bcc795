"""ONNX encoder -> TensorRT engine (plan) with one optimisation profile, through the TensorRT Python API.

TensorRT is optional (`pip install megaclass[gpu]` on a CUDA machine): `tensorrt_available()`
says whether it imports, and `build_engine` raises `TensorRTUnavailable` where it does not,
so callers can print a message and carry on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class TensorRTUnavailable(RuntimeError):
    """`import tensorrt` failed (not installed, or no CUDA driver)."""


@dataclass(frozen=True)
class EngineProfile:
    """Batch sizes of the optimisation profile: min <= opt <= max."""

    min_batch: int = 1
    opt_batch: int = 16
    max_batch: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"need 1 <= min <= opt <= max batch, got {self.min_batch}, {self.opt_batch}, {self.max_batch}"
            )


def tensorrt_available() -> tuple[bool, str]:
    """(True, version) when `import tensorrt` works, else (False, the reason)."""
    try:
        import tensorrt as trt
    except Exception as e:  # noqa: BLE001 - ImportError, or a CUDA library failing to load
        return False, f"{type(e).__name__}: {e}"
    return True, str(trt.__version__)


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    input_name: str,
    input_shape: tuple[int, ...],
    profile: EngineProfile,
    fp16: bool = True,
    workspace_bytes: int = 1 << 30,
) -> Path:
    """Parse `onnx_path`, build a serialized engine for batch min/opt/max x `input_shape` (no batch axis), write it."""
    ok, why = tensorrt_available()
    if not ok:
        raise TensorRTUnavailable(why)
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)  # TensorRT < 10 needs it
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    opt = builder.create_optimization_profile()
    opt.set_shape(
        input_name,
        (profile.min_batch, *input_shape),
        (profile.opt_batch, *input_shape),
        (profile.max_batch, *input_shape),
    )
    config.add_optimization_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    plan_path = Path(plan_path)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    return plan_path
