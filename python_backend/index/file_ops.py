"""Plain functions behind `megaclass index build|tune|search` (bring your own embeddings).

Files: prototypes `P.npy` (float32 [P, D], one row per prototype), labels `L.txt` (one class label per
row; repeated labels = several prototypes of one class), queries `Q.npy` (float32 [Q, D]). Class ids
are given to labels in order of first appearance. No pickle: `.npy` is read with allow_pickle=False
and results are written as an `.npz` of plain arrays (labels as fixed-width unicode).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from megaclass.python_backend.index.config import IndexConfig
from megaclass.python_backend.index.form_search import choose_form
from megaclass.python_backend.index.persistence import RESERVED, update_manifest_params
from megaclass.python_backend.index.result import SearchResult
from megaclass.python_backend.index.routed_index import RoutedIndex
from megaclass.python_backend.index.tuning import TuneResult, tune


def read_vectors(path: Path, name: str = "array") -> np.ndarray:
    """A float32 [n, d] array from `.npy` (no pickle); ValueError naming the file otherwise."""
    try:
        x = np.load(Path(path), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read {name} as .npy: {e}") from e
    if x.ndim != 2 or x.dtype.kind not in "fiu":
        raise ValueError(f"{path}: {name} must be a 2-D numeric array, got {x.dtype} {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def read_label_file(path: Path, rows: int | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """Class id per row and {class id: label} from a labels file (one label per "\\n"-ended line)."""
    lines = [s.removesuffix("\r") for s in Path(path).read_text(encoding="utf-8").split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    if rows is not None and len(lines) != rows:
        raise ValueError(f"{path}: {len(lines)} labels for {rows} prototype rows (need one per row)")
    ids: dict[str, int] = {}
    class_ids = np.fromiter((ids.setdefault(s, len(ids)) for s in lines), dtype=np.int64, count=len(lines))
    return class_ids, {i: s for s, i in ids.items()}


def build_index(
    prototypes: Path,
    labels: Path,
    out: Path,
    cfg: IndexConfig | None = None,
    *,
    extra_manifest: dict[str, Any] | None = None,
    progress: bool = False,
    groups: np.ndarray | None = None,
) -> RoutedIndex:
    """Build a routed index from `P.npy` + `L.txt` and save it to `out` (new or empty directory);
    `groups` (one per row, -1: none): the coarse clusters, instead of k-means (RoutedIndex.build)."""
    xb = read_vectors(prototypes, "prototypes")
    class_ids, names = read_label_file(labels, len(xb))
    index = RoutedIndex.build(xb, class_ids, names, cfg or IndexConfig(), progress=progress, groups=groups)
    extra = {"source": {"prototypes": str(prototypes), "labels": str(labels)}, **(extra_manifest or {})}
    index.save(Path(out), extra_manifest=extra)
    return index


def tune_index(
    index_dir: Path,
    queries: Path,
    *,
    target_recall: float = 0.95,
    top_k: int = 10,
    batch: int = 64,
    write: bool = True,
    search_space: str = "settings",
    budget_s: float = 300.0,
) -> TuneResult:
    """Choose nprobe / probe margin / rerank for `target_recall` on held-out `queries`; store them as the
    index's defaults. `search_space="full"` also chooses the storage form and backend (form_search.py)
    within `budget_s` seconds, and rewrites the index in the winning form."""
    if search_space not in ("settings", "full"):
        raise ValueError(f"search_space must be 'settings' or 'full', got {search_space!r}")
    index = RoutedIndex.load(Path(index_dir))
    xq = read_vectors(queries, "queries")
    tuning: dict[str, Any] = {"target_recall": target_recall, "search_space": search_space}
    if search_space == "full":
        choice = choose_form(index, xq, target_recall=target_recall, top_k=top_k, batch=batch, budget_s=budget_s)
        result, tuning["forms"], tuning["form"] = choice.result, choice.tried, choice.form.name
        if write and choice.index is not index:
            _replace_saved(choice.index, Path(index_dir), index.manifest)
    else:
        result = tune(index, xq, target_recall=target_recall, top_k=top_k, batch=batch)
    if write:
        tuning.update(recall=result.recall, qps=result.qps, reached=result.reached)
        update_manifest_params(
            Path(index_dir),
            {"nprobe": result.nprobe, "rerank": result.rerank, "probe_margin": result.probe_margin},
            tuning,
        )
    return result


def _replace_saved(index: RoutedIndex, directory: Path, old_manifest: dict[str, Any]) -> None:
    """Write `index` in place of the saved one at `directory`: beside it first, then two renames."""
    keep = {k: v for k, v in old_manifest.items() if k not in RESERVED}
    fresh = directory.with_name(directory.name + ".tuned")
    stale = directory.with_name(directory.name + ".replaced")
    for path in (fresh, stale):
        shutil.rmtree(path, ignore_errors=True)
    index.save(fresh, extra_manifest=keep)
    os.replace(directory, stale)
    os.replace(fresh, directory)
    shutil.rmtree(stale, ignore_errors=True)


def search_index(
    index_dir: Path,
    queries: Path,
    out: Path,
    *,
    top_k: int = 10,
    nprobe: int | None = None,
    threshold: float | None = None,
    batch: int = 4096,
    probe_margin: float | None = None,
) -> Path:
    """Search `queries` and write `out` (.npz: class_ids int64, labels unicode, scores float32, [Q, top_k])."""
    index = RoutedIndex.load(Path(index_dir))
    xq = read_vectors(queries, "queries")

    def search(x: np.ndarray) -> SearchResult:
        return index.search(x, top_k, nprobe=nprobe, threshold=threshold, probe_margin=probe_margin)

    parts = [search(xq[s : s + batch]) for s in range(0, len(xq), batch)] or [search(xq)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out,
        class_ids=np.concatenate([p.class_ids for p in parts]),
        labels=np.concatenate([p.labels for p in parts]).astype(str),
        scores=np.concatenate([p.scores for p in parts]),
    )
    return out
