"""The front's HTTP side: an aiohttp reverse proxy that checks every infer body (rules.py) before
Triton's JSON parser sees it, refuses compressed and unbounded bodies, and forwards the rest as is."""

from __future__ import annotations

import logging
import re

import aiohttp
from aiohttp import web

from megaclass.python_backend.server.guard.rules import Invalid, check_http_infer, parse_json
from megaclass.python_backend.server.guard.specs import SpecCache
from megaclass.python_backend.serving.config import RequestLimits

LOG = logging.getLogger("megaclass.guard")
INFER = re.compile(r"^/v2/models/([A-Za-z0-9_.-]{1,128})(?:/versions/(\d{1,9}))?/infer$")
FORWARDED_REQUEST_HEADERS = (
    "content-type",
    "inference-header-content-length",
    "megaclass-admin-key",
    "accept-encoding",
)
FORWARDED_RESPONSE_HEADERS = ("content-type", "inference-header-content-length", "content-encoding")


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _check_infer(request: web.Request, match: re.Match, limits: RequestLimits) -> bytes | web.Response:
    """The body when it passes, else the refusal."""
    if request.headers.get("Content-Encoding", "identity").lower() != "identity":
        return _refuse(415, "compressed request bodies are not accepted: send Content-Encoding identity")
    if request.content_length is None:
        return _refuse(411, "a Content-Length header is required")
    if request.content_length > limits.max_request_bytes:
        return _refuse(413, f"the body is {request.content_length} bytes; the limit is {limits.max_request_bytes}")
    body = await request.read()
    header = request.headers.get("Inference-Header-Content-Length")
    try:
        header_length = None if header is None else int(header)
        spec = await request.app["specs"].get(request.app["session"], match.group(1), match.group(2))
        check_http_infer(spec, body, header_length, limits)
    except (Invalid, ValueError) as exc:
        return _refuse(400, str(exc))
    return body


def make_http_app(upstream_http: str, limits: RequestLimits) -> web.Application:
    """The proxy for Triton's HTTP port at `upstream_http` (host:port)."""

    async def on_startup(app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=512, keepalive_timeout=30)
        app["session"] = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("Accept-Encoding",)
        )
        app["specs"] = SpecCache(upstream_http, limits.config_ttl_s)

    async def on_cleanup(app: web.Application) -> None:
        await app["session"].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        if "sharedmemory" in request.path:  # host memory: local clients use Triton's loopback port
            return _refuse(403, "shared memory is not available on this port; use the server's loopback port")
        match = INFER.match(request.path)
        body: bytes | None = None
        if request.method == "POST" and match:
            checked = await _check_infer(request, match, limits)
            if isinstance(checked, web.Response):
                return checked
            body = checked
        elif request.method == "POST":  # repository, shared memory, trace, logging: small admin bodies
            if "chunked" in request.headers.get("Transfer-Encoding", "").lower():  # no length: empty is fine
                return _refuse(411, "admin request bodies need a Content-Length")
            if (request.content_length or 0) > 1 << 20:
                return _refuse(413, "admin request bodies are limited to 1 MiB")
            if request.headers.get("Content-Encoding", "identity").lower() != "identity":
                return _refuse(415, "compressed request bodies are not accepted")
            body = await request.read()
            try:
                if body:  # tritonclient sends repository index/load/unload without a body
                    parse_json(body, limits)
            except Invalid as exc:
                return _refuse(400, str(exc))
        elif request.method not in ("GET", "HEAD"):
            return _refuse(405, f"{request.method} is not served")
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_REQUEST_HEADERS}
        url = f"http://{upstream_http}{request.path_qs}"
        try:
            async with request.app["session"].request(request.method, url, data=body, headers=headers) as reply:
                payload = await reply.read()
                if reply.status >= 500:  # the server failed a request the front let through: worth a look
                    LOG.error("upstream answered %d for %s: %s", reply.status, request.path, payload[:300])
                out = {k: v for k, v in reply.headers.items() if k.lower() in FORWARDED_RESPONSE_HEADERS}
                return web.Response(body=payload, status=reply.status, headers=out)
        except aiohttp.ClientError as exc:
            LOG.error("upstream %s failed for %s: %s", upstream_http, request.path, exc)
            return _refuse(502, "the inference server did not answer; try again")

    app = web.Application(client_max_size=limits.max_request_bytes)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def make_metrics_app(upstream_metrics: str) -> web.Application:
    """Prometheus's port: GET /metrics forwarded, nothing else."""

    async def metrics(request: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as session, session.get(f"http://{upstream_metrics}/metrics") as reply:
            return web.Response(body=await reply.read(), status=reply.status, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app
