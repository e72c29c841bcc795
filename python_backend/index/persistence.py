"""Versioned on-disk form of a routed index: plain `.npy` arrays, JSON, and a checksummed manifest.

`save_index` / `read_index` write and read a RoutedIndex (its `save` and `load` call them); the
rest are the file-level pieces.

No pickle anywhere: arrays are written with `np.save(..., allow_pickle=False)` and read back
with `np.load(..., allow_pickle=False)`; everything else is JSON. The manifest is written last,
so a directory without one was never finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from megaclass.python_backend.index.config import IndexConfig
from megaclass.python_backend.index.defaults import FAISS_FLAT
from megaclass.python_backend.index.mutation import compact

if TYPE_CHECKING:
    from megaclass.python_backend.index.routed_index import RoutedIndex

FORMAT_NAME = "megaclass-routed-index"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
ARRAYS = ("centroids", "vectors", "row_class", "entry_row", "entry_list", "classes")  # besides the codec's
RESERVED = {"format", "format_version", "files", "dim", "metric", "num_classes", "num_prototypes"}


class IndexIntegrityError(Exception):
    """A saved index is missing a file, fails a checksum, or has an unreadable manifest."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_index_dir(
    directory: Path, arrays: dict[str, np.ndarray], json_files: dict[str, Any], manifest: dict[str, Any]
) -> None:
    """Write `arrays` (as NAME.npy), `json_files` (as NAME) and a manifest with every file's checksum.

    A directory that does not exist yet is written aside and renamed into place (atomic);
    an existing one must be empty.
    """
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"refusing to overwrite non-empty index directory {directory}")
    fresh = not directory.exists()
    directory.parent.mkdir(parents=True, exist_ok=True)
    target = directory
    if fresh:
        target = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        files: dict[str, dict[str, Any]] = {}
        for name, arr in arrays.items():
            path = target / f"{name}.npy"
            np.save(path, np.ascontiguousarray(arr), allow_pickle=False)
            files[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        for name, obj in json_files.items():
            path = target / name
            path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
            files[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        full = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **manifest, "files": files}
        (target / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True, ensure_ascii=False), encoding="utf-8")
        if fresh:
            os.replace(target, directory)
    except BaseException:
        if fresh:
            shutil.rmtree(target, ignore_errors=True)
        raise


def read_manifest(directory: Path) -> dict[str, Any]:
    """Parse and sanity-check `directory/manifest.json`; raises IndexIntegrityError."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise IndexIntegrityError(f"{path}: manifest missing (not a saved index, or an unfinished save)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexIntegrityError(f"{path}: manifest unreadable: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise IndexIntegrityError(f"{path}: not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexIntegrityError(
            f"{path}: format version {manifest.get('format_version')!r}, this code reads {FORMAT_VERSION}"
        )
    if not isinstance(manifest.get("files"), dict):
        raise IndexIntegrityError(f"{path}: manifest has no file table")
    return manifest


def verify_files(directory: Path, manifest: dict[str, Any], required: list[str]) -> None:
    """Check that every `required` file is listed, present, of the right size and checksum."""
    directory = Path(directory)
    files = manifest["files"]
    for name in required:
        if name not in files:
            raise IndexIntegrityError(f"{directory / MANIFEST}: required file {name} not listed")
    for name, meta in files.items():
        path = directory / name
        if Path(name).name != name:
            raise IndexIntegrityError(f"{directory / MANIFEST}: bad file name {name!r}")
        if not path.is_file():
            raise IndexIntegrityError(f"{path}: missing")
        size = path.stat().st_size
        if size != meta.get("bytes"):
            raise IndexIntegrityError(f"{path}: {size} bytes, manifest says {meta.get('bytes')} (truncated?)")
        digest = sha256_file(path)
        if digest != meta.get("sha256"):
            raise IndexIntegrityError(f"{path}: sha256 {digest[:12]}… differs from the manifest (corrupted)")


def load_array(directory: Path, name: str) -> np.ndarray:
    """Read NAME.npy without pickle; a malformed file raises IndexIntegrityError."""
    path = Path(directory) / f"{name}.npy"
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise IndexIntegrityError(f"{path}: unreadable array: {e}") from e


def load_json(directory: Path, name: str) -> Any:
    """Read a JSON file of the index; a malformed file raises IndexIntegrityError."""
    path = Path(directory) / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexIntegrityError(f"{path}: unreadable JSON: {e}") from e


def update_manifest_params(directory: Path, params: dict[str, Any], tuning: dict[str, Any] | None = None) -> None:
    """Change search defaults in a saved index's manifest (atomic rewrite; file checksums are unaffected)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    manifest.setdefault("params", {}).update(params)
    if tuning is not None:
        manifest["tuning"] = tuning
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False))
    os.replace(tmp, directory / MANIFEST)


def save_index(index: RoutedIndex, directory: Path, extra_manifest: dict | None = None) -> None:
    """Write `index` to `directory` (new or empty) with a checksummed manifest; removed rows are
    dropped first. `extra_manifest` may add keys, not set reserved ones."""
    extra = dict(extra_manifest or {})
    clash = RESERVED & set(extra)
    if clash:
        raise ValueError(f"extra_manifest may not set reserved keys {sorted(clash)}")
    with index._lock.write():
        if compact(index):
            index._refresh()
        manifest = {
            **{k: v for k, v in index.manifest.items() if k not in RESERVED},
            **extra,
            "params": dataclasses.asdict(index.cfg),
            "dim": index.dim,
            "metric": "inner_product",
            "num_classes": index.num_classes,
            "num_prototypes": index.num_prototypes,
            "num_entries": index.num_entries,
            "imbalance": round(index.imbalance(), 4),
            "bytes": index.memory_bytes(),
        }
        arrays = {
            "centroids": index.centroids,
            "vectors": index._vectors,
            "row_class": index._row_class,
            "entry_row": index._entry_row,
            "entry_list": index._entry_list,
            "classes": index._classes,
            **{f"codec_{k}": v for k, v in index.codec.items()},
        }
        write_index_dir(Path(directory), arrays, {"labels.json": [str(x) for x in index._labels]}, manifest)
    index.manifest = read_manifest(Path(directory))


def read_index(directory: Path, backend: str | None = None) -> dict[str, Any]:
    """The RoutedIndex constructor's arguments from a directory written by `save_index`; any missing or
    altered file raises IndexIntegrityError. `backend` overrides the saved scan backend."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    verify_files(directory, manifest, [f"{n}.npy" for n in ARRAYS] + ["labels.json"])
    arrays = {n: load_array(directory, n) for n in ARRAYS}
    codec = {
        name[len("codec_") : -len(".npy")]: load_array(directory, name[: -len(".npy")])
        for name in manifest["files"]
        if name.startswith("codec_") and name.endswith(".npy")
    }
    labels = np.array(load_json(directory, "labels.json"), dtype=object)
    params = manifest.get("params", {})
    known = {f.name for f in dataclasses.fields(IndexConfig)}
    # A saved index is concrete: fields its manifest lacks take the values they had before "auto" existed.
    cfg = IndexConfig(**{**FAISS_FLAT, **{k: v for k, v in params.items() if k in known}})
    if backend is not None:
        cfg = dataclasses.replace(cfg, backend=backend)
    _check_consistent(directory, manifest, arrays, labels)
    return {"cfg": cfg, "labels": labels, "codec": codec, "manifest": manifest, **arrays}


def _check_consistent(directory: Path, manifest: dict, arrays: dict[str, np.ndarray], labels: np.ndarray) -> None:
    """The saved arrays agree with each other and the manifest (shapes, dtypes, ranges)."""
    c, v = arrays["centroids"], arrays["vectors"]
    problems = []
    if c.ndim != 2 or v.ndim != 2 or c.shape[1] != v.shape[1] or c.shape[1] != manifest.get("dim"):
        problems.append("centroids/vectors shapes disagree with the manifest dimension")
    if len(arrays["row_class"]) != len(v) or len(arrays["entry_row"]) != len(arrays["entry_list"]):
        problems.append("row or entry arrays have different lengths")
    if len(arrays["entry_row"]) and (arrays["entry_row"].max() >= len(v) or arrays["entry_list"].max() >= len(c)):
        problems.append("entries point outside the stored rows or clusters")
    if len(labels) != len(arrays["classes"]) or len(arrays["classes"]) != manifest.get("num_classes"):
        problems.append("class count disagrees with the labels or the manifest")
    if len(v) != manifest.get("num_prototypes"):
        problems.append("prototype count disagrees with the manifest")
    if problems:
        raise IndexIntegrityError(f"{directory}: " + "; ".join(problems))
