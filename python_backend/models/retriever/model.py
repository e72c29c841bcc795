"""Triton Python-backend model `retriever`: embeddings -> top-k classes from the routed index.

Thin by design: parse tensors, call `megaclass.python_backend`, return tensors. Options per
request: optional inputs TOP_K (INT32) and THRESHOLD (FP32), or request parameters
`top_k` / `threshold`. Custom metrics: queries, candidates scanned, nprobe, index version.
Only the outputs a request asks for are built (all when it names none).

GPU server (parameter `device` = "cuda", `FORCE_CPU_ONLY_INPUT_TENSORS` = "no"): the index
is searched by the torch backend with the prototypes resident on this instance's GPU, and an
embedding batch that arrives on the GPU is taken through DLPack (see `tensor_to_array`).
"""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from megaclass.python_backend.index.routed_index import RoutedIndex
from megaclass.python_backend.serving.retriever_triton import TritonRetriever, model_parameters


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = model_parameters(config)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        if params.get("device", "cpu") == "cuda":  # this instance's GPU, never a hard-wired 0
            import torch

            torch.cuda.set_device(int(args.get("model_instance_device_id", 0)))
        index_dir = version_dir / params.get("index_dir", "index")
        index = RoutedIndex.load(index_dir, backend="torch" if params.get("device") == "cuda" else None)
        self.retriever = TritonRetriever(pb_utils, config, index, index_dir, args["model_version"])

    def execute(self, requests):
        parsed = []
        for request in requests:
            try:
                parsed.append(self.retriever.request(request, self.retriever.embeddings(request)))
            except Exception as exc:
                parsed.append(exc)
        return self.retriever.respond(requests, parsed)
