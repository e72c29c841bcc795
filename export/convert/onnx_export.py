"""Encoder -> ONNX with a dynamic batch axis, checked against PyTorch with ONNX Runtime.

The contract (tensor names, opset, tolerance, parity batch sizes) is `ExportConfig`, which the
Triton config generator and the tests read too. Input `[batch, 1, S, S]` float32 in [0, 1],
output `[batch, D]` float32 with unit L2 norm.

FP16 (`cfg.fp16`): weights and arithmetic are float16, but the graph's input and output stay
float32 (a Cast after the input; the L2 normalisation runs in float32 after a Cast back), so
clients and Triton configs are the same for both. Parity is then checked at
`cfg.fp16_parity_atol` against the float32 PyTorch model.
"""

from __future__ import annotations

import copy
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from megaclass.export.config import ExportConfig


class ParityError(RuntimeError):
    """ONNX Runtime's output differs from PyTorch's by more than the tolerance."""

    def __init__(self, max_abs_diff: dict[int, float], atol: float, path: Path) -> None:
        self.max_abs_diff, self.atol, self.path = max_abs_diff, atol, path
        diffs = ", ".join(f"batch {b}: {d:.3g}" for b, d in max_abs_diff.items())
        super().__init__(f"ONNX/PyTorch parity failed for {path} (atol {atol:g}); max abs diff by batch size: {diffs}")


@dataclass(frozen=True)
class ExportReport:
    """What was written and how close it is to PyTorch."""

    path: Path
    max_abs_diff: dict[int, float]  # batch size -> max |onnx - torch|
    atol: float
    opset: int
    fp16: bool
    sha256: str
    input_name: str
    output_name: str
    image_size: int
    embedding_dim: int


class _Fp16Encoder(nn.Module):
    """float32 in -> float16 body -> float32 L2 normalisation -> float32 out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = getattr(self.model, "forward_unnormalized", None)
        if body is None:
            return self.model(x.half()).float()
        return F.normalize(body(x.half()).float(), dim=1)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_onnx(model: nn.Module, path: Path, cfg: ExportConfig, image_size: int) -> ExportReport:
    """Write `model` to `path` as ONNX, run `onnx.checker`, check parity; raise `ParityError` on failure.

    The graph is written to a temporary file beside `path` and renamed over it only once parity
    passes: a failed export leaves the previous file as it was, and a file that was published is a
    copy (`publish_version`), so no export ever rewrites a published version.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        diffs, dim = _export_checked(model, tmp, cfg, image_size)
        tmp.replace(path)
    except ParityError as exc:  # name the file asked for, not the temporary one
        raise ParityError(exc.max_abs_diff, exc.atol, path) from None
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(
        path=path,
        max_abs_diff=diffs,
        atol=cfg.fp16_parity_atol if cfg.fp16 else cfg.parity_atol,
        opset=cfg.opset,
        fp16=cfg.fp16,
        sha256=sha256_file(path),
        input_name=cfg.input_name,
        output_name=cfg.output_name,
        image_size=image_size,
        embedding_dim=dim,
    )


def _export_checked(model: nn.Module, path: Path, cfg: ExportConfig, image_size: int) -> tuple[dict[int, float], int]:
    """Export to `path`, check it; returns (max abs diff per batch size, embedding dimension)."""
    reference = copy.deepcopy(model).cpu().float().eval().to(memory_format=torch.contiguous_format)
    exported = _Fp16Encoder(copy.deepcopy(reference)) if cfg.fp16 else reference
    dummy = torch.rand(2, 1, image_size, image_size)
    names = {cfg.input_name: {0: "batch"}, cfg.output_name: {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            exported,
            (dummy,),
            str(path),
            input_names=[cfg.input_name],
            output_names=[cfg.output_name],
            dynamic_axes=names,
            opset_version=cfg.opset,
            do_constant_folding=True,
            dynamo=False,
        )
        dim = int(reference(dummy).shape[1])
    graph = onnx.load(str(path))
    graph.graph.output[0].type.tensor_type.shape.dim[1].ClearField("dim_param")
    graph.graph.output[0].type.tensor_type.shape.dim[1].dim_value = dim  # a fixed D for Triton configs
    onnx.save(graph, str(path))
    onnx.checker.check_model(str(path), full_check=True)

    diffs = check_parity(reference, path, cfg, image_size)
    atol = cfg.fp16_parity_atol if cfg.fp16 else cfg.parity_atol
    if max(diffs.values()) > atol:
        raise ParityError(diffs, atol, path)
    return diffs, dim


def check_parity(model: nn.Module, path: Path, cfg: ExportConfig, image_size: int, seed: int = 0) -> dict[int, float]:
    """Max |ONNX Runtime - PyTorch| over random [0, 1) inputs at each of `cfg.parity_batch_sizes`."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    diffs = {}
    for batch in cfg.parity_batch_sizes:
        x = rng.random((batch, 1, image_size, image_size), dtype=np.float32)
        (got,) = session.run([cfg.output_name], {cfg.input_name: x})
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        if got.shape != want.shape or got.dtype != np.float32:
            raise ParityError({batch: float("inf")}, 0.0, path)
        diffs[batch] = float(np.max(np.abs(got - want)))
    return diffs
