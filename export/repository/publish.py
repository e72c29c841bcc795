"""Publish new model versions into a live repository, load them, and roll back.

A version is checked before it is published (the index passes its checksums and matches the
encoder's embedding dimension), written aside and renamed into place (never touching the
version being served). Publishing does not change what serves: the serving pointer (the
config's `specific` version policy, `serving_pointer.py`) moves only when asked (`promote`, or
`megaclass publish --load`), and a server in explicit model-control mode then loads it through the
model-control API. Triton keeps answering with the old version until the new one is ready, and
the ensemble follows the loaded retriever.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from megaclass.export.repository.generate import (
    CLASSIFY,
    ENCODER,
    PYTHON_ENCODER_TARGETS,
    RETRIEVER,
    encoder_file_name,
    is_one_hop,
    model_file,
    parse_config,
    publish_one_hop,
    publish_version,
    remove_tree,
)
from megaclass.export.repository.serving_pointer import PointerError, promote, rollback_pointer, serving_version


class PublishError(RuntimeError):
    """The artifacts cannot be published; nothing was changed."""


@dataclass(frozen=True)
class Published:
    model: str
    version: int


def _embedding_dim(repo: Path) -> int | None:
    cfg_path = repo / ENCODER / "config.pbtxt"
    if not cfg_path.exists():
        return None
    cfg = parse_config(cfg_path.read_text())
    return int(cfg.output[0].dims[-1])


def check_index(index_dir: Path, repo: Path) -> dict:
    """Load the index (verifying checksums) and check its dimension against the encoder's."""
    from megaclass.python_backend.index.persistence import IndexIntegrityError
    from megaclass.python_backend.index.routed_index import RoutedIndex

    try:
        index = RoutedIndex.load(index_dir)
    except (IndexIntegrityError, OSError, ValueError) as exc:
        raise PublishError(f"index {index_dir} is not publishable: {exc}") from exc
    dim = _embedding_dim(repo)
    if dim is not None and index.dim != dim:
        raise PublishError(
            f"index {index_dir} has dimension {index.dim} but the encoder in {repo} outputs {dim}: "
            "build the index with embeddings from this encoder"
        )
    return index.manifest


def _os_error_text(exc: OSError) -> str:
    """An OSError as one line; `shutil.copytree` gathers its per-file errors into a list."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        first, more = exc.args[0][0], len(exc.args[0]) - 1
        why = first[2] if isinstance(first, tuple) and len(first) == 3 else first
        return f"{why}" + (f" (and {more} more file(s))" if more else "")
    return str(exc)


def check_free_space(target: Path, sources: list[Path], margin_bytes: int = 1 << 20) -> None:
    """Refuse early, with the numbers, when `target`'s file system cannot hold a copy of `sources`.

    Every file is copied (see `publish_version`).
    """
    need = 0
    for src in sources:
        if src.is_file():
            need += src.stat().st_size
        else:
            need += sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
    free = shutil.disk_usage(target).free
    if need + margin_bytes > free:
        raise PublishError(
            f"not enough disk space in {target}: the new version needs {need / 1e6:.1f} MB, "
            f"{free / 1e6:.1f} MB are free; free some space (older versions: --keep) and publish again. "
            "The serving version is untouched"
        )


def publish_index(repo: Path, index_dir: Path, keep: int = 3, promote_it: bool = False) -> Published:
    """Publish `index_dir` as the next retriever version; with `promote_it`, point the config at it."""
    repo = Path(repo)
    if not (repo / RETRIEVER / "config.pbtxt").exists():
        raise PublishError(f"{repo} has no retriever model: build the repository first (megaclass demo)")
    check_index(Path(index_dir), repo)
    check_free_space(repo / RETRIEVER, [Path(index_dir)])
    try:
        v = publish_version(repo / RETRIEVER, {"model.py": model_file(RETRIEVER), "index": Path(index_dir)}, keep=keep)
    except OSError as exc:
        raise PublishError(
            f"could not write {repo / RETRIEVER}: {_os_error_text(exc)}; the serving version is untouched"
        ) from exc
    if promote_it:
        promote(repo / RETRIEVER, v)
        _follow_one_hop(repo, keep)
    return Published(RETRIEVER, v)


def _follow_one_hop(repo: Path, keep: int | None) -> None:
    """A one-hop `classify` holds the encoder and the index itself: publish its next version too
    (`load_models` loads it after the encoder or retriever)."""
    if not is_one_hop(repo):
        return
    try:
        promote(repo / CLASSIFY, publish_one_hop(repo, keep=keep))  # it serves what they serve
    except OSError as exc:
        raise PublishError(
            f"could not write {repo / CLASSIFY}: {_os_error_text(exc)}; its serving version is untouched"
        ) from exc


def _encoder_target(repo: Path) -> str:
    """The serving target the repository's encoder config was generated for."""
    cfg_path = Path(repo) / ENCODER / "config.pbtxt"
    if not cfg_path.exists():
        raise PublishError(f"{repo} has no encoder model: build the repository first (megaclass demo)")
    config = parse_config(cfg_path.read_text())
    if "runtime" in config.parameters and config.parameters["runtime"].string_value == "torch":
        return "gpu-torch"
    return {"onnxruntime_onnx": "gpu-onnxruntime", "tensorrt_plan": "gpu-tensorrt"}.get(config.platform, "cpu")


def publish_encoder(repo: Path, onnx_path: Path, keep: int = 3, promote_it: bool = False) -> Published:
    """Publish `onnx_path` (a TensorRT plan for a gpu-tensorrt repository, a `save_encoder` file for
    gpu-torch) as the next encoder version; with `promote_it`, point the config at it."""
    target = _encoder_target(repo)
    if target not in ("gpu-tensorrt", "gpu-torch"):
        import onnx

        try:
            onnx.checker.check_model(str(onnx_path))
        except Exception as exc:
            raise PublishError(f"{onnx_path} is not a valid ONNX model: {exc}") from exc
    files = {encoder_file_name(target): Path(onnx_path)}
    if target in PYTHON_ENCODER_TARGETS:
        files["model.py"] = model_file(ENCODER)
    check_free_space(repo / ENCODER, [Path(onnx_path)])
    try:
        v = publish_version(repo / ENCODER, files, keep=keep)
    except OSError as exc:
        raise PublishError(
            f"could not write {repo / ENCODER}: {_os_error_text(exc)}; the serving version is untouched"
        ) from exc
    if promote_it:
        promote(repo / ENCODER, v)
        _follow_one_hop(Path(repo), keep)
    return Published(ENCODER, v)


def load_models(
    url: str, models: list[str], protocol: str = "grpc", admin_key: str | None = None, repo: Path | None = None
) -> None:
    """Ask a server in explicit model-control mode to (re)load `models`.

    Triton loads the newest version beside the one serving and switches when it is ready;
    a version that fails to load leaves the old one serving and raises here. A one-hop `classify`
    (it holds the encoder and the index itself) is loaded after the encoder or retriever. `admin_key`
    (default: `security.resolve_admin_key`, the environment's key file or key) unlocks a restricted model-control API.
    With `repo` (the server's repository, on this machine), a refused version is also moved
    aside (`.refused-N`) and the serving pointer goes back to the version that keeps serving, so
    that a restarted server does not try it again.
    """

    from tritonclient.utils import InferenceServerException

    from megaclass.python_backend.server.security import resolve_admin_key
    from megaclass.python_backend.server.triton_server import admin_headers

    if protocol == "grpc":
        import tritonclient.grpc as tc
    else:
        import tritonclient.http as tc
    client = tc.InferenceServerClient(url)
    admin_key = admin_key or resolve_admin_key()
    headers = admin_headers(admin_key, protocol) if admin_key else None
    models = list(models)
    if CLASSIFY not in models and {ENCODER, RETRIEVER} & set(models) and _serves_one_hop(client, protocol, headers):
        models.append(CLASSIFY)
    for name in models:
        try:
            client.load_model(name, headers=headers)
        except InferenceServerException as exc:
            message = f"server refused to load {name}: {exc.message()}"
            states = _version_states(client, name, protocol, headers)
            refused = [v for v, state, why in states if state == "UNAVAILABLE" and why and why != "unloaded"]
            serving = [v for v, state, _ in states if state == "READY"]
            if serving:
                message += f"\nversion {serving[-1]} of {name} keeps serving"
                if repo is not None and serving_version(Path(repo) / name) != serving[-1]:
                    promote(Path(repo) / name, serving[-1])
                    message += " (the serving pointer points at it again)"
            if repo is not None:
                for v in refused:
                    moved = retire_version(Path(repo), name, v, prefix=".refused")
                    if moved:
                        message += f"; the refused version {v} was moved aside to {moved}"
            if refused:
                message += (
                    f".\nUntil a version of {name} loads, Triton's server readiness (/v2/health/ready) says "
                    f"not ready although every model serves; probe /v2/models/<model>/ready. "
                    f"Fix the artifacts and publish again."
                )
            raise PublishError(message) from exc


def _serves_one_hop(client, protocol: str, headers) -> bool:
    """Whether the server's `classify` is the one-hop Python-backend model."""
    try:
        config = client.get_model_config(CLASSIFY, headers=headers)
    except Exception:  # no classify model loaded: nothing follows
        return False
    config = config if protocol == "http" else config.config
    backend = config.get("backend") if isinstance(config, dict) else config.backend
    return backend == "python"


def _version_states(client, name: str, protocol: str, headers) -> list[tuple[int, str, str]]:
    """(version, state, reason) of `name` in the server's repository index; [] when unavailable."""
    try:
        index = client.get_model_repository_index(headers=headers)
    except Exception:  # the index only helps the message
        return []
    rows = index if protocol == "http" else [
        {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in index.models
    ]  # fmt: skip
    return [
        (int(r["version"]), r.get("state", ""), r.get("reason", ""))
        for r in rows
        if r.get("name") == name and str(r.get("version", "")).isdigit()
    ]


def retire_version(repo: Path, model: str, version: int, prefix: str = ".retired") -> Path | None:
    """Move `model`'s version out of the server's sight (kept on disk); None when it is not there."""
    src = Path(repo) / model / str(version)
    if not src.is_dir():
        return None
    dst = Path(repo) / model / f"{prefix}-{version}"
    remove_tree(dst)
    src.rename(dst)
    return dst


def rollback(repo: Path, model: str) -> int:
    """Point `model` back at the version served before this one (`serving_pointer.rollback_target`);
    the version left stays on disk. A one-hop `classify` follows the encoder or retriever it holds (a
    new version of it from the versions now pointed at). Returns the version now pointed at (loaded by
    the next load)."""
    try:
        version = rollback_pointer(Path(repo) / model)[1]
    except PointerError as exc:
        raise PublishError(str(exc)) from None
    if model in (ENCODER, RETRIEVER):
        _follow_one_hop(Path(repo), keep=None)
    return version


def promote_version(repo: Path, model: str, version: int) -> int | None:
    """Point `model` at `version` (checked first); returns the version pointed at before."""
    try:
        before = promote(Path(repo) / model, version)
    except PointerError as exc:
        raise PublishError(str(exc)) from None
    if model in (ENCODER, RETRIEVER):
        _follow_one_hop(Path(repo), keep=None)
    return before
