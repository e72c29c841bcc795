"""A typed client for the megaclass models on Triton, over gRPC or HTTP.

`Client(url, protocol="grpc")` wraps tritonclient: `classify(images)` calls the ensemble,
`search(embeddings)` the retriever directly (for callers with their own encoder). Large
inputs are split into server-sized requests; server errors surface as `MegaclassError`
carrying the server's message; an unavailable server is retried with back-off.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from megaclass.export.preprocess import load_image, to_model_input
from PIL import Image

Protocol = Literal["grpc", "http"]
ImageLike = np.ndarray | Image.Image | str | Path


class MegaclassError(RuntimeError):
    """A request failed; the message is the server's (or says the server was unreachable)."""


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


def _decode(arr: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else str(b), otypes=[object])(arr)


class Client:
    """Synchronous client for `classify` (images) and `retriever` (embeddings)."""

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        protocol: Protocol = "grpc",
        *,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        classify_model: str = "classify",
        retriever_model: str = "retriever",
    ):
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        self.protocol, self.url, self.timeout_s = protocol, url, timeout_s
        self.retries, self.backoff_s = retries, backoff_s
        self.classify_model, self.retriever_model = classify_model, retriever_model
        if protocol == "grpc":
            import tritonclient.grpc as tc
        else:
            import tritonclient.http as tc
        self._tc = tc
        kwargs = {} if protocol == "grpc" else {"connection_timeout": timeout_s, "network_timeout": timeout_s}
        self._client = tc.InferenceServerClient(url, **kwargs)
        self._meta: dict[str, dict] = {}

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- metadata -------------------------------------------------------------------------
    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready())
        except Exception:
            return False

    def _model(self, name: str) -> dict:
        """Max batch size and input shapes of a model, asked once."""
        if name not in self._meta:
            cfg = self._call(lambda: self._client.get_model_config(name))
            cfg = cfg["config"] if self.protocol == "grpc" and isinstance(cfg, dict) else cfg
            if self.protocol == "grpc" and not isinstance(cfg, dict):
                from google.protobuf.json_format import MessageToDict

                cfg = MessageToDict(cfg.config, preserving_proto_field_name=True)
            inputs = {i["name"]: [int(d) for d in i["dims"]] for i in cfg["input"]}
            self._meta[name] = {"max_batch_size": int(cfg.get("max_batch_size", 0)) or 1, "inputs": inputs}
        return self._meta[name]

    # --- calls ----------------------------------------------------------------------------
    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run fn, retrying with back-off while the server is unreachable."""
        from tritonclient.utils import InferenceServerException

        for attempt in range(self.retries + 1):
            try:
                return fn()
            except InferenceServerException as exc:
                msg = exc.message() or str(exc)
                unavailable = any(s in msg.lower() for s in ("unavailable", "connection refused", "failed to connect"))
                if unavailable and attempt < self.retries:
                    time.sleep(self.backoff_s * 2**attempt)
                    continue
                raise MegaclassError(msg) from exc
            except (ConnectionError, OSError) as exc:
                if attempt < self.retries:
                    time.sleep(self.backoff_s * 2**attempt)
                    continue
                raise MegaclassError(f"cannot reach the server at {self.url}: {exc}") from exc
        raise AssertionError("unreachable")

    def _infer(self, model: str, inputs: dict[str, np.ndarray], parameters: dict | None = None) -> SearchResults:
        tc = self._tc
        from tritonclient.utils import np_to_triton_dtype

        infer_inputs = []
        for name, arr in inputs.items():
            x = tc.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
            x.set_data_from_numpy(arr)
            infer_inputs.append(x)
        outputs = [tc.InferRequestedOutput(n) for n in ("CLASS_IDS", "LABELS", "SCORES", "INDEX_VERSION")]
        kwargs: dict[str, Any] = {"parameters": parameters} if parameters else {}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        res = self._call(lambda: self._client.infer(model, infer_inputs, outputs=outputs, **kwargs))
        return SearchResults(
            res.as_numpy("CLASS_IDS"),
            _decode(res.as_numpy("LABELS")),
            res.as_numpy("SCORES"),
            [str(v) for v in _decode(res.as_numpy("INDEX_VERSION")).reshape(-1)],
        )

    def classify(self, images: np.ndarray | Sequence[ImageLike], top_k: int | None = None) -> SearchResults:
        """Classify images: a uint8 `[N, S, S]` / float `[N, 1, S, S]` array, or PIL images / paths."""
        meta = self._model(self.classify_model)
        (input_name, dims), *_ = meta["inputs"].items()
        size = dims[-1]
        if not isinstance(images, np.ndarray):
            images = np.stack([load_image(x, size) for x in images])
        batch = to_model_input(images)
        if list(batch.shape[1:]) != dims:
            raise MegaclassError(f"images must be {dims[-2]}x{dims[-1]}, got {list(batch.shape[2:])}")
        step = meta["max_batch_size"]
        parts = [
            self._infer(self.classify_model, {input_name: batch[i : i + step]}) for i in range(0, len(batch), step)
        ]
        result = SearchResults.concat(parts)
        return _truncate(result, top_k)

    def search(self, embeddings: np.ndarray, top_k: int | None = None, threshold: float | None = None) -> SearchResults:
        """Nearest classes for embeddings (float32 `[N, D]`) from the retriever."""
        emb = np.ascontiguousarray(np.atleast_2d(embeddings), dtype=np.float32)
        step = self._model(self.retriever_model)["max_batch_size"]
        parts = []
        for i in range(0, len(emb), step):
            chunk = emb[i : i + step]
            inputs = {"EMBEDDING": chunk}
            if top_k is not None:
                inputs["TOP_K"] = np.full((len(chunk), 1), top_k, dtype=np.int32)
            if threshold is not None:
                inputs["THRESHOLD"] = np.full((len(chunk), 1), threshold, dtype=np.float32)
            parts.append(self._infer(self.retriever_model, inputs))
        return SearchResults.concat(parts)


def _truncate(r: SearchResults, top_k: int | None) -> SearchResults:
    if top_k is None:
        return r
    return SearchResults(r.class_ids[:, :top_k], r.labels[:, :top_k], r.scores[:, :top_k], r.index_versions)
