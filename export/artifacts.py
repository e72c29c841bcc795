"""Cached pipeline stages: a stage's output directory is keyed by the hash of its inputs.

A stage whose inputs did not change is reused on the next run; a stage is complete only
when its `done.json` marker exists (written last), so an interrupted run is redone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any


def stage_dir(work_dir: Path, stage: str, key: str) -> Path:
    """`work_dir/<stage>/<key>`."""
    return Path(work_dir) / stage / key


def is_done(directory: Path) -> bool:
    return (directory / "done.json").exists()


def read_done(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "done.json").read_text())


def start_stage(directory: Path) -> Path:
    """Empty `directory` for a fresh build of the stage."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def mark_done(directory: Path, info: dict[str, Any]) -> None:
    (directory / "done.json").write_text(json.dumps(info, indent=2, default=str))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def array_fingerprint(*arrays: Any) -> str:
    """Short hash of arrays' bytes and shapes."""
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]
