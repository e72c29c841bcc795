"""`megaclass refresh --catalog CATALOG`: bring the serving index up to a changed class set, behind a gate.

The steps (`steps.STEPS`) run in order; each writes its result to
`work_dir/refresh/<key>/<step>/done.json`, where the key hashes every input (the catalogue's
content, the serving versions, the candidate encoder, the settings). A step whose `done.json`
exists is skipped, so an interrupted refresh resumes where it stopped and a repeated one does
nothing; an orchestrator runs one step per task with the same arguments.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from megaclass.export import artifacts
from megaclass.export.config import MegaclassConfig, config_hash
from megaclass.export.lifecycle.steps import steps_until

console = Console()


class RefreshError(RuntimeError):
    """The refresh cannot run (bad catalogue, repository without a serving version); nothing was published."""


@dataclass(frozen=True)
class RefreshRequest:
    """What to refresh, from which catalogue, and where to publish."""

    catalog: Path
    repository: Path
    encoder: Path | None = None  # candidate ONNX encoder (default: retrained, else the serving one)
    checkpoint: Path | None = None  # the serving encoder's checkpoint: enables warm-start retraining
    url: str | None = None  # load the published version on this server (explicit model control)
    protocol: str = "grpc"
    admin_key: str | None = None
    force_retrain: bool = False


@dataclass(frozen=True)
class ServingState:
    """The newest published versions in the repository: what answers now."""

    retriever_version: int
    index_dir: Path
    index_fingerprint: str
    encoder_version: int
    encoder_path: Path
    encoder_sha256: str


def serving_state(repo: Path) -> ServingState:
    """The repository's newest retriever and encoder versions (the ones Triton serves)."""
    from megaclass.export.repository.generate import ENCODER, RETRIEVER, encoder_file_name, versions
    from megaclass.export.repository.publish import _encoder_target
    from megaclass.python_backend.index.persistence import read_manifest
    from megaclass.python_backend.serving.retriever_service import index_fingerprint

    rv, ev = versions(repo / RETRIEVER), versions(repo / ENCODER)
    if not rv or not ev:
        raise RefreshError(
            f"{repo} has no published encoder and retriever: build the repository first (megaclass demo)"
        )
    target = _encoder_target(repo)
    encoder = repo / ENCODER / str(ev[-1]) / encoder_file_name(target)
    if encoder.suffix != ".onnx":
        raise RefreshError(f"the serving encoder {encoder} is not ONNX; give the candidate encoder with --encoder")
    index_dir = repo / RETRIEVER / str(rv[-1]) / "index"
    fingerprint = index_fingerprint(read_manifest(index_dir))
    return ServingState(rv[-1], index_dir, fingerprint, ev[-1], encoder, artifacts.sha256_file(encoder))


@dataclass
class RefreshContext:
    """What every step reads: settings, request, serving state, earlier steps' results."""

    cfg: MegaclassConfig
    req: RefreshRequest
    serving: ServingState
    run_dir: Path
    key: str
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    _catalog: Any = None

    def catalog(self):
        from megaclass.export.data.catalog import read_catalog

        if self._catalog is None:
            self._catalog = read_catalog(self.req.catalog)
        return self._catalog

    def step_dir(self, name: str) -> Path:
        return self.run_dir / name

    def tags(self) -> dict[str, str]:
        """Tags every tracked run of this refresh carries."""
        return {"refresh_key": self.key, "catalog": str(self.req.catalog)}


@dataclass
class RefreshOutcome:
    run_dir: Path
    results: dict[str, dict[str, Any]]

    @property
    def decision(self) -> dict[str, Any] | None:
        return self.results.get("gate")

    @property
    def published(self) -> bool:
        return bool(self.results.get("publish", {}).get("published"))


def refresh_key(cfg: MegaclassConfig, req: RefreshRequest, serving: ServingState) -> str:
    """The hash of everything a refresh's result depends on."""
    from megaclass.export.data.catalog import CatalogError, read_catalog
    from megaclass.export.lifecycle.catalog_diff import catalog_fingerprint

    try:
        cat_fp = catalog_fingerprint(read_catalog(req.catalog))
    except (CatalogError, OSError) as exc:
        raise RefreshError(f"catalogue {req.catalog}: {exc}") from exc
    encoder_sha = artifacts.sha256_file(req.encoder) if req.encoder else None
    ckpt_sha = artifacts.sha256_file(req.checkpoint) if req.checkpoint else None
    return config_hash(
        cat_fp, str(Path(req.repository).resolve()), serving.retriever_version, serving.index_fingerprint,
        serving.encoder_sha256, encoder_sha, ckpt_sha, req.force_retrain, cfg.refresh, cfg.gate, cfg.index,
        cfg.train, cfg.export,
    )  # fmt: skip


def run_refresh(cfg: MegaclassConfig, req: RefreshRequest, until: str = "publish") -> RefreshOutcome:
    """Run the steps up to `until`, skipping finished ones; see the module docstring."""
    from megaclass.export.lifecycle.refresh_steps import STEP_FUNCTIONS

    req = RefreshRequest(**{**asdict(req), "repository": Path(req.repository), "catalog": Path(req.catalog)})
    serving = serving_state(req.repository)
    key = refresh_key(cfg, req, serving)
    run_dir = Path(cfg.work_dir) / "refresh" / key
    ctx = RefreshContext(cfg, req, serving, run_dir, key)
    console.print(
        f"refresh {key}: serving retriever v{serving.retriever_version} ({serving.index_fingerprint}), "
        f"encoder v{serving.encoder_version}; catalogue {req.catalog}"
    )
    for step in steps_until(until):
        directory = ctx.step_dir(step.name)
        if artifacts.is_done(directory):
            ctx.results[step.name] = artifacts.read_done(directory)
            console.print(f"[dim]{step.name}: done before, skipped[/dim]")
            continue
        artifacts.start_stage(directory)
        console.rule(f"[bold]{step.name}[/bold]: {step.summary}")
        result = STEP_FUNCTIONS[step.name](ctx)
        artifacts.mark_done(directory, result)
        ctx.results[step.name] = result
        console.print(result.get("summary", ""))
    return RefreshOutcome(run_dir, ctx.results)
