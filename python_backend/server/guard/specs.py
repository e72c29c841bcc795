"""Model specs for the front, read from tritonserver's own `GET /v2/models/<name>/config` and kept
for `RequestLimits.config_ttl_s`, so a model published or reloaded with other dims is seen."""

from __future__ import annotations

import time

import aiohttp

from megaclass.python_backend.server.guard.rules import Invalid, ModelSpec


class SpecCache:
    """name -> ModelSpec, fetched from the upstream HTTP port on first use and after `ttl_s`."""

    def __init__(self, upstream_http: str, ttl_s: float) -> None:
        self.upstream_http = upstream_http
        self.ttl_s = ttl_s
        self._specs: dict[str, tuple[float, ModelSpec]] = {}

    async def get(self, session: aiohttp.ClientSession, model: str, version: str | None = None) -> ModelSpec:
        key = f"{model}/{version or ''}"
        hit = self._specs.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/config"
        async with session.get(f"http://{self.upstream_http}{path}") as response:
            if response.status != 200:
                raise Invalid(f"model '{model[:64]}' is not available")
            spec = ModelSpec.from_triton_config(await response.json(content_type=None))
        if len(self._specs) > 1024:  # names are the client's: do not let them grow the cache
            self._specs.clear()
        self._specs[key] = (time.monotonic(), spec)
        return spec
