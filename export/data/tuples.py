"""Tuple data sets: pairs marked similar / dissimilar and triplets, the form weak supervision arrives in.

File format (UTF-8 text, comma-separated; blank lines and lines starting with ``#`` are skipped).
The first other line is a header naming the kind:

- ``a,b,similar`` — pairs: two items and ``1`` (similar) or ``0`` (dissimilar);
- ``anchor,positive,negative`` — triplets: the anchor is more like the positive than the negative.

An item is either a non-negative integer, the row of an array file of uint8 images ``[N, S, S]``
(``.npy``, given to the loader), or an image path (absolute, or relative to the tuple file's
folder), read as greyscale and resized to S. Example::

    # clicks on search results
    anchor,positive,negative
    img/0041.png,img/0042.png,img/0977.png
    12,13,4051

A bad row raises `TupleFileError` naming the file, the line number and the reason.
`tuples_from_labels` generates either kind from a labelled set (tests, the comparison of
docs/training.md); `write_tuples` writes the format; `generate_tuple_file` does both for
`megaclass tuples generate` (items as rows of an array saved beside the file, or as image paths).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from megaclass.export.text_lines import csv_lines

TupleKind = Literal["pairs", "triplets"]
HEADERS: dict[str, tuple[str, ...]] = {"pairs": ("a", "b", "similar"), "triplets": ("anchor", "positive", "negative")}


class TupleFileError(ValueError):
    """A tuple file that cannot be read: `file:line: reason`."""


@dataclass
class TupleSet:
    """Tuples over a table of unique items.

    `tuples` int64 [T, 2] (pairs) or [T, 3] (triplets) index `images` (uint8 [U, S, S]);
    `similar` bool [T] for pairs (None for triplets); `items` the item reference of each image.
    """

    kind: TupleKind
    tuples: np.ndarray
    similar: np.ndarray | None
    images: np.ndarray
    items: list[str]

    def __len__(self) -> int:
        return len(self.tuples)


def _parse_rows(path: Path) -> tuple[TupleKind, list[tuple[int, list[str]]]]:
    """(kind, [(line number, fields)]) of a tuple file; raises TupleFileError on a bad header or row."""
    kind: TupleKind | None = None
    rows: list[tuple[int, list[str]]] = []
    for n, text, fields in csv_lines(path):
        if kind is None:
            kind = next((k for k, h in HEADERS.items() if tuple(x.lower() for x in fields) == h), None)
            if kind is None:
                expected = " or ".join(",".join(h) for h in HEADERS.values())
                raise TupleFileError(f"{path}:{n}: header {text!r} names no tuple kind; expected {expected}")
            continue
        width = len(HEADERS[kind])
        if len(fields) != width:
            raise TupleFileError(f"{path}:{n}: {len(fields)} fields, a {kind} row has {width}: {text!r}")
        if any(not x for x in fields):
            raise TupleFileError(f"{path}:{n}: empty item in {text!r}")
        if kind == "pairs" and fields[2] not in ("0", "1"):
            raise TupleFileError(f"{path}:{n}: similar must be 0 or 1, got {fields[2]!r}")
        rows.append((n, fields))
    if kind is None:
        raise TupleFileError(f"{path}: empty tuple file (no header)")
    if not rows:
        raise TupleFileError(f"{path}: header but no tuples")
    return kind, rows


def _read_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def load_tuples(path: str | Path, array: np.ndarray | str | Path | None = None, image_size: int = 32) -> TupleSet:
    """Read a tuple file (see the module docstring); `array`: images [N, S, S] (or its .npy) for row items."""
    path = Path(path)
    kind, rows = _parse_rows(path)
    if isinstance(array, str | Path):
        array = np.load(array, mmap_mode="r")
    if array is not None and (array.ndim != 3 or array.shape[1] != array.shape[2]):
        raise TupleFileError(f"{path}: the array file must hold images [N, S, S], got shape {array.shape}")
    size = int(array.shape[1]) if array is not None else image_size
    width = 2 if kind == "pairs" else 3
    item_of: dict[str, int] = {}
    images: list[np.ndarray] = []
    tuples = np.empty((len(rows), width), dtype=np.int64)
    for t, (n, fields) in enumerate(rows):
        for j, item in enumerate(fields[:width]):
            if item not in item_of:
                images.append(_item_image(path, n, item, array, size))
                item_of[item] = len(images) - 1
            tuples[t, j] = item_of[item]
        if len(set(tuples[t].tolist())) < width:
            raise TupleFileError(f"{path}:{n}: an item appears twice in one tuple: {','.join(fields)!r}")
    similar = np.array([f[2] == "1" for _, f in rows]) if kind == "pairs" else None
    return TupleSet(kind, tuples, similar, np.stack(images), list(item_of))


def _item_image(path: Path, line: int, item: str, array: np.ndarray | None, size: int) -> np.ndarray:
    """The image an item names: a row of `array` or an image file."""
    if item.isdigit():
        if array is None:
            raise TupleFileError(f"{path}:{line}: item {item!r} is a row number, but no array file was given")
        row = int(item)
        if row >= len(array):
            raise TupleFileError(f"{path}:{line}: row {row} is past the array file's {len(array)} rows")
        return np.asarray(array[row], dtype=np.uint8)
    image_path = Path(item) if Path(item).is_absolute() else path.parent / item
    if not image_path.is_file():
        raise TupleFileError(f"{path}:{line}: image {item!r} not found ({image_path})")
    try:
        return _read_image(image_path, size)
    except OSError as e:
        raise TupleFileError(f"{path}:{line}: cannot read image {item!r}: {e}") from e


def tuples_from_labels(labels: np.ndarray, kind: TupleKind, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` random tuples over rows of a labelled set: (rows int64 [count, 2|3], similar bool [count]).

    Triplets: anchor and positive two rows of one class (of a class with >= 2 rows), the negative a
    row of another class. Pairs: half similar (two rows of one class), half dissimilar (two classes).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise ValueError("tuples need at least two classes")
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    multi = np.flatnonzero(counts >= 2)
    if not len(multi):
        raise ValueError("tuples need a class with at least two rows")
    anchor_cls = multi[rng.integers(0, len(multi), count)]
    pos = np.array([rng.choice(by_class[c], 2, replace=False) for c in anchor_cls]).reshape(count, 2)
    other = (anchor_cls + rng.integers(1, len(classes), count)) % len(classes)
    neg = np.array([by_class[c][rng.integers(0, len(by_class[c]))] for c in other], dtype=np.int64)
    if kind == "triplets":
        return np.column_stack([pos, neg]).astype(np.int64), np.ones(count, dtype=bool)
    if kind != "pairs":
        raise ValueError(f"kind must be 'pairs' or 'triplets', got {kind!r}")
    similar = rng.random(count) < 0.5
    second = np.where(similar, pos[:, 1], neg)
    return np.column_stack([pos[:, 0], second]).astype(np.int64), similar


def write_tuples(path: str | Path, kind: TupleKind, rows: np.ndarray, similar: np.ndarray | None = None) -> Path:
    """Write `rows` (items: array rows or paths) in the tuple file format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(HEADERS[kind])]
    for i, row in enumerate(np.asarray(rows)):
        fields = [str(x) for x in row]
        if kind == "pairs":
            fields.append("1" if similar is None or similar[i] else "0")
        lines.append(",".join(fields))
    path.write_text("\n".join(lines) + "\n")
    return path


def generate_tuple_file(
    path: str | Path,
    kind: TupleKind,
    labels: np.ndarray,
    count: int,
    seed: int = 0,
    images: np.ndarray | None = None,
    paths: list[Path] | None = None,
) -> tuple[Path, Path | None]:
    """`count` tuples of a labelled set written to `path`: (tuple file, array file or None).

    Items are rows of `images` (uint8 [N, S, S], saved beside the file as ``<stem>.npy``, the
    loader's `array`) or, given `paths` instead, image paths written relative to the file's folder.
    """
    if (images is None) == (paths is None):
        raise ValueError("give the items as images or as paths, not both or neither")
    if count < 1:
        raise ValueError(f"the tuple count must be at least 1, got {count}")
    path = Path(path)
    rows, similar = tuples_from_labels(labels, kind, count, seed)
    if paths is not None:
        folder = path.resolve().parent
        items = np.array([os.path.relpath(Path(p).resolve(), folder) for p in paths], dtype=object)
        bad = next((i for i in items if "," in i or i != i.strip() or i.isdigit()), None)
        if bad is not None:  # the format has no quoting; a bare number would read as an array row
            raise ValueError(f"image path {bad!r} cannot be written in a tuple file (comma, edge space or digits only)")
        return write_tuples(path, kind, items[rows], similar), None
    array = path.with_suffix(".npy")
    array.parent.mkdir(parents=True, exist_ok=True)
    np.save(array, np.asarray(images, dtype=np.uint8))
    return write_tuples(path, kind, rows, similar), array
