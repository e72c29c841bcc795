"""The CPU encoder: an ONNX model run by ONNX Runtime, as the Triton encoder model uses it."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class OnnxEncoder:
    """An ONNX Runtime session with the export contract's input and output names."""

    def __init__(self, path: Path, threads: int = 1, providers: list[str] | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # Spinning threads burn the cores that other instances and the retriever need.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = ort.get_available_providers()
        providers = [p for p in (providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]) if p in available]
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = tuple(inp.shape[1:])
        self.output_name = self.session.get_outputs()[0].name
        self.provider = self.session.get_providers()[0]

    def embed(self, images: np.ndarray) -> np.ndarray:
        """float32 `[N, 1, S, S]` -> float32 `[N, D]` embeddings."""
        (out,) = self.session.run([self.output_name], {self.input_name: images})
        return np.ascontiguousarray(out, dtype=np.float32)


class TorchEncoder:
    """The PyTorch encoder (a `save_encoder` file) on one device: the GPU server's encoder when
    Triton has no ONNX Runtime or TensorRT backend (the nvidia-pytriton wheel's server). Its
    output stays on the device as a torch tensor, handed to the retriever through DLPack."""

    def __init__(self, path: Path, device: str = "cpu", fp16: bool = False):
        import torch

        from megaclass.python_backend.serving.encoder_model import load_encoder

        self.device = torch.device(device)
        self.model = load_encoder(path, map_location=self.device)
        self.dtype = torch.float16 if fp16 and self.device.type == "cuda" else torch.float32
        self.model = self.model.to(self.device, self.dtype)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def embed(self, images: np.ndarray):
        """float32 `[N, 1, S, S]` (host) -> float32 torch tensor `[N, D]` on `self.device`."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(images).to(self.device, self.dtype, non_blocking=True)
            return self.model(x).float().contiguous()
