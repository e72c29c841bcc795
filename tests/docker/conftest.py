"""Shared pieces of the docker/ tests: paths, the real validators, a tiny model repository."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def require(condition: bool, what: str) -> None:
    """Skip when a tool is missing on a developer's machine; fail in CI, where `make setup` installs it."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI runs `make setup`, which installs it)")
    pytest.skip(what)


def nginx_available() -> bool:
    return bool(shutil.which("nginx") or Path("/usr/sbin/nginx").exists())


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> Path:
    """The integration tests' tiny real repository (projection encoder, 40 classes), built once."""
    from megaclass.export.repository.tiny import build_tiny_repository
    from megaclass.python_backend.serving.config import ModelServingConfig, ServingConfig

    root = tmp_path_factory.mktemp("docker-tiny")
    small = ModelServingConfig(max_batch_size=16, preferred_batch_sizes=(8, 16), max_queue_delay_us=1000)
    repo, _, _ = build_tiny_repository(root, ServingConfig(encoder=small, retriever=small, default_top_k=5))
    return repo
