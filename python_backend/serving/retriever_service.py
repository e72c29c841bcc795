"""What the Triton retriever does, without Triton: per-request options, one search per batch.

Every request of a dynamic batch may ask for its own `top_k` and score threshold. The batch
is searched once with the largest `top_k`; each request then gets its rows, its first
`top_k` columns, and its threshold applied (scores below it become class -1, "<unknown>").
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from megaclass.python_backend.serving.device_arrays import concat_rows
from megaclass.python_backend.serving.request_batching import InputError

UNKNOWN_LABEL = "<unknown>"


@dataclass(frozen=True)
class RetrieverRequest:
    """One validated request: its embedding rows and options."""

    embeddings: np.ndarray
    top_k: int
    threshold: float | None


@dataclass(frozen=True)
class RetrieverAnswer:
    """Per-request answer, rows aligned with the request's embeddings."""

    class_ids: np.ndarray  # int64 [n, top_k]
    labels: np.ndarray  # object (str) [n, top_k]
    scores: np.ndarray  # float32 [n, top_k]


def index_fingerprint(manifest: dict) -> str:
    """A short id of an index's content (the checksums of its files), shown with every answer."""
    files = manifest.get("files", {})
    blob = json.dumps({k: v.get("sha256") for k, v in files.items()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def check_index_matches_config(index_dim: int, model_config: dict, index_dir: object = "the index") -> None:
    """Refuse, at load, an index whose dimension differs from the model's EMBEDDING input.

    The EMBEDDING dims come from the encoder the repository was generated for, so a mismatch
    means the index was built with another encoder's embeddings.
    """
    dims = [i["dims"] for i in model_config.get("input", []) if i.get("name") == "EMBEDDING"]
    want = int(dims[0][-1]) if dims and dims[0] else None
    if want is not None and want != index_dim:
        raise ValueError(
            f"{index_dir} has dimension {index_dim} but the model's EMBEDDING input (the encoder's output) "
            f"has {want}: publish an index built from this encoder's embeddings"
        )


def parse_options(
    top_k: np.ndarray | None,
    threshold: np.ndarray | None,
    parameters_json: str | None,
    *,
    default_top_k: int,
    max_top_k: int,
    num_classes: int,
) -> tuple[int, float | None]:
    """Read `top_k` / `threshold` from optional inputs or request parameters, and check them.

    The optional inputs carry one value per row; a request has one `top_k` and one threshold,
    so every row must give the same value.
    """
    params = _parameters(parameters_json)
    k = _one_value("TOP_K", top_k) if top_k is not None and top_k.size else params.get("top_k", default_top_k)
    t = _one_value("THRESHOLD", threshold) if threshold is not None and threshold.size else params.get("threshold")
    if not isinstance(k, int | np.integer) or isinstance(k, bool):
        raise InputError(f"top_k must be an integer, got {k!r}")
    limit = min(max_top_k, num_classes)
    if not 1 <= k <= limit:
        raise InputError(
            f"top_k must be between 1 and {limit} (the index has {num_classes} classes, "
            f"the server allows at most {max_top_k}), got {k}"
        )
    if t is not None:
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or not -1.0 <= t <= 1.0:
            raise InputError(f"threshold is a cosine similarity and must be a number in [-1, 1], got {t!r}")
        t = float(t)
    return int(k), t


def _parameters(parameters_json: str | None) -> dict:
    """The request parameters (a JSON object, as Triton passes them)."""
    if not parameters_json:
        return {}
    try:
        params = json.loads(parameters_json)
    except ValueError as exc:
        raise InputError(f"request parameters are not valid JSON: {exc}") from exc
    if not isinstance(params, dict):
        raise InputError(f"request parameters must be a JSON object, got {type(params).__name__}")
    return params


def _one_value(name: str, array: np.ndarray) -> int | float:
    """The single value of a per-row option input; every row must give the same one."""
    flat = array.reshape(-1)
    distinct = np.unique(flat)
    if len(distinct) > 1 and not np.isnan(flat.astype(np.float64)).all():
        shown = ", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in distinct[:5].tolist())
        raise InputError(f"{name} must have the same value in every row of a request, got {shown}")
    return flat[0].item()


def answer_requests(
    index, requests: Sequence[RetrieverRequest | Exception]
) -> tuple[list[RetrieverAnswer | Exception], dict]:
    """Search all valid requests as one batch and split the answer per request.

    Returns the per-request answers (or errors) and the search's statistics (queries,
    nprobe, candidates scanned, as the index reports them).
    """
    valid = [r for r in requests if isinstance(r, RetrieverRequest)]
    if not valid:
        return list(requests), {}
    k = max(r.top_k for r in valid)
    queries = concat_rows([r.embeddings for r in valid])
    try:
        result = index.search(queries, top_k=k)
    except Exception as exc:
        return [exc if isinstance(r, RetrieverRequest) else r for r in requests], {}
    answers: list[RetrieverAnswer | Exception] = []
    start = 0
    for r in requests:
        if not isinstance(r, RetrieverRequest):
            answers.append(r)
            continue
        rows = slice(start, start + r.embeddings.shape[0])
        start = rows.stop
        ids = result.class_ids[rows, : r.top_k].copy()
        labels = result.labels[rows, : r.top_k].copy()
        scores = result.scores[rows, : r.top_k].copy()
        if r.threshold is not None:
            below = scores < r.threshold
            ids[below] = -1
            labels[below] = UNKNOWN_LABEL
        answers.append(RetrieverAnswer(ids, labels, scores))
    return answers, {"queries": len(queries), **getattr(result, "stats", {})}


class SearchTally:
    """The retriever's search statistics, added up between sends to Triton's metrics.

    Each metric call from a Python-backend model is a round trip to the server process; made for
    every batch they took about a fifth of the retriever's busy time under load (py-spy). So the
    sums are sent at most every `interval_s` while batches are large (the server is busy), and at
    once for a batch of at most `small_batch` requests (light load: each call is cheap next to the
    traffic, and the metrics stay exact). Under load the metrics lag by at most `interval_s`;
    after a burst, until the next request. The nprobe gauge is sent only when it changes.
    """

    def __init__(self, interval_s: float = 0.5, small_batch: int = 2, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self.small_batch = small_batch
        self.clock = clock
        self.queries = 0
        self.candidates = 0
        self.nprobe: int | None = None
        self._nprobe_sent: int | None = None
        self._sent_at = -math.inf

    def add(self, stats: dict, requests: int) -> dict | None:
        """Add one batch's `stats`; returns the sums to send (and starts afresh) when due, else None;
        its "nprobe" is None unless it changed since the last send."""
        if stats:
            self.queries += int(stats.get("queries", 0))
            self.candidates += int(stats.get("candidates_scanned", stats.get("fetched_per_query", 0)))
            self.nprobe = stats.get("nprobe", self.nprobe)
        now = self.clock()
        if not self.queries or (requests > self.small_batch and now - self._sent_at < self.interval_s):
            return None
        changed = self.nprobe if self.nprobe != self._nprobe_sent else None
        due = {"queries": self.queries, "candidates": self.candidates, "nprobe": changed}
        self.queries = self.candidates = 0
        self._nprobe_sent = self.nprobe
        self._sent_at = now
        return due
