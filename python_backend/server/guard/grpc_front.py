"""The front's gRPC side: a grpc.aio generic handler that parses each ModelInferRequest, checks it
(rules.py) and forwards the original bytes unchanged; every other method is forwarded as is (Triton
itself asks for the admin key on the restricted ones)."""

from __future__ import annotations

import logging

import aiohttp
import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from megaclass.python_backend.server.guard.rules import Invalid, check_grpc_infer
from megaclass.python_backend.server.guard.specs import SpecCache
from megaclass.python_backend.serving.config import RequestLimits

LOG = logging.getLogger("megaclass.guard")
SERVICE = "/inference.GRPCInferenceService/"
SERVER_FAILURES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
STREAMING = {"ModelStreamInfer"}  # not served through the front: it would bypass the per-request check


class GrpcFront(grpc.GenericRpcHandler):
    """Forwards the inference service to `upstream_grpc`, checking ModelInfer first."""

    def __init__(self, upstream_grpc: str, upstream_http: str, limits: RequestLimits) -> None:
        options = [
            ("grpc.max_send_message_length", limits.max_request_bytes),
            ("grpc.max_receive_message_length", 1 << 30),
        ]
        self.channel = grpc.aio.insecure_channel(upstream_grpc, options=options)
        self.specs = SpecCache(upstream_http, limits.config_ttl_s)
        self.limits = limits
        self._session: aiohttp.ClientSession | None = None
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = self._handlers.get(details.method)
        if handler is None:  # one handler per method, built once (the client chooses the names: bounded)
            if len(self._handlers) > 64:
                self._handlers.clear()
            handler = self._handlers[details.method] = self._handler(details.method)
        return handler

    def _handler(self, method: str) -> grpc.RpcMethodHandler:
        name = method[len(SERVICE) :] if method.startswith(SERVICE) else ""
        if not name or name in STREAMING or "SharedMemory" in name:  # shared memory: the loopback port
            return grpc.unary_unary_rpc_method_handler(self._refuse)
        call = self.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        check = method.endswith("/ModelInfer")

        async def forward(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if check:
                try:
                    await self._check(raw)
                except (Invalid, DecodeError, ValueError) as exc:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)[:300])
            metadata = [(k, v) for k, v in context.invocation_metadata() or () if not k.startswith(":")]
            try:
                return await call(raw, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in SERVER_FAILURES:  # the server failed a request the front let through
                    LOG.error("upstream answered %s for %s: %s", exc.code().name, method, (exc.details() or "")[:300])
                await context.abort(exc.code(), exc.details() or "")

        return grpc.unary_unary_rpc_method_handler(forward, request_deserializer=None, response_serializer=None)

    async def _check(self, raw: bytes) -> None:
        request = service_pb2.ModelInferRequest.FromString(raw)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        spec = await self.specs.get(self._session, request.model_name[:128], request.model_version or None)
        check_grpc_infer(spec, request, self.limits)

    async def _refuse(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this method is not served on this port")
        return b""

    async def close(self) -> None:
        await self.channel.close()
        if self._session is not None:
            await self._session.close()


async def start_grpc_front(
    host: str, port: int, upstream_grpc: str, upstream_http: str, limits: RequestLimits
) -> tuple[grpc.aio.Server, GrpcFront]:
    """A started grpc.aio server on host:port; keep the returned objects referenced."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limits.max_request_bytes)])
    front = GrpcFront(upstream_grpc, upstream_http, limits)
    server.add_generic_rpc_handlers((front,))
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot bind the gRPC front to {host}:{port}")
    await server.start()
    return server, front
