"""The retriever's Triton side, shared by the `retriever` model and the one-hop `classify` model.

`TritonRetriever` loads the index for one model instance (its threads sized to the instance's
share of the cores), reads each request's options, searches the batch (`answer_requests`) and
builds the responses: only the outputs the request asked for (Triton's requested-output list),
each a row view of arrays built once per search, the index-version column a view of one array
built at load, and the search statistics (with the CPU seconds of the model's own compute, which
`bench batching` takes out of the stub's CPU) sent to Triton's metrics at most twice a second.
`pb_utils` (triton_python_backend_utils) is passed in: this module imports without a server.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from megaclass.python_backend.serving import bytes_tensors
from megaclass.python_backend.serving.error_reporting import error_message
from megaclass.python_backend.serving.request_batching import TensorSpec, check_input
from megaclass.python_backend.serving.retriever_service import (
    EncodedLabels,
    RetrieverRequest,
    SearchTally,
    answer_requests,
    check_index_matches_config,
    index_fingerprint,
    parse_options,
)
from megaclass.python_backend.serving.thread_budget import size_index_threads, stub_thread_budget
from megaclass.python_backend.serving.version_integrity import model_parameters

OUTPUTS = ("CLASS_IDS", "LABELS", "SCORES", "INDEX_VERSION")


def triton_error(pb_utils, model: str, exc: BaseException):
    """A bad request is the client's error (INVALID_ARG, HTTP 400, its own message); anything else is
    internal: logged with a request id, and the client gets the id (error_reporting.py)."""
    message, client = error_message(model, exc)
    return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG if client else pb_utils.TritonError.INTERNAL)


def no_options(top_k, threshold, parameters: str | None) -> bool:
    """True when a request sets no option (the common case: nothing to parse)."""
    return top_k is None and threshold is None and parameters in (None, "", "{}")


class TritonRetriever:
    """One model instance's index and the request/response work around it."""

    def __init__(
        self, pb_utils, config: dict, index, index_dir: Path, version: str, model: str = "retriever", plan=None
    ):
        """`index`: the RoutedIndex loaded from `index_dir` (by the model file: the serving package
        does not import the index package, which imports it), or its GPU retriever (`plan`: how it
        searches, index/gpu_retrieval.py, exported as the megaclass_retriever_search_info metric)."""
        self.pb = pb_utils
        bytes_tensors.install(pb_utils)  # LABELS and INDEX_VERSION serialised without a per-element loop
        self.model = model
        params = model_parameters(config)
        self.index = index
        if params.get("device", "cpu") != "cuda":
            size_index_threads(self.index, stub_thread_budget(int(params.get("instance_count", "1"))))
        check_index_matches_config(self.index.dim, config, index_dir)
        fingerprint = index_fingerprint(self.index.manifest)
        self.labels = EncodedLabels.of_index(self.index)
        self.plan = plan
        self.spec = TensorSpec("EMBEDDING", np.float32, (self.index.dim,))
        # The option inputs this model has (the retriever: TOP_K and THRESHOLD; one-hop classify: none).
        declared = {inp["name"] for inp in config.get("input", [])}
        self.option_inputs = tuple(name for name in ("TOP_K", "THRESHOLD") if name in declared)
        self.max_rows = int(config.get("max_batch_size", 0)) or None
        self.default_top_k = int(params.get("default_top_k", "5"))
        self.max_top_k = int(params.get("max_top_k", "100"))
        # Every answer's INDEX_VERSION: row views of one column built here.
        self.version_column = np.full((self.max_rows or 1, 1), f"{version}:{fingerprint}".encode(), dtype=np.object_)
        self._init_metrics(version, fingerprint)

    def _init_metrics(self, version: str, fingerprint: str) -> None:
        pb = self.pb
        # The families must stay referenced as long as their metrics (see DESIGN.md).
        labels = {"model": self.model, "version": version}
        counter, gauge = pb.MetricFamily.COUNTER, pb.MetricFamily.GAUGE
        self.metric_families = {
            "queries": pb.MetricFamily("megaclass_retriever_queries_total", "Queries searched", counter),
            "candidates": pb.MetricFamily(
                "megaclass_retriever_candidates_scanned_total", "Prototype candidates scored", counter
            ),
            "nprobe": pb.MetricFamily("megaclass_retriever_nprobe", "Clusters probed per query", gauge),
            "compute": pb.MetricFamily(
                "megaclass_compute_seconds_total",
                "CPU seconds of the model's own compute (index search; encoder run in one-hop classify), "
                "measured in the calling thread",
                counter,
            ),
            "index": pb.MetricFamily("megaclass_retriever_index_info", "Loaded index (value: classes)", gauge),
        }
        self.metrics = {k: f.Metric(labels=labels) for k, f in self.metric_families.items() if k != "index"}
        self.metrics["index"] = self.metric_families["index"].Metric(labels={**labels, "index": fingerprint})
        self.metrics["index"].set(self.index.num_classes)
        if self.plan is not None:
            self.metric_families["search"] = pb.MetricFamily(
                "megaclass_retriever_search_info", "Search chosen at load (value: prototype bytes)", gauge
            )
            where = {"mode": self.plan.mode, "device": self.plan.device}
            self.metrics["search"] = self.metric_families["search"].Metric(labels={**labels, **where})
            self.metrics["search"].set(self.plan.prototype_bytes)
        self.tally = SearchTally()

    def embeddings(self, request):
        """The request's EMBEDDING input, validated (a GPU tensor stays on its GPU, see `tensor_to_array`)."""
        tensor = self.pb.get_input_tensor_by_name(request, "EMBEDDING")
        return check_input(self.spec, None if tensor is None else tensor_to_array(tensor), self.max_rows)

    def request(self, request, embeddings) -> RetrieverRequest:
        """`embeddings` with the request's options (TOP_K / THRESHOLD inputs or request parameters)."""
        top_k = threshold = None
        if self.option_inputs:  # one pass over the inputs (pb_utils' lookup by name makes a list per call)
            given = {t.name(): t for t in request.inputs()}
            top_k, threshold = given.get("TOP_K"), given.get("THRESHOLD")
        parameters = request.parameters()
        if no_options(top_k, threshold, parameters):
            return RetrieverRequest(embeddings, self.default_top_k, None)
        k, t = parse_options(
            None if top_k is None else top_k.as_numpy(),
            None if threshold is None else threshold.as_numpy(),
            parameters,
            default_top_k=self.default_top_k,
            max_top_k=self.max_top_k,
            num_classes=self.index.num_classes,
        )
        return RetrieverRequest(embeddings, k, t)

    def respond(self, requests, parsed: list) -> list:
        """Search the parsed requests (RetrieverRequest or the exception that rejected one); one
        response per request, with the outputs it asked for."""
        answers, stats = answer_requests(self.index, parsed, self.labels)
        self._record(stats)
        return [self._response(request, answer) for request, answer in zip(requests, answers, strict=True)]

    def _response(self, request, answer):
        pb = self.pb
        if isinstance(answer, Exception):
            return pb.InferenceResponse(error=triton_error(pb, self.model, answer))
        n = answer.class_ids.shape[0]
        version = self.version_column[:n] if n <= len(self.version_column) else self._version_rows(n)
        arrays = (answer.class_ids, answer.labels, answer.scores, version)  # in OUTPUTS' order
        wanted = request.requested_output_names()
        every = not wanted or len(wanted) == len(OUTPUTS)  # what Triton asks when the client names none
        return pb.InferenceResponse(
            [pb.Tensor(name, a) for name, a in zip(OUTPUTS, arrays, strict=True) if every or name in wanted]
        )

    def _version_rows(self, n: int) -> np.ndarray:
        return np.full((n, 1), self.version_column[0, 0], dtype=np.object_)

    def _record(self, stats: dict) -> None:
        # Metric calls are round trips to the server process: sent in sums (see SearchTally).
        due = self.tally.add(stats)
        if due is None:
            return
        self.metrics["queries"].increment(due["queries"])
        if due["candidates"]:
            self.metrics["candidates"].increment(due["candidates"])
        if due["nprobe"] is not None:
            self.metrics["nprobe"].set(due["nprobe"])
        if due["compute_s"] > 0:
            self.metrics["compute"].increment(due["compute_s"])

    def timed(self, fn, *args):
        """`fn(*args)`, its thread CPU time counted as the model's compute (the one-hop model's encoder)."""
        started = time.thread_time()
        try:
            return fn(*args)
        finally:
            self.tally.compute_s += time.thread_time() - started


def tensor_to_array(tensor):
    """A pb_utils tensor as a numpy array, or, when it is on the GPU, as a torch tensor on that GPU
    taken through DLPack (zero-copy): the routed index searches it there without a host copy."""
    if tensor.is_cpu():
        return tensor.as_numpy()
    from torch.utils.dlpack import from_dlpack

    return from_dlpack(tensor.to_dlpack())
