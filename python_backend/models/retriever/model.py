"""Triton Python-backend model `retriever`: embeddings -> top-k classes from the routed index.

Thin by design: parse tensors, call `megaclass.python_backend`, return tensors. Options per
request: optional inputs TOP_K (INT32) and THRESHOLD (FP32), or request parameters
`top_k` / `threshold`. Custom metrics: queries, candidates scanned, nprobe, index version.

GPU server (parameter `device` = "cuda", `FORCE_CPU_ONLY_INPUT_TENSORS` = "no"): the index
is searched by the torch backend with the prototypes resident on this instance's GPU, and an
embedding batch that arrives on the GPU is taken through DLPack (see `tensor_to_array`).
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from megaclass.python_backend.index.gpu_retrieval import load_retriever
from megaclass.python_backend.index.routed_index import RoutedIndex
from megaclass.python_backend.serving.config import GpuRetrievalConfig
from megaclass.python_backend.serving.error_reporting import error_message, use_triton_log
from megaclass.python_backend.serving.request_batching import TensorSpec, check_input
from megaclass.python_backend.serving.retriever_service import (
    RetrieverRequest,
    SearchTally,
    answer_requests,
    check_index_matches_config,
    index_fingerprint,
    parse_options,
)
from megaclass.python_backend.serving.version_integrity import verify_version


def tensor_to_array(tensor):
    """A pb_utils tensor as a numpy array, or, when it is on the GPU, as a torch tensor on that GPU
    taken through DLPack (zero-copy): the routed index searches it there without a host copy."""
    if tensor.is_cpu():
        return tensor.as_numpy()
    from torch.utils.dlpack import from_dlpack

    return from_dlpack(tensor.to_dlpack())


def _error(exc):
    """A bad request is the client's error (INVALID_ARG, HTTP 400, its own message); anything else is
    internal: logged with a request id, and the client gets the id (error_reporting.py)."""
    message, client = error_message("retriever", exc)
    return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG if client else pb_utils.TritonError.INTERNAL)


class TritonPythonModel:
    def initialize(self, args):
        use_triton_log(pb_utils)
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        verify_version(version_dir)  # a version changed after publishing is refused, naming the files
        index_dir = version_dir / params.get("index_dir", "index")
        device = params.get("device", "cpu")
        if device == "cuda":  # this instance's GPU, never a hard-wired 0
            import torch

            device = f"cuda:{int(args.get('model_instance_device_id', 0))}"
            torch.cuda.set_device(device)
        self.index = RoutedIndex.load(index_dir)
        # Exact on the GPU when the prototypes fit the budget, else routed on the GPU (the plan is in
        # the manifest, the log and the megaclass_retriever_search_info metric).
        gpu_cfg = GpuRetrievalConfig(
            search=params.get("search", "auto"),
            memory_budget_mb=int(params.get("gpu_memory_budget_mb", GpuRetrievalConfig.memory_budget_mb)),
            fp16=params.get("gpu_fp16", "true") == "true",
        )
        self.index, self.plan = load_retriever(self.index, device, gpu_cfg)
        pb_utils.Logger.log_info(f"retriever: {self.plan.mode} search on {device}: {self.plan.reason}")
        check_index_matches_config(self.index.dim, config, index_dir)
        fingerprint = index_fingerprint(self.index.manifest)
        self.version = f"{args['model_version']}:{fingerprint}".encode()
        self.spec = TensorSpec("EMBEDDING", np.float32, (self.index.dim,))
        self.max_rows = int(config.get("max_batch_size", 0)) or None
        self.default_top_k = int(params.get("default_top_k", "5"))
        self.max_top_k = int(params.get("max_top_k", "100"))
        self._init_metrics(args["model_version"], fingerprint)

    def _init_metrics(self, version, fingerprint):
        # The families must stay referenced as long as their metrics (see DESIGN.md).
        labels = {"model": "retriever", "version": version}
        counter, gauge = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.GAUGE
        self.metric_families = {
            "queries": pb_utils.MetricFamily("megaclass_retriever_queries_total", "Queries searched", counter),
            "candidates": pb_utils.MetricFamily(
                "megaclass_retriever_candidates_scanned_total", "Prototype candidates scored", counter
            ),
            "nprobe": pb_utils.MetricFamily("megaclass_retriever_nprobe", "Clusters probed per query", gauge),
            "index": pb_utils.MetricFamily("megaclass_retriever_index_info", "Loaded index (value: classes)", gauge),
            "search": pb_utils.MetricFamily(
                "megaclass_retriever_search_info", "Search chosen at load (value: prototype bytes)", gauge
            ),
        }
        self.metrics = {
            k: f.Metric(labels=labels) for k, f in self.metric_families.items() if k not in ("index", "search")
        }
        plan = {"mode": self.plan.mode, "device": self.plan.device}
        self.metrics["search"] = self.metric_families["search"].Metric(labels={**labels, **plan})
        self.metrics["search"].set(self.plan.prototype_bytes)
        self.metrics["index"] = self.metric_families["index"].Metric(labels={**labels, "index": fingerprint})
        self.metrics["index"].set(self.index.num_classes)
        self.tally = SearchTally()

    def _parse(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, "EMBEDDING")
        embeddings = check_input(self.spec, None if tensor is None else tensor_to_array(tensor), self.max_rows)
        top_k = pb_utils.get_input_tensor_by_name(request, "TOP_K")
        threshold = pb_utils.get_input_tensor_by_name(request, "THRESHOLD")
        k, t = parse_options(
            None if top_k is None else top_k.as_numpy(),
            None if threshold is None else threshold.as_numpy(),
            request.parameters(),
            default_top_k=self.default_top_k,
            max_top_k=self.max_top_k,
            num_classes=self.index.num_classes,
        )
        return RetrieverRequest(embeddings, k, t)

    def _record(self, stats, requests):
        # Metric calls are round trips to the server process: sent in sums (see SearchTally).
        due = self.tally.add(stats, requests)
        if due is None:
            return
        self.metrics["queries"].increment(due["queries"])
        if due["candidates"]:
            self.metrics["candidates"].increment(due["candidates"])
        if due["nprobe"] is not None:
            self.metrics["nprobe"].set(due["nprobe"])

    def execute(self, requests):
        parsed = []
        for request in requests:
            try:
                parsed.append(self._parse(request))
            except Exception as exc:
                parsed.append(exc)
        answers, stats = answer_requests(self.index, parsed)
        self._record(stats, len(requests))
        responses = []
        for answer in answers:
            if isinstance(answer, Exception):
                responses.append(pb_utils.InferenceResponse(error=_error(answer)))
                continue
            n = answer.class_ids.shape[0]
            labels = np.array([[s.encode() for s in row] for row in answer.labels], dtype=np.object_)
            outputs = [
                pb_utils.Tensor("CLASS_IDS", answer.class_ids.astype(np.int64)),
                pb_utils.Tensor("LABELS", labels),
                pb_utils.Tensor("SCORES", answer.scores.astype(np.float32)),
                pb_utils.Tensor("INDEX_VERSION", np.full((n, 1), self.version, dtype=np.object_)),
            ]
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
