"""Plain functions behind `megaclass index build|tune|search` (bring your own embeddings).

Files: prototypes `P.npy` (float32 [P, D], one row per prototype), labels `L.txt` (one class label per
row; repeated labels = several prototypes of one class), queries `Q.npy` (float32 [Q, D]). Class ids
are given to labels in order of first appearance. No pickle: `.npy` is read with allow_pickle=False
and results are written as an `.npz` of plain arrays (labels as fixed-width unicode).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from megaclass.python_backend.index.config import IndexConfig
from megaclass.python_backend.index.persistence import update_manifest_params
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
) -> RoutedIndex:
    """Build a routed index from `P.npy` + `L.txt` and save it to `out` (new or empty directory)."""
    xb = read_vectors(prototypes, "prototypes")
    class_ids, names = read_label_file(labels, len(xb))
    index = RoutedIndex.build(xb, class_ids, names, cfg or IndexConfig(), progress=progress)
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
) -> TuneResult:
    """Choose nprobe / probe margin / rerank for `target_recall` on held-out `queries`; store them as the
    index's defaults."""
    index = RoutedIndex.load(Path(index_dir))
    xq = read_vectors(queries, "queries")
    result = tune(index, xq, target_recall=target_recall, top_k=top_k, batch=batch)
    if write:
        update_manifest_params(
            Path(index_dir),
            {"nprobe": result.nprobe, "rerank": result.rerank, "probe_margin": result.probe_margin},
            {"target_recall": target_recall, "recall": result.recall, "qps": result.qps, "reached": result.reached},
        )
    return result


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
