"""A published model version cannot change unnoticed: its files' SHA-256 in a manifest, checked at load.

`publish_version` (export/repository/generate.py) copies every file into the version (never a hard
link: re-exporting an ONNX file or editing the packaged `model.py` must not reach a version that
may be serving), records each file's SHA-256 in `version.json`, and makes the version read-only.
The Triton models call `verify_version` in `initialize`, so a version whose files were changed,
added or removed after publishing is refused with the files named, and the serving one keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

MANIFEST = "version.json"
READ_ONLY_FILE, READ_ONLY_DIR = 0o444, 0o555


class VersionIntegrityError(RuntimeError):
    """A published version's files differ from the checksums recorded when it was published."""


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(version_dir: Path) -> list[Path]:
    """Every regular file under `version_dir` except the manifest and Python's caches, sorted."""
    return sorted(
        p
        for p in version_dir.rglob("*")
        if p.is_file() and p.name != MANIFEST and "__pycache__" not in p.relative_to(version_dir).parts
    )


def write_manifest(version_dir: Path) -> dict[str, str]:
    """Record the SHA-256 of every file of `version_dir` in its manifest; returns path -> digest."""
    version_dir = Path(version_dir)
    digests = {p.relative_to(version_dir).as_posix(): sha256_of(p) for p in _files(version_dir)}
    (version_dir / MANIFEST).write_text(json.dumps({"files": digests}, indent=1, sort_keys=True))
    return digests


def verify_version(version_dir: Path) -> dict[str, str]:
    """Raise `VersionIntegrityError` naming the files that changed, appeared or vanished since publishing."""
    version_dir = Path(version_dir)
    try:
        recorded = json.loads((version_dir / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VersionIntegrityError(
            f"{version_dir} has no readable {MANIFEST} ({type(exc).__name__}): it was not written by "
            "`megaclass publish`; publish the artifacts again"
        ) from None
    found = {p.relative_to(version_dir).as_posix(): p for p in _files(version_dir)}
    changed = sorted(name for name, p in found.items() if name in recorded and sha256_of(p) != recorded[name])
    missing = sorted(set(recorded) - set(found))
    added = sorted(set(found) - set(recorded))
    if changed or missing or added:
        parts = [f"{what}: {', '.join(names[:5])}" for what, names in
                 (("changed", changed), ("missing", missing), ("added", added)) if names]  # fmt: skip
        raise VersionIntegrityError(
            f"version {version_dir} was modified after it was published ({'; '.join(parts)}); "
            "published versions are immutable: publish the new artifacts as a new version"
        )
    return recorded


def make_read_only(version_dir: Path) -> None:
    """Files r--r--r--, folders r-xr-xr-x: a published version is not written in place by mistake."""
    for root, dirs, files in os.walk(version_dir):
        for name in files:
            os.chmod(Path(root) / name, READ_ONLY_FILE)
        for name in dirs:
            os.chmod(Path(root) / name, READ_ONLY_DIR)
    os.chmod(version_dir, READ_ONLY_DIR)


def make_writable(path: Path) -> None:
    """Give the owner write permission again below `path` (before deleting a version)."""
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(root) / name
            if not p.is_symlink():
                os.chmod(p, os.stat(p).st_mode | stat.S_IWUSR)
    if Path(path).exists():
        os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR)


def model_parameters(config: dict) -> dict[str, str]:
    """The `parameters` of a model config as plain strings."""
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def open_version(args: dict) -> tuple[dict, dict[str, str], Path]:
    """What a Triton model's `initialize(args)` starts from: its config, the config's parameters as
    plain strings, and its version directory, verified against the checksums recorded at publishing
    (a version changed since is refused, naming the files)."""
    config = json.loads(args["model_config"])
    params = model_parameters(config)
    version_dir = Path(args["model_repository"]) / args["model_version"]
    verify_version(version_dir)
    return config, params, version_dir
