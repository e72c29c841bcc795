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
    output stays on the device as a torch tensor, handed to the retriever through DLPack.

    On CUDA, `graph_batch_sizes` are captured as CUDA graphs (one replay per batch instead of a launch
    per layer); a batch is padded to the smallest captured size that holds it, larger ones run eagerly.
    """

    def __init__(self, path: Path, device: str = "cpu", fp16: bool = False, graph_batch_sizes: tuple[int, ...] = ()):
        import torch

        from megaclass.python_backend.serving.encoder_model import load_encoder

        self.device = torch.device(device)
        self.model = load_encoder(path, map_location=self.device)
        self.dtype = torch.float16 if fp16 and self.device.type == "cuda" else torch.float32
        self.model = self.model.to(self.device, self.dtype)
        self.graph_batch_sizes = tuple(sorted(set(graph_batch_sizes))) if self.device.type == "cuda" else ()
        self.graphs: dict[int, tuple] = {}  # batch size -> (graph, static input, static output)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def warm_up(self, item_shape: tuple[int, ...], batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run each batch size once (cuDNN picks its kernels, the allocator fills) and capture the CUDA
        graphs, so that the first requests after load are as fast as the rest."""
        import torch

        with torch.inference_mode():
            for b in sorted(set(batch_sizes) | set(self.graph_batch_sizes)):
                self.model(torch.zeros((b, *item_shape), device=self.device, dtype=self.dtype))
        for b in self.graph_batch_sizes:
            self.graphs[b] = self._capture(b, item_shape)

    def _capture(self, batch: int, item_shape: tuple[int, ...]) -> tuple:
        import torch

        static_in = torch.zeros((batch, *item_shape), device=self.device, dtype=self.dtype)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(3):  # warm-up on a side stream, as torch.cuda.graphs asks
                self.model(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            static_out = self.model(static_in).float()
        return graph, static_in, static_out

    def embed(self, images: np.ndarray):
        """float32 `[N, 1, S, S]` (host) -> float32 torch tensor `[N, D]` on `self.device`."""
        import torch

        n = images.shape[0]
        with torch.inference_mode():
            x = torch.from_numpy(images).to(self.device, self.dtype, non_blocking=True)
            size = next((b for b in self.graph_batch_sizes if b >= n and b in self.graphs), None)
            if size is None:
                return self.model(x).float().contiguous()
            graph, static_in, static_out = self.graphs[size]
            static_in[:n].copy_(x)
            if n < size:
                static_in[n:].zero_()
            graph.replay()
            return static_out[:n].clone()  # the next replay overwrites the static output
