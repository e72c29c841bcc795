"""Triton Python-backend model `retriever`: embeddings -> top-k classes from the routed index.

Thin by design: parse tensors, call `megaclass.python_backend`, return tensors. Options per
request: optional inputs TOP_K (INT32) and THRESHOLD (FP32), or request parameters
`top_k` / `threshold`. Custom metrics: queries, candidates scanned, nprobe, index version.
Only the outputs a request asks for are built (all when it names none).

GPU server (parameter `device` = "cuda", `FORCE_CPU_ONLY_INPUT_TENSORS` = "no"): the index
is searched by the torch backend with the prototypes resident on this instance's GPU, and an
embedding batch that arrives on the GPU is taken through DLPack (see `tensor_to_array`).
"""

import triton_python_backend_utils as pb_utils

from megaclass.python_backend.index.gpu_retrieval import load_for_instance
from megaclass.python_backend.serving.error_reporting import use_triton_log
from megaclass.python_backend.serving.retriever_triton import TritonRetriever
from megaclass.python_backend.serving.version_integrity import open_version


class TritonPythonModel:
    def initialize(self, args):
        use_triton_log(pb_utils)
        config, params, version_dir = open_version(args)
        index_dir = version_dir / params.get("index_dir", "index")
        # Exact on the GPU when the prototypes fit the budget, else routed on the GPU (the plan is in
        # the manifest, the log and the megaclass_retriever_search_info metric); on a CPU the index as is.
        index, plan, device = load_for_instance(index_dir, params, args.get("model_instance_device_id", 0))
        pb_utils.Logger.log_info(f"retriever: {plan.mode} search on {device}: {plan.reason}")
        self.retriever = TritonRetriever(pb_utils, config, index, index_dir, args["model_version"], plan=plan)

    def execute(self, requests):
        parsed = []
        for request in requests:
            try:
                parsed.append(self.retriever.request(request, self.retriever.embeddings(request)))
            except Exception as exc:
                parsed.append(exc)
        return self.retriever.respond(requests, parsed)
