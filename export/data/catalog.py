"""Bring your own data: a catalogue file of labelled samples (CSV, or Parquet where pyarrow/pandas import).

Columns:

- ``class_id`` (int) and ``label`` (str, the same for every row of a class);
- exactly one of ``path`` (an image file, read with `preprocess.load_image`; relative paths are
  relative to the catalogue's folder) or ``embedding`` (a precomputed embedding given inline as
  space-separated floats, e.g. ``"0.12 -0.5 0.33"``; in Parquet also a list<float> column);
- optionally ``split``: ``train`` (the default: trained on and enrolled as prototypes) or
  ``query`` (held out: evaluation queries only).

Image catalogues are accepted by `megaclass train`; both kinds by prototype building and
`megaclass evaluate` (an embedding catalogue is evaluated as is, without an encoder).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megaclass.python_backend.serving.preprocess import load_image

SPLITS = ("train", "query")


class CatalogError(ValueError):
    """The catalogue file cannot be read or breaks the column rules above."""


@dataclass
class Catalog:
    """The rows of a catalogue, in file order."""

    class_ids: np.ndarray  # int64 [N]
    labels: dict[int, str]  # class id -> label
    splits: np.ndarray  # str [N], "train" or "query"
    paths: list[Path] | None  # image files (absolute), or None for an embedding catalogue
    embeddings: np.ndarray | None  # float32 [N, D], or None for an image catalogue
    source: Path

    def __len__(self) -> int:
        return len(self.class_ids)

    @property
    def kind(self) -> str:
        """ "images" or "embeddings"."""
        return "images" if self.paths is not None else "embeddings"

    def rows(self, split: str) -> np.ndarray:
        """Indices of the rows in `split`."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return np.flatnonzero(self.splits == split)

    def images(self, rows: np.ndarray, size: int) -> np.ndarray:
        """uint8 `[len(rows), size, size]` images of an image catalogue."""
        if self.paths is None:
            raise CatalogError(f"{self.source}: an embedding catalogue has no images (it needs a `path` column)")
        out = np.zeros((len(rows), size, size), dtype=np.uint8)
        for i, r in enumerate(rows):
            try:
                out[i] = load_image(self.paths[r], size)
            except OSError as e:
                raise CatalogError(f"{self.source}: row {r + 1}: cannot read image {self.paths[r]}: {e}") from e
        return out


def _read_table(path: Path) -> dict[str, list]:
    """Column name -> values, from CSV (always) or Parquet (with pyarrow or pandas)."""
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pydict()
        except ImportError:
            pass
        try:
            import pandas as pd

            return pd.read_parquet(path).to_dict(orient="list")
        except ImportError:
            raise CatalogError(
                f"{path}: reading Parquet needs pyarrow (pip install pyarrow) or pandas with a Parquet engine; "
                "or convert the catalogue to CSV"
            ) from None
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise CatalogError(f"{path}: empty file (expected a header row)")
        columns: dict[str, list] = {name.strip(): [] for name in reader.fieldnames}
        for row in reader:
            for name, value in row.items():
                if name is None:
                    raise CatalogError(f"{path}: line {reader.line_num} has more fields than the header")
                columns[name.strip()].append(value)
        return columns


def _parse_embedding(value: object, row: int, path: Path) -> np.ndarray:
    try:
        if isinstance(value, str):
            return np.array(value.split(), dtype=np.float32)
        return np.asarray(value, dtype=np.float32).ravel()
    except (TypeError, ValueError) as e:
        raise CatalogError(f"{path}: row {row + 1}: embedding is not space-separated floats: {value!r}") from e


def read_catalog(path: str | Path) -> Catalog:
    """Read and check a catalogue (see the module docstring for the columns)."""
    path = Path(path)
    if not path.exists():
        raise CatalogError(f"{path}: no such catalogue file")
    cols = _read_table(path)
    missing = {"class_id", "label"} - set(cols)
    if missing:
        raise CatalogError(f"{path}: missing column(s) {sorted(missing)}; have {sorted(cols)}")
    has_path, has_emb = "path" in cols, "embedding" in cols
    if has_path == has_emb:
        raise CatalogError(f"{path}: needs exactly one of the columns `path` (images) or `embedding`")
    n = len(cols["class_id"])
    if n == 0:
        raise CatalogError(f"{path}: no rows")
    try:
        class_ids = np.array([int(str(v).strip()) for v in cols["class_id"]], dtype=np.int64)
    except ValueError as e:
        raise CatalogError(f"{path}: class_id must be integers: {e}") from e
    labels: dict[int, str] = {}
    for r, (c, lbl) in enumerate(zip(class_ids.tolist(), cols["label"], strict=True)):
        lbl = "" if lbl is None else str(lbl)
        if labels.setdefault(c, lbl) != lbl:
            raise CatalogError(f"{path}: row {r + 1}: class {c} has label {lbl!r} but earlier {labels[c]!r}")
    splits = np.array([str(s).strip() or "train" for s in cols.get("split", ["train"] * n)], dtype=object)
    bad = sorted(set(splits.tolist()) - set(SPLITS))
    if bad:
        raise CatalogError(f"{path}: unknown split value(s) {bad}; expected {SPLITS}")
    paths, embeddings = None, None
    if has_path:
        paths = [(path.parent / str(p).strip()).resolve() for p in cols["path"]]
    else:
        rows = [_parse_embedding(v, r, path) for r, v in enumerate(cols["embedding"])]
        dims = {len(v) for v in rows}
        if len(dims) != 1 or 0 in dims:
            raise CatalogError(f"{path}: embeddings must all have the same, non-zero length; got {sorted(dims)}")
        embeddings = np.stack(rows)
    return Catalog(class_ids, labels, splits.astype(str), paths, embeddings, path)


def write_catalog_csv(
    path: str | Path,
    class_ids: np.ndarray,
    labels: list[str],
    paths: list[str] | None = None,
    embeddings: np.ndarray | None = None,
    splits: list[str] | None = None,
) -> Path:
    """Write a CSV catalogue (one of `paths` or `embeddings`), e.g. to export a data set or in tests."""
    path = Path(path)
    header = ["class_id", "label", "path" if paths is not None else "embedding"] + (["split"] if splits else [])
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, c in enumerate(class_ids):
            value = paths[i] if paths is not None else " ".join(f"{x:.8g}" for x in embeddings[i])
            w.writerow([int(c), labels[i], value] + ([splits[i]] if splits else []))
    return path
