"""The retriever's search on a GPU, chosen by size when the model loads.

Prototypes that fit the instance's memory budget are searched exactly (one matrix product and top-k
per batch, index/torch_search.ExactTorchSearch); larger sets by the routed index scanned on the GPU
(RoutedTorchSearch). The decision (`RetrievalPlan`) goes into the loaded index's manifest, the log and
a metric; the answers equal the CPU path's (tests/python_backend/index/test_gpu_retrieval.py).
The settings are serving/config.py's `GpuRetrievalConfig`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from megaclass.python_backend.index.result import SearchResult, finish
from megaclass.python_backend.index.validation import validate_queries

MODES = ("exact", "routed", "index")


class RetrievalSettings(Protocol):
    """What the plan reads: serving/config.py's GpuRetrievalConfig (the index does not import serving)."""

    search: Literal["auto", "exact", "routed", "index"]
    memory_budget_mb: int
    fp16: bool


@dataclass(frozen=True)
class RetrievalPlan:
    """How the retriever searches: `mode` (exact, routed, index), where, and why."""

    mode: str
    device: str
    prototype_bytes: int  # the live prototypes at the chosen precision
    budget_bytes: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_retrieval(num_prototypes: int, dim: int, device: str, cfg: RetrievalSettings) -> RetrievalPlan:
    """Exact when the prototypes fit the budget on a GPU, routed on the GPU when they do not, the
    index's own (CPU) backend on a CPU; `cfg.search` other than "auto" forces a mode."""
    nbytes = num_prototypes * dim * (2 if cfg.fp16 else 4)
    budget = cfg.memory_budget_mb << 20
    if cfg.search != "auto":
        if cfg.search not in MODES:
            raise ValueError(f"gpu_retrieval.search must be auto or one of {MODES}, got {cfg.search!r}")
        return RetrievalPlan(cfg.search, device, nbytes, budget, "set in the configuration")
    if not device.startswith("cuda"):
        return RetrievalPlan("index", device, nbytes, budget, "no GPU: the routed index on the CPU")
    if nbytes <= budget:
        return RetrievalPlan("exact", device, nbytes, budget, f"{nbytes >> 20} MiB of prototypes fit the budget")
    return RetrievalPlan("routed", device, nbytes, budget, f"{nbytes >> 20} MiB of prototypes exceed the budget")


class DeviceRetriever:
    """A RoutedIndex searched on a torch device by `plan.mode`: `search` answers as RoutedIndex.search
    (a SearchResult with labels, threshold and stats), so the retriever service needs no change."""

    def __init__(self, index: Any, plan: RetrievalPlan, fp16: bool = True):
        import torch

        from megaclass.python_backend.index.torch_search import ExactTorchSearch, RoutedTorchSearch

        self.index = index
        self.plan = plan
        dtype = torch.float16 if fp16 else torch.float32
        if plan.mode == "exact":
            self.kernel = ExactTorchSearch(index._vectors, index._row_class, plan.device, dtype)
        else:
            self.kernel = RoutedTorchSearch(index, plan.device, dtype)

    dim = property(lambda self: self.index.dim)
    num_classes = property(lambda self: self.index.num_classes)
    manifest = property(lambda self: self.index.manifest)

    def search(
        self, queries: Any, top_k: int, nprobe: int | None = None, threshold: float | None = None
    ) -> SearchResult:
        """Top `top_k` distinct classes per query; `nprobe`/`threshold` default to the index's settings."""
        t0 = time.perf_counter()
        xq = validate_queries(queries, self.dim)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        cfg = self.index.cfg
        nprobe = cfg.nprobe if nprobe is None else int(nprobe)
        if self.plan.mode == "exact":
            class_ids, scores, totals = self.kernel.search(xq, top_k)
        else:
            class_ids, scores, totals = self.kernel.search(xq, top_k, nprobe, cfg.probe_margin)
        threshold = cfg.score_threshold if threshold is None else threshold
        result = finish(class_ids, scores, threshold, self.index._label_table())
        n = max(len(xq), 1)
        result.stats = {
            "backend": f"torch-{self.plan.mode}",
            "device": self.plan.device,
            "nprobe": nprobe if self.plan.mode == "routed" else 0,
            "probes_per_query": totals["probes"] / n,
            "candidates": totals["scanned"] / n,
            "candidates_scanned": int(totals["scanned"]),
            "exact_per_query": totals["exact"] / n,
            "seconds": time.perf_counter() - t0,
        }
        return result


def load_retriever(index: Any, device: str, cfg: RetrievalSettings) -> tuple[Any, RetrievalPlan]:
    """The object the retriever searches (the index itself, or a DeviceRetriever over it) and the plan,
    which is also written into `index.manifest["retrieval"]`."""
    live = int((index._row_class >= 0).sum())
    plan = plan_retrieval(live, index.dim, device, cfg)
    index.manifest["retrieval"] = plan.as_dict()
    if plan.mode == "index":
        return index, plan
    return DeviceRetriever(index, plan, cfg.fp16), plan


def load_for_instance(index_dir: Path, params: dict[str, str], instance_device_id: str | int = 0):
    """The retriever of one Triton model instance: the index at `index_dir` searched as the model
    config's parameters say (`device` "cpu" | "cuda" — this instance's GPU, never a hard-wired 0 —
    `search`, `gpu_memory_budget_mb`, `gpu_fp16`). Returns (what to search, its plan, the device)."""
    from megaclass.python_backend.index.routed_index import RoutedIndex
    from megaclass.python_backend.serving.config import GpuRetrievalConfig

    device = params.get("device", "cpu")
    if device == "cuda":
        import torch

        device = f"cuda:{int(instance_device_id)}"
        torch.cuda.set_device(device)
    cfg = GpuRetrievalConfig(
        search=params.get("search", "auto"),
        memory_budget_mb=int(params.get("gpu_memory_budget_mb", GpuRetrievalConfig.memory_budget_mb)),
        fp16=params.get("gpu_fp16", "true") == "true",
    )
    index, plan = load_retriever(RoutedIndex.load(index_dir), device, cfg)
    return index, plan, device
