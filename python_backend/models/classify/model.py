"""Triton Python-backend model `classify` in one hop (cpu target): images -> top-k classes, the
encoder (ONNX Runtime) and the routed index in one process, instead of the encoder -> retriever
ensemble whose second hop costs a round trip through the server for every batch.

Thin by design: parse tensors, call `megaclass.python_backend`, return tensors. Same inputs,
options (request parameters `top_k` / `threshold`), outputs and answers as the ensemble; the
version directory holds links to the served encoder's ONNX file and retriever's index
(`export.repository.generate.publish_one_hop`), and INDEX_VERSION names the retriever's version.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from megaclass.python_backend.index.routed_index import RoutedIndex
from megaclass.python_backend.serving.encoder_runtime import OnnxEncoder
from megaclass.python_backend.serving.error_reporting import use_triton_log
from megaclass.python_backend.serving.request_batching import TensorSpec, check_inputs, run_batched
from megaclass.python_backend.serving.retriever_triton import TritonRetriever
from megaclass.python_backend.serving.thread_budget import cpu_threads_per_instance
from megaclass.python_backend.serving.version_integrity import open_version


class TritonPythonModel:
    def initialize(self, args):
        use_triton_log(pb_utils)
        config, params, version_dir = open_version(args)  # links to the served files, checksummed too
        sources = json.loads((version_dir / "sources.json").read_text())
        threads = cpu_threads_per_instance(int(params.get("instance_count", "1")))
        self.encoder = OnnxEncoder(version_dir / params.get("onnx_file", "encoder.onnx"), threads)
        index_dir = version_dir / params.get("index_dir", "index")
        index = RoutedIndex.load(index_dir)
        self.retriever = TritonRetriever(pb_utils, config, index, index_dir, str(sources["retriever"]), "classify")
        inp = config["input"][0]
        self.spec = TensorSpec(inp["name"], np.float32, tuple(int(d) for d in inp["dims"]))
        self.max_rows = int(config.get("max_batch_size", 0)) or None

    def execute(self, requests):
        tensors = [pb_utils.get_input_tensor_by_name(request, self.spec.name) for request in requests]
        images = check_inputs(self.spec, [None if t is None else t.as_numpy() for t in tensors], self.max_rows)
        parsed = []
        for request, embedded in zip(
            requests, run_batched(images, lambda x: [self.retriever.timed(self.encoder.embed, x)]), strict=True
        ):
            try:
                parsed.append(
                    embedded if isinstance(embedded, Exception) else self.retriever.request(request, embedded[0])
                )
            except Exception as exc:
                parsed.append(exc)
        return self.retriever.respond(requests, parsed)
