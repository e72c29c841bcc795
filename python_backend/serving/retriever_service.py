"""What the Triton retriever does, without Triton: per-request options, one search per batch.

Every request of a dynamic batch may ask for its own `top_k` and score threshold. The requests
asking for the same `top_k` are searched together, once (an answer never depends on its
batch-mates); each request gets row views of that search's outputs with its threshold applied
(scores below it become class -1, "<unknown>").
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
    labels: np.ndarray  # object (UTF-8 bytes) [n, top_k], ready for a BYTES tensor
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


class EncodedLabels:
    """The index's class labels as one table of UTF-8 bytes, built once: a batch's labels are one
    `take` by class id (the BYTES output needs bytes; encoding per row cost a Python loop per answer).

    Two extra entries: b"" for an empty slot (class id -1, fewer than k classes found) and
    b"<unknown>" for a class below the request's threshold.
    """

    def __init__(self, classes: np.ndarray, labels: Sequence[str]):
        self.classes = np.asarray(classes, dtype=np.int64)  # sorted, unique
        encoded = [str(s).encode() for s in labels]
        self.table = np.array([*encoded, b"", UNKNOWN_LABEL.encode()], dtype=object)
        n = len(self.classes)
        self._missing, self._unknown = n, n + 1
        self._contiguous = n > 0 and self.classes[-1] - self.classes[0] == n - 1

    @classmethod
    def of_index(cls, index) -> EncodedLabels:
        """The labels of a loaded RoutedIndex (or of the one a GPU retriever wraps, index/gpu_retrieval.py)."""
        classes, labels, _ = getattr(index, "index", index)._label_table()
        return cls(classes, labels)

    def take(self, class_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Labels (object array of bytes, same shape) of `class_ids`: b"<unknown>" for class -1 with
        a finite score (below a threshold), b"" for class -1 with score -inf (an empty slot)."""
        ids = np.asarray(class_ids, dtype=np.int64)
        c, n = self.classes, len(self.classes)
        if self._contiguous:
            pos = np.where((ids < c[0]) | (ids > c[-1]), self._missing, ids - c[0])
        elif n:
            at = np.minimum(np.searchsorted(c, ids), n - 1)
            pos = np.where((ids >= 0) & (c[at] == ids), at, self._missing)
        else:
            pos = np.full(ids.shape, self._missing)
        pos = np.where((ids < 0) & np.isfinite(scores), self._unknown, pos)
        return self.table.take(pos)


def answer_requests(
    index, requests: Sequence[RetrieverRequest | Exception], labels: EncodedLabels | None = None
) -> tuple[list[RetrieverAnswer | Exception], dict]:
    """Search the valid requests in one batch per distinct `top_k`; split the answer per request.

    Requests with the same `top_k` share one search; a request never sees a batch-mate's `top_k`
    (with compressed storage the re-rank depth grows with it, so its answer would depend on who it
    was batched with). Every output is built once per search and each request gets row views of
    it. Labels are bytes (`labels`, default: the index's, encoded once). Returns the per-request
    answers (or errors) and the searches' statistics (queries, nprobe, candidates scanned, and
    compute_s: the calling thread's CPU seconds inside the index's search).
    """
    answers: list[RetrieverAnswer | Exception] = list(requests)
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(requests):
        if isinstance(r, RetrieverRequest):
            groups.setdefault(r.top_k, []).append(i)
    if not groups:
        return answers, {}
    labels = labels if labels is not None else EncodedLabels.of_index(index)
    stats: dict = {"queries": 0, "candidates_scanned": 0, "compute_s": 0.0}
    for k, members in groups.items():
        batch = [requests[i] for i in members]
        try:
            split, group_stats = _answer_group(index, batch, k, labels)
        except Exception as exc:  # one failure answers this search's requests with it
            split, group_stats = [exc] * len(members), {}
        for i, answer in zip(members, split, strict=True):
            answers[i] = answer
        stats["queries"] += group_stats.get("queries", 0)
        stats["candidates_scanned"] += int(group_stats.get("candidates_scanned", 0))
        stats["compute_s"] += group_stats.get("compute_s", 0.0)
        for key in ("nprobe", "backend"):
            if key in group_stats:
                stats[key] = group_stats[key]
    return answers, stats


def _answer_group(
    index, batch: list[RetrieverRequest], k: int, labels: EncodedLabels
) -> tuple[list[RetrieverAnswer], dict]:
    """One search for requests that all ask for `k`; answers are row views of the batch's outputs."""
    queries = concat_rows([r.embeddings for r in batch])
    started = time.thread_time()
    result = index.search(queries, top_k=k)
    compute_s = time.thread_time() - started
    ids = np.asarray(result.class_ids, dtype=np.int64)
    scores = np.asarray(result.scores, dtype=np.float32)
    sizes = [r.embeddings.shape[0] for r in batch]
    if any(r.threshold is not None for r in batch):
        t = np.repeat([np.nan if r.threshold is None else r.threshold for r in batch], sizes)
        ids = np.where(scores < t[:, None].astype(np.float32), -1, ids)  # NaN (no threshold): never below
    names = labels.take(ids, scores)
    bounds = np.cumsum([0, *sizes])
    split = [RetrieverAnswer(ids[a:b], names[a:b], scores[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return split, {"queries": len(queries), **getattr(result, "stats", {}), "compute_s": compute_s}


class SearchTally:
    """The retriever's search statistics, added up between sends to Triton's metrics.

    Each metric call from a Python-backend model is a round trip to the server process, paid
    inside `execute` before the responses leave: made for every batch they took about a fifth of
    the retriever's busy time under load, and at concurrency 1 they added to every request's
    latency. So the sums are sent at most once every `interval_s`, whatever the batch size: a
    request after a quiet spell sends at once; under traffic the metrics lag by at most
    `interval_s`, and after a burst until the next request. The nprobe gauge is sent only when it
    changes. `compute_s` sums the CPU seconds the model spent in its own compute (searches, and the
    encoder's runs where the model has one), for the megaclass_compute_seconds_total counter.
    """

    def __init__(self, interval_s: float = 0.5, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self.queries = 0
        self.candidates = 0
        self.compute_s = 0.0
        self.nprobe: int | None = None
        self._nprobe_sent: int | None = None
        self._sent_at = -math.inf

    def add(self, stats: dict) -> dict | None:
        """Add one batch's `stats`; returns the sums to send (and starts afresh) when due, else None;
        its "nprobe" is None unless it changed since the last send."""
        if stats:
            self.queries += int(stats.get("queries", 0))
            self.candidates += int(stats.get("candidates_scanned", stats.get("fetched_per_query", 0)))
            self.nprobe = stats.get("nprobe", self.nprobe)
            self.compute_s += float(stats.get("compute_s", 0.0))
        now = self.clock()
        if not self.queries or now - self._sent_at < self.interval_s:
            return None
        changed = self.nprobe if self.nprobe != self._nprobe_sent else None
        due = {"queries": self.queries, "candidates": self.candidates, "nprobe": changed, "compute_s": self.compute_s}
        self.queries = self.candidates = 0
        self.compute_s = 0.0
        self._nprobe_sent = self.nprobe
        self._sent_at = now
        return due
