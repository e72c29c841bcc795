"""`tune --search-space full`: choose the storage form and scan backend as well as the search settings.

Every candidate keeps the index's router and entries (`RoutedIndex.with_storage` re-trains only the
codec), is tuned to the same target recall on the same queries (`tuning.tune`), and the one with the
most queries per second wins. Candidates are tried fastest-first as measured so far
(docs/benchmarks.md), so a tight time budget still tries the likely winner.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from megaclass.python_backend.index.defaults import native_available, native_pq_m
from megaclass.python_backend.index.routed_index import RoutedIndex
from megaclass.python_backend.index.tuning import TuneResult, tune


@dataclass(frozen=True)
class Form:
    """One storage form with the backend that scans it."""

    backend: str
    storage: str
    pq_residual: bool = False

    @property
    def name(self) -> str:
        return f"{self.backend}/{self.storage}" + ("-residual" if self.pq_residual else "")


@dataclass
class FormChoice:
    """The winning index (a new object when its form changed), its tuning, and every form's outcome."""

    index: RoutedIndex
    result: TuneResult
    form: Form
    tried: list[dict[str, Any]] = field(default_factory=list)


def candidate_forms(dim: int) -> list[Form]:
    """The forms worth trying here, likely fastest first: native residual 4-bit PQ where the kernel
    runs, then FAISS 4-bit PQ fast-scan, 8-bit scalar codes and exact float32 vectors."""
    forms = []
    if native_available() is None and native_pq_m(dim, None) is not None:
        forms.append(Form("native", "pq", True))
    forms += [Form("faiss", "pq"), Form("faiss", "sq8"), Form("faiss", "flat")]
    return forms


def _form_of(index: RoutedIndex) -> Form:
    return Form(index.cfg.backend, index.cfg.storage, bool(index.cfg.pq_residual))


def _as_form(index: RoutedIndex, form: Form) -> RoutedIndex:
    if form == _form_of(index):
        return index
    pq_m = native_pq_m(index.dim, None) if form.storage == "pq" else None
    return index.with_storage(form.storage, pq_m=pq_m, pq_residual=form.pq_residual, backend=form.backend)


def _score(result: TuneResult) -> tuple[bool, float]:
    """Reaching the target first, then queries per second."""
    return (result.reached, result.qps)


def choose_form(
    index: RoutedIndex,
    queries: np.ndarray,
    *,
    target_recall: float = 0.95,
    top_k: int = 10,
    batch: int = 64,
    budget_s: float = 300.0,
    progress: bool = True,
) -> FormChoice:
    """Tune the index's own form, then the other candidates while `budget_s` seconds last; the fastest
    reaching `target_recall` wins (the own form is kept on ties and when nothing else was tried)."""
    t0 = time.perf_counter()
    truth = index.exact_search(queries, top_k).class_ids
    own = _form_of(index)
    forms = [own] + [f for f in candidate_forms(index.dim) if f != own]
    best: FormChoice | None = None
    tried: list[dict[str, Any]] = []
    for form in tqdm(forms, desc="index forms", unit="form", disable=not progress):
        if best is not None and time.perf_counter() - t0 > budget_s:
            tried.append({"form": form.name, "skipped": "time budget"})
            continue
        start = time.perf_counter()
        candidate = _as_form(index, form)
        result = tune(candidate, queries, target_recall=target_recall, top_k=top_k, truth=truth, batch=batch)
        tried.append(
            {
                "form": form.name,
                "reached": result.reached,
                "recall": round(result.recall, 4),
                "qps": round(result.qps, 1),
                "nprobe": result.nprobe,
                "rerank": result.rerank,
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
        if best is None or _score(result) > _score(best.result):
            best = FormChoice(candidate, result, form)
    assert best is not None  # the own form is always tried
    best.tried = tried
    return best
