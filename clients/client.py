"""A typed client for the megaclass models on Triton, over gRPC or HTTP.

`Client(url, protocol="grpc")` wraps tritonclient: `classify(images)` calls the ensemble,
`search(embeddings)` the retriever directly (for callers with their own encoder). Images may
be numpy arrays, PIL images or file paths. Large inputs are split into server-sized requests;
every failure surfaces as `MegaclassError` carrying the server's message; an unavailable
server is retried with back-off (`RetryPolicy`). `shared_memory=True` moves the tensors
through Triton system shared memory instead of the socket (client and server on one host).
`AsyncClient` (megaclass.clients.async_client) is the asyncio variant with the same API.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from megaclass.clients.errors import INVALID, MegaclassError, RetryPolicy, catchable, to_megaclass_error
from megaclass.clients.shared_memory import SharedMemoryRegion, SlotLayout
from megaclass.python_backend.serving.preprocess import load_image, to_model_input

__all__ = ["Client", "ImageLike", "MegaclassError", "Prediction", "Protocol", "RetryPolicy", "SearchResults"]

Protocol = Literal["grpc", "http"]
ImageLike = np.ndarray | Image.Image | str | Path
OUTPUTS = ("CLASS_IDS", "LABELS", "SCORES", "INDEX_VERSION")
NUMERIC_OUTPUTS = {"CLASS_IDS": np.dtype(np.int64), "SCORES": np.dtype(np.float32)}  # shm-capable


@dataclass(frozen=True)
class Prediction:
    class_id: int
    label: str
    score: float


@dataclass(frozen=True)
class SearchResults:
    """Top-k answers for a batch: arrays `[n, k]` and the index version per row."""

    class_ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    index_versions: list[str]

    def __len__(self) -> int:
        return self.class_ids.shape[0]

    def predictions(self, row: int) -> list[Prediction]:
        """The ranked predictions of one input."""
        return [
            Prediction(int(c), str(lbl), float(s))
            for c, lbl, s in zip(self.class_ids[row], self.labels[row], self.scores[row], strict=True)
        ]

    @staticmethod
    def concat(parts: Sequence[SearchResults]) -> SearchResults:
        k = min(p.class_ids.shape[1] for p in parts)
        return SearchResults(
            np.concatenate([p.class_ids[:, :k] for p in parts]),
            np.concatenate([p.labels[:, :k] for p in parts]),
            np.concatenate([p.scores[:, :k] for p in parts]),
            [v for p in parts for v in p.index_versions],
        )

    def truncated(self, top_k: int | None) -> SearchResults:
        """The first `top_k` columns (all when None)."""
        if top_k is None:
            return self
        return SearchResults(
            self.class_ids[:, :top_k], self.labels[:, :top_k], self.scores[:, :top_k], self.index_versions
        )


# --- pieces shared by Client and AsyncClient ------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """What the client needs to know of a served model, asked once."""

    name: str
    max_batch_size: int
    inputs: dict[str, list[int]]  # name -> dims after the batch axis
    parameters: dict[str, str]


def model_info(name: str, config: dict) -> ModelInfo:
    """From a model config as JSON (either protocol)."""
    config = config.get("config", config)
    return ModelInfo(
        name,
        int(config.get("max_batch_size", 0)) or 1,
        {i["name"]: [int(d) for d in i["dims"]] for i in config.get("input", [])},
        {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()},
    )


def image_batch(images: np.ndarray | ImageLike | Sequence[ImageLike], dims: Sequence[int]) -> np.ndarray:
    """Images as the encoder input float32 `[N, 1, S, S]`.

    An array is taken as pixels as they are: uint8 `[N, S, S]` / `[S, S]` (0..255) or float
    `[N, 1, S, S]` / `[N, S, S]` in [0, 1]. PIL images and paths (one, or a sequence, mixed
    with arrays) are loaded, made grey, resized and inverted to bright-on-dark like the
    training glyphs (`megaclass.python_backend.serving.preprocess.load_image`).
    """
    size = int(dims[-1])
    if isinstance(images, str | Path | Image.Image):
        images = [images]
    if not isinstance(images, np.ndarray):
        images = list(images)
        if not images:
            raise MegaclassError("no images given", INVALID)
        images = np.stack([load_image(x, size) for x in images])
    try:
        batch = to_model_input(images)
    except ValueError as exc:
        raise MegaclassError(str(exc), INVALID) from exc
    if list(batch.shape[1:]) != list(dims):
        raise MegaclassError(
            f"images must be {dims[-2]}x{dims[-1]} (the served encoder's size), got {list(batch.shape[2:])}; "
            "pass PIL images or paths to have them resized",
            INVALID,
        )
    if batch.shape[0] == 0:
        raise MegaclassError("no images given", INVALID)
    return batch


def search_inputs(
    embeddings: np.ndarray, dim: int | None, top_k: int | None, threshold: float | None
) -> dict[str, np.ndarray]:
    """The retriever's inputs for a batch of embeddings and its options."""
    emb = np.ascontiguousarray(np.atleast_2d(np.asarray(embeddings)), dtype=np.float32)
    if emb.ndim != 2 or (dim is not None and emb.shape[1] != dim) or emb.shape[0] == 0:
        want = f"[N, {dim}]" if dim is not None else "[N, D]"
        raise MegaclassError(f"embeddings must have shape {want}, got {list(emb.shape)}", INVALID)
    inputs = {"EMBEDDING": emb}
    if top_k is not None:
        inputs["TOP_K"] = np.full((len(emb), 1), top_k, dtype=np.int32)
    if threshold is not None:
        inputs["THRESHOLD"] = np.full((len(emb), 1), threshold, dtype=np.float32)
    return inputs


def classify_parameters(top_k: int | None, threshold: float | None) -> dict[str, Any]:
    """Request parameters the ensemble passes on to the retriever."""
    params: dict[str, Any] = {}
    if top_k is not None:
        params["top_k"] = int(top_k)
    if threshold is not None:
        params["threshold"] = float(threshold)
    return params


def split_rows(inputs: dict[str, np.ndarray], step: int) -> list[dict[str, np.ndarray]]:
    """Server-sized chunks of `step` rows (every input is batched along its first axis)."""
    n = len(next(iter(inputs.values())))
    return [{k: v[i : i + step] for k, v in inputs.items()} for i in range(0, n, step)]


def decode_strings(arr: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else str(b), otypes=[object])(arr)


def build_request(tc, inputs: dict[str, np.ndarray], shm: _ShmSlot | None = None) -> tuple[list, list]:
    """tritonclient InferInputs and InferRequestedOutputs; with `shm`, the first input and the
    numeric outputs live in its slot."""
    from tritonclient.utils import np_to_triton_dtype

    infer_inputs = []
    for i, (name, arr) in enumerate(inputs.items()):
        x = tc.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        if shm is not None and i == 0:
            x.set_shared_memory(shm.region.name, shm.write_input(arr), shm.offset("input"))
        else:
            x.set_data_from_numpy(arr)
        infer_inputs.append(x)
    outputs = []
    for name in OUTPUTS:
        o = tc.InferRequestedOutput(name)
        if shm is not None and name in NUMERIC_OUTPUTS:
            o.set_shared_memory(shm.region.name, shm.layout.sizes[name], shm.offset(name))
        outputs.append(o)
    return infer_inputs, outputs


def parse_result(res, shm: _ShmSlot | None = None) -> SearchResults:
    """SearchResults from a tritonclient InferResult (outputs in the response or in `shm`)."""

    def numeric(name: str) -> np.ndarray:
        if shm is None:
            return res.as_numpy(name)
        out = res.get_output(name)
        shape = tuple(int(d) for d in (out["shape"] if isinstance(out, dict) else out.shape))
        return shm.region.read(shm.offset(name), NUMERIC_OUTPUTS[name], shape)

    return SearchResults(
        numeric("CLASS_IDS"),
        decode_strings(res.as_numpy("LABELS")),
        numeric("SCORES"),
        [str(v) for v in decode_strings(res.as_numpy("INDEX_VERSION")).reshape(-1)],
    )


class _ShmSlot:
    """One request's share of a shared-memory region: input bytes and the numeric outputs."""

    def __init__(self, region: SharedMemoryRegion, layout: SlotLayout, index: int):
        self.region, self.layout, self.base = region, layout, index * layout.slot_bytes

    def offset(self, part: str) -> int:
        return self.base + self.layout.offsets[part]

    def write_input(self, arr: np.ndarray) -> int:
        if arr.nbytes > self.layout.sizes["input"]:
            raise MegaclassError(f"input of {arr.nbytes} bytes exceeds the shared-memory slot", INVALID)
        return self.region.write(self.offset("input"), arr)


def shm_layout(model: ModelInfo, input_name: str, max_top_k: int) -> SlotLayout:
    """Slot sizes for one server-sized request of `model`: its first input, then the outputs."""
    item = int(np.prod(model.inputs[input_name])) * 4  # FP32 inputs (IMAGE, EMBEDDING)
    rows = model.max_batch_size
    return SlotLayout(
        {"input": rows * item, **{n: rows * max_top_k * dt.itemsize for n, dt in NUMERIC_OUTPUTS.items()}}
    )


def max_top_k(retriever: ModelInfo) -> int:
    return int(retriever.parameters.get("max_top_k", "100") or 100)


# --- the synchronous client -----------------------------------------------------------------


class Client:
    """Synchronous client for `classify` (images) and `retriever` (embeddings).

    Safe to share between threads: gRPC calls share one channel, HTTP calls use one connection
    per thread; with shared memory up to `max_in_flight` calls use their own slot of the
    region at once (further calls wait for a free slot).
    """

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        protocol: Protocol = "grpc",
        *,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        retry: RetryPolicy | None = None,
        shared_memory: bool = False,
        max_in_flight: int = 4,
        classify_model: str = "classify",
        retriever_model: str = "retriever",
    ):
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.protocol, self.url, self.timeout_s = protocol, url, timeout_s
        self.retry = retry or RetryPolicy(retries=retries, backoff_s=backoff_s)
        self.classify_model, self.retriever_model = classify_model, retriever_model
        self.shared_memory, self.max_in_flight = shared_memory, max(1, max_in_flight)
        if protocol == "grpc":
            import tritonclient.grpc as tc
        else:
            import tritonclient.http as tc
        self._tc = tc
        self._meta: dict[str, ModelInfo] = {}
        self._shm: dict[str, tuple[SharedMemoryRegion, SlotLayout, queue.Queue]] = {}
        self._lock = threading.RLock()  # _slots holds it while it may create this thread's client
        self._local = threading.local()
        self._connections: list = []

    @property
    def _client(self):
        """The tritonclient of this thread: one gRPC channel is shared by all threads, while
        tritonclient's HTTP client (gevent-based) may only be used by the thread that made it."""
        client = getattr(self._local, "client", None)
        if client is not None:
            return client
        with self._lock:
            if self.protocol == "grpc" and self._connections:
                client = self._connections[0]
            elif self.protocol == "grpc":
                client = self._tc.InferenceServerClient(self.url)
            else:
                client = self._tc.InferenceServerClient(
                    self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
                )
            if client not in self._connections:
                self._connections.append(client)
        self._local.client = client
        return client

    @property
    def retries(self) -> int:
        return self.retry.retries

    def close(self) -> None:
        """Unregister and remove shared-memory regions, close the connection."""
        for region, _, _ in self._shm.values():
            try:
                self._client.unregister_system_shared_memory(region.name)
            except catchable():
                pass
            region.close()
        self._shm.clear()
        for client in self._connections:
            try:
                client.close()
            except catchable():  # an HTTP client made by another thread
                pass
        self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- metadata -------------------------------------------------------------------------
    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready())
        except catchable():
            return False

    def model(self, name: str) -> ModelInfo:
        """Max batch size, input shapes and parameters of a served model, asked once."""
        if name not in self._meta:
            kwargs = {"as_json": True} if self.protocol == "grpc" else {}
            if self.protocol == "grpc":
                kwargs["client_timeout"] = self.timeout_s
            self._meta[name] = model_info(name, self._call(lambda: self._client.get_model_config(name, **kwargs)))
        return self._meta[name]

    # --- calls ----------------------------------------------------------------------------
    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run fn; retry with back-off while the server is unavailable; raise MegaclassError."""
        delays = self.retry.delays()
        while True:
            try:
                return fn()
            except catchable() as exc:
                error = to_megaclass_error(exc, self.url)
                delay = next(delays, None) if self.retry.should_retry(error) else None
                if delay is None:
                    raise error from exc
                time.sleep(delay)

    def _slots(self, model: ModelInfo, input_name: str) -> tuple[SharedMemoryRegion, SlotLayout, queue.Queue]:
        with self._lock:
            if model.name not in self._shm:
                layout = shm_layout(model, input_name, max_top_k(self.model(self.retriever_model)))
                region = SharedMemoryRegion(layout.slot_bytes * self.max_in_flight)
                try:
                    self._call(
                        lambda: self._client.register_system_shared_memory(region.name, region.key, region.byte_size)
                    )
                except MegaclassError:
                    region.close()
                    raise
                free: queue.Queue = queue.Queue()
                for i in range(self.max_in_flight):
                    free.put(i)
                self._shm[model.name] = (region, layout, free)
            return self._shm[model.name]

    def _infer(self, model: ModelInfo, inputs: dict[str, np.ndarray], parameters: dict | None = None) -> SearchResults:
        kwargs: dict[str, Any] = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        if parameters:
            kwargs["parameters"] = parameters
        if not self.shared_memory:
            infer_inputs, outputs = build_request(self._tc, inputs)
            res = self._call(lambda: self._client.infer(model.name, infer_inputs, outputs=outputs, **kwargs))
            return parse_result(res)
        region, layout, free = self._slots(model, next(iter(inputs)))
        index = free.get()
        try:
            slot = _ShmSlot(region, layout, index)
            infer_inputs, outputs = build_request(self._tc, inputs, slot)
            res = self._call(lambda: self._client.infer(model.name, infer_inputs, outputs=outputs, **kwargs))
            return parse_result(res, slot)
        finally:
            free.put(index)

    def classify(
        self,
        images: np.ndarray | ImageLike | Sequence[ImageLike],
        top_k: int | None = None,
        threshold: float | None = None,
    ) -> SearchResults:
        """Classify images: a uint8 `[N, S, S]` / float `[N, 1, S, S]` array, PIL images or paths.

        `top_k` and `threshold` travel as request parameters through the ensemble to the
        retriever (server defaults when None).
        """
        meta = self.model(self.classify_model)
        (input_name, dims), *_ = meta.inputs.items()
        batch = image_batch(images, dims)
        params = classify_parameters(top_k, threshold)
        parts = [self._infer(meta, c, params) for c in split_rows({input_name: batch}, meta.max_batch_size)]
        return SearchResults.concat(parts)

    def search(self, embeddings: np.ndarray, top_k: int | None = None, threshold: float | None = None) -> SearchResults:
        """Nearest classes for embeddings (float32 `[N, D]`) from the retriever."""
        meta = self.model(self.retriever_model)
        inputs = search_inputs(embeddings, meta.inputs.get("EMBEDDING", [None])[-1], top_k, threshold)
        return SearchResults.concat([self._infer(meta, chunk) for chunk in split_rows(inputs, meta.max_batch_size)])
