"""Triton Python-backend model `encoder`: images -> embeddings with ONNX Runtime (CPU server),
or, with parameter `runtime` = "torch", with the PyTorch encoder on this instance's GPU whose
output leaves as a GPU tensor (DLPack) for the retriever (the `gpu-torch` serving target).

Thin by design: parse tensors, call `megaclass.python_backend`, return tensors.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from megaclass.python_backend.serving.device_arrays import is_torch_tensor
from megaclass.python_backend.serving.encoder_runtime import OnnxEncoder, TorchEncoder
from megaclass.python_backend.serving.error_reporting import error_message, use_triton_log
from megaclass.python_backend.serving.request_batching import TensorSpec, check_inputs, run_batched
from megaclass.python_backend.serving.thread_budget import cpu_threads_per_instance
from megaclass.python_backend.serving.version_integrity import open_version


def _error(exc):
    """A bad request is the client's error (INVALID_ARG, HTTP 400, its own message); anything else is
    internal: logged with a request id, and the client gets the id (error_reporting.py)."""
    message, client = error_message("encoder", exc)
    return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG if client else pb_utils.TritonError.INTERNAL)


class TritonPythonModel:
    def initialize(self, args):
        use_triton_log(pb_utils)
        config, params, version_dir = open_version(args)  # refused if changed since publishing
        instances = int(params.get("instance_count", "1"))
        if params.get("runtime") == "torch":
            gpu = args.get("model_instance_kind") == "GPU"
            device = f"cuda:{args.get('model_instance_device_id', '0')}" if gpu else "cpu"
            fp16 = params.get("fp16", "false") == "true"
            graphs = tuple(int(b) for b in params.get("cuda_graph_batch_sizes", "").split(",") if b)
            self.encoder = TorchEncoder(version_dir / params.get("weights_file", "encoder.pt"), device, fp16, graphs)
        else:
            self.encoder = OnnxEncoder(
                version_dir / params.get("onnx_file", "encoder.onnx"), cpu_threads_per_instance(instances)
            )
        inp, out = config["input"][0], config["output"][0]
        self.spec = TensorSpec(inp["name"], np.float32, tuple(int(d) for d in inp["dims"]))
        self.output_name = out["name"]
        self.max_rows = int(config.get("max_batch_size", 0)) or None
        if hasattr(self.encoder, "warm_up"):  # READY means warm: kernels chosen, CUDA graphs captured
            self.encoder.warm_up(self.spec.item_shape)

    def execute(self, requests):
        tensors = [pb_utils.get_input_tensor_by_name(request, self.spec.name) for request in requests]
        inputs = check_inputs(self.spec, [None if t is None else t.as_numpy() for t in tensors], self.max_rows)
        responses = []
        for result in run_batched(inputs, lambda x: [self.encoder.embed(x)]):
            if isinstance(result, Exception):
                responses.append(pb_utils.InferenceResponse(error=_error(result)))
            else:
                responses.append(pb_utils.InferenceResponse([self._tensor(result[0])]))
        return responses

    def _tensor(self, out):
        if is_torch_tensor(out):  # stays on its device: DLPack, no host copy
            from torch.utils.dlpack import to_dlpack

            return pb_utils.Tensor.from_dlpack(self.output_name, to_dlpack(out))
        return pb_utils.Tensor(self.output_name, out)
