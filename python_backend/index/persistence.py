"""Versioned on-disk form of a routed index: plain `.npy` arrays, JSON, and a checksummed manifest.

No pickle anywhere: arrays are written with `np.save(..., allow_pickle=False)` and read back
with `np.load(..., allow_pickle=False)`; everything else is JSON. The manifest is written last,
so a directory without one was never finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_NAME = "megaclass-routed-index"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"


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
