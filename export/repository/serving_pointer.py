"""Which version of a model serves is chosen, never stumbled into.

The pointer is the model's own config.pbtxt: `version_policy { specific { versions: [N] } }`.
Triton reads it on start, on every load request and (through the loaded config) when the
watchdog reloads a crashed stub, so a version that was published but not promoted stays on
disk and never goes live by accident. `promote` moves the pointer (atomically, with the
previous version remembered in `<model>/.serving.json` for `rollback`); pruning old versions
never removes the serving version or the one rollback returns to.
"""

from __future__ import annotations

import json
from pathlib import Path

from megaclass.export.repository.generate import parse_config, remove_version, versions, write_config
from megaclass.python_backend.serving.version_integrity import VersionIntegrityError, verify_version

HISTORY = ".serving.json"
HISTORY_LENGTH = 10


class PointerError(RuntimeError):
    """The serving pointer cannot be moved as asked; it was left where it was."""


def _config(model_dir: Path):
    path = Path(model_dir) / "config.pbtxt"
    if not path.exists():
        raise PointerError(f"{model_dir} has no config.pbtxt: build the repository first (megaclass demo)")
    return parse_config(path.read_text())


def serving_version(model_dir: Path) -> int | None:
    """The version the config points to; for a config with another policy, the newest on disk."""
    policy = _config(model_dir).version_policy
    if policy.WhichOneof("policy_choice") == "specific" and policy.specific.versions:
        return int(max(policy.specific.versions))
    return (versions(Path(model_dir)) or [None])[-1]


def _history(model_dir: Path) -> list[int]:
    try:
        return [int(v) for v in json.loads((Path(model_dir) / HISTORY).read_text())["previous"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _write_history(model_dir: Path, previous: list[int]) -> None:
    tmp = Path(model_dir) / f"{HISTORY}.tmp"
    tmp.write_text(json.dumps({"previous": previous[-HISTORY_LENGTH:]}))
    tmp.replace(Path(model_dir) / HISTORY)


def _point(model_dir: Path, version: int) -> None:
    config = _config(model_dir)
    config.version_policy.ClearField("latest")
    config.version_policy.specific.ClearField("versions")
    config.version_policy.specific.versions.append(int(version))
    write_config(Path(model_dir), config)


def promote(model_dir: Path, version: int) -> int | None:
    """Point `model_dir`'s config at `version` (after checking its files); returns the previous one.

    A server picks the change up on its next load of the model (`megaclass publish --load`) or restart.
    """
    model_dir = Path(model_dir)
    if version not in versions(model_dir):
        raise PointerError(f"{model_dir.name} has no version {version} (published: {versions(model_dir)})")
    try:
        verify_version(model_dir / str(version))
    except VersionIntegrityError as exc:
        raise PointerError(f"refusing to promote: {exc}") from None
    previous = serving_version(model_dir)
    _point(model_dir, version)
    if previous is not None and previous != version:
        _write_history(model_dir, [v for v in _history(model_dir) if v not in (version, previous)] + [previous])
    return previous


def rollback_target(model_dir: Path) -> int | None:
    """The version `rollback` would serve: the last one served before this, else the next older one."""
    model_dir = Path(model_dir)
    on_disk, current = versions(model_dir), serving_version(model_dir)
    for v in reversed(_history(model_dir)):
        if v in on_disk and v != current:
            return v
    older = [v for v in on_disk if current is not None and v < current]
    return older[-1] if older else None


def rollback_pointer(model_dir: Path) -> tuple[int, int]:
    """Point the config back at `rollback_target`; returns (from, to). The version left stays on disk."""
    model_dir = Path(model_dir)
    target, current = rollback_target(model_dir), serving_version(model_dir)
    if target is None or current is None:
        raise PointerError(
            f"{model_dir.name} has no earlier version to roll back to (published: {versions(model_dir)})"
        )
    _point(model_dir, target)
    history = _history(model_dir)
    if target in history:  # forget it and what was served after it
        history = history[: len(history) - 1 - history[::-1].index(target)]
    _write_history(model_dir, history)
    return current, target


def protected(model_dir: Path) -> set[int]:
    """Versions that pruning must keep: the serving one and the rollback target."""
    return {v for v in (serving_version(model_dir), rollback_target(model_dir)) if v is not None}


def prune(model_dir: Path, keep: int) -> list[int]:
    """Remove versions older than the newest `keep`, except `protected` ones; returns those removed."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.pbtxt").exists():
        keep_set: set[int] = set()
    else:
        keep_set = protected(model_dir)
    removed = [v for v in versions(model_dir)[: -keep or None] if v not in keep_set] if keep > 0 else []
    for v in removed:
        remove_version(model_dir, v)
    return removed
