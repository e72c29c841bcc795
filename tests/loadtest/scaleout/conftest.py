"""Shared pieces of the scale-out tests: the docker/ tests' checks and tiny repository, nginx on this machine."""

from __future__ import annotations

from tests.docker.conftest import DOCKER, nginx_available, require, tiny_repo

__all__ = ["DOCKER", "nginx_available", "require", "tiny_repo"]
