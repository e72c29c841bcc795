"""The asyncio variant of `Client`: same arguments, same results, `await`-able calls.

Large inputs are split into server-sized requests that are sent concurrently (at most
`max_in_flight` at once per call); errors, retries and shared memory work as in `Client`.

    async with AsyncClient("127.0.0.1:8001") as client:
        result = await client.classify(["a.png", "b.png"], top_k=3)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from megaclass.clients.client import (
    ImageLike,
    ModelInfo,
    Protocol,
    SearchResults,
    _ShmSlot,
    build_request,
    classify_parameters,
    image_batch,
    max_top_k,
    model_info,
    parse_result,
    search_inputs,
    shm_layout,
    split_rows,
)
from megaclass.clients.errors import MegaclassError, RetryPolicy, catchable, to_megaclass_error
from megaclass.clients.shared_memory import SharedMemoryRegion, SlotLayout

__all__ = ["AsyncClient"]


class AsyncClient:
    """Asyncio client for `classify` (images) and `retriever` (embeddings); use from one event loop."""

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        protocol: Protocol = "grpc",
        *,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        retry: RetryPolicy | None = None,
        shared_memory: bool = False,
        max_in_flight: int = 4,
        classify_model: str = "classify",
        retriever_model: str = "retriever",
    ):
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.protocol, self.url, self.timeout_s = protocol, url, timeout_s
        self.retry = retry or RetryPolicy(retries=retries, backoff_s=backoff_s)
        self.classify_model, self.retriever_model = classify_model, retriever_model
        self.shared_memory, self.max_in_flight = shared_memory, max(1, max_in_flight)
        if protocol == "grpc":
            import tritonclient.grpc as tc
            import tritonclient.grpc.aio as aio

            self._client = aio.InferenceServerClient(url)
        else:
            import tritonclient.http as tc
            import tritonclient.http.aio as aio

            self._client = aio.InferenceServerClient(url, conn_timeout=timeout_s, conn_limit=self.max_in_flight)
        self._tc = tc  # InferInput / InferRequestedOutput are shared with the sync modules
        self._meta: dict[str, ModelInfo] = {}
        self._shm: dict[str, tuple[SharedMemoryRegion, SlotLayout, asyncio.Queue]] = {}
        self._shm_lock: asyncio.Lock | None = None

    async def close(self) -> None:
        """Unregister and remove shared-memory regions, close the connection."""
        for region, _, _ in self._shm.values():
            try:
                await self._client.unregister_system_shared_memory(region.name)
            except catchable():
                pass
            region.close()
        self._shm.clear()
        await self._client.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def is_ready(self) -> bool:
        try:
            return bool(await self._client.is_server_ready())
        except catchable():
            return False

    async def model(self, name: str) -> ModelInfo:
        """Max batch size, input shapes and parameters of a served model, asked once."""
        if name not in self._meta:
            if self.protocol == "grpc":
                call = lambda: self._client.get_model_config(name, as_json=True, client_timeout=self.timeout_s)  # noqa: E731
            else:
                call = lambda: self._client.get_model_config(name)  # noqa: E731
            self._meta[name] = model_info(name, await self._call(call))
        return self._meta[name]

    async def _call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Await fn(); retry with back-off while the server is unavailable; raise MegaclassError."""
        delays = self.retry.delays()
        while True:
            try:
                if self.protocol == "http":  # the aiohttp session's timeout covers connecting only
                    return await asyncio.wait_for(fn(), self.timeout_s)
                return await fn()
            except catchable() as exc:
                error = to_megaclass_error(exc, self.url)
                delay = next(delays, None) if self.retry.should_retry(error) else None
                if delay is None:
                    raise error from exc
                await asyncio.sleep(delay)

    async def _slots(self, model: ModelInfo, input_name: str) -> tuple[SharedMemoryRegion, SlotLayout, asyncio.Queue]:
        self._shm_lock = self._shm_lock or asyncio.Lock()
        async with self._shm_lock:
            if model.name not in self._shm:
                layout = shm_layout(model, input_name, max_top_k(await self.model(self.retriever_model)))
                region = SharedMemoryRegion(layout.slot_bytes * self.max_in_flight)
                try:
                    await self._call(
                        lambda: self._client.register_system_shared_memory(region.name, region.key, region.byte_size)
                    )
                except MegaclassError:
                    region.close()
                    raise
                free: asyncio.Queue = asyncio.Queue()
                for i in range(self.max_in_flight):
                    free.put_nowait(i)
                self._shm[model.name] = (region, layout, free)
            return self._shm[model.name]

    async def _infer(
        self, model: ModelInfo, inputs: dict[str, np.ndarray], parameters: dict | None = None
    ) -> SearchResults:
        kwargs: dict[str, Any] = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        if parameters:
            kwargs["parameters"] = parameters
        if not self.shared_memory:
            infer_inputs, outputs = build_request(self._tc, inputs)
            res = await self._call(lambda: self._client.infer(model.name, infer_inputs, outputs=outputs, **kwargs))
            return parse_result(res)
        region, layout, free = await self._slots(model, next(iter(inputs)))
        index = await free.get()
        try:
            slot = _ShmSlot(region, layout, index)
            infer_inputs, outputs = build_request(self._tc, inputs, slot)
            res = await self._call(lambda: self._client.infer(model.name, infer_inputs, outputs=outputs, **kwargs))
            return parse_result(res, slot)
        finally:
            free.put_nowait(index)

    async def _gather(
        self, model: ModelInfo, chunks: list[dict[str, np.ndarray]], parameters: dict | None = None
    ) -> SearchResults:
        gate = asyncio.Semaphore(self.max_in_flight)

        async def one(chunk: dict[str, np.ndarray]) -> SearchResults:
            async with gate:
                return await self._infer(model, chunk, parameters)

        return SearchResults.concat(await asyncio.gather(*(one(c) for c in chunks)))

    async def classify(
        self,
        images: np.ndarray | ImageLike | Sequence[ImageLike],
        top_k: int | None = None,
        threshold: float | None = None,
    ) -> SearchResults:
        """Classify images: a uint8 `[N, S, S]` / float `[N, 1, S, S]` array, PIL images or paths."""
        meta = await self.model(self.classify_model)
        (input_name, dims), *_ = meta.inputs.items()
        batch = image_batch(images, dims)
        params = classify_parameters(top_k, threshold)
        return await self._gather(meta, split_rows({input_name: batch}, meta.max_batch_size), params)

    async def search(
        self, embeddings: np.ndarray, top_k: int | None = None, threshold: float | None = None
    ) -> SearchResults:
        """Nearest classes for embeddings (float32 `[N, D]`) from the retriever."""
        meta = await self.model(self.retriever_model)
        inputs = search_inputs(embeddings, meta.inputs.get("EMBEDDING", [None])[-1], top_k, threshold)
        return await self._gather(meta, split_rows(inputs, meta.max_batch_size))
