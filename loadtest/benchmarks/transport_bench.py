"""Shared-memory transport against plain gRPC and HTTP: the same `Client.classify` calls, one
after another, with the tensors in the request or in Triton system shared memory.

Sequential calls (concurrency 1) isolate what the transport costs per call; the batch sizes
span a single 4 KiB image to a full server batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from megaclass.clients.client import Client
from megaclass.loadtest.reporting import Heading, Paragraph, Table, format_ms, to_markdown


@dataclass(frozen=True)
class TransportPoint:
    """Sequential calls of one transport at one batch size."""

    protocol: str
    shared_memory: bool
    batch_size: int
    calls: int
    mean_ms: float
    p50_ms: float
    p99_ms: float
    images_per_s: float
    request_bytes: int  # tensor bytes per call

    @property
    def transport(self) -> str:
        return f"{self.protocol}{' + shared memory' if self.shared_memory else ''}"


def measure_transport(
    urls: dict[str, str],
    images: np.ndarray,
    batch_sizes: Sequence[int] = (1, 16, 64),
    calls: int = 200,
    warmup: int = 10,
) -> list[TransportPoint]:
    """Time `calls` sequential classify calls per (protocol, shared memory on/off, batch size).

    `urls` maps "grpc" / "http" to the server's address; `images` are uint8 `[N, S, S]`.
    """
    points = []
    for protocol, url in urls.items():
        for shm in (False, True):
            with Client(url, protocol, shared_memory=shm, retries=0) as client:
                limit = client.model(client.classify_model).max_batch_size
                for b in batch_sizes:
                    if b > limit:
                        continue
                    batch = images[np.arange(b) % len(images)]
                    for _ in range(warmup):
                        client.classify(batch)
                    times = np.empty(calls)
                    for i in range(calls):
                        t = time.perf_counter()
                        client.classify(batch)
                        times[i] = time.perf_counter() - t
                    ms = times * 1e3
                    points.append(
                        TransportPoint(
                            protocol,
                            shm,
                            b,
                            calls,
                            float(ms.mean()),
                            float(np.percentile(ms, 50)),
                            float(np.percentile(ms, 99)),
                            b * calls / float(times.sum()),
                            b * int(np.prod(images.shape[1:])) * 4,
                        )  # fmt: skip
                    )
    return points


def transport_markdown(points: Sequence[TransportPoint], command: str, machine: str, started: str) -> str:
    """The docs/benchmarks.md section: mean and percentiles per transport and batch size."""
    base = {(p.protocol, p.batch_size): p for p in points if not p.shared_memory}
    rows = []
    for p in sorted(points, key=lambda p: (p.batch_size, p.protocol, p.shared_memory)):
        ref = base.get((p.protocol, p.batch_size))
        change = f"{100 * (p.mean_ms / ref.mean_ms - 1):+.0f} %" if p.shared_memory and ref else "–"
        rows.append([
            p.transport, str(p.batch_size), f"{p.request_bytes / 1024:.0f} KiB", format_ms(p.mean_ms), format_ms(p.p50_ms),
            format_ms(p.p99_ms), f"{p.images_per_s:.0f}", change,
        ])  # fmt: skip
    return to_markdown([
        Heading("Client transport: system shared memory vs plain gRPC and HTTP", 2),
        Paragraph(f"Produced by `{command}` on {started}. Machine: {machine.rstrip('.')}."),
        Paragraph(
            "The same `Client.classify` call, sequentially (one call in flight), with the image tensor and the "
            "numeric outputs in the request and response, or in a Triton system shared-memory region the client "
            "registered once (`Client(..., shared_memory=True)`; labels still travel in the response). The "
            "latency includes the whole call: encoder and retriever as well as the transport, so the difference "
            "between rows of one batch size is what the transport costs. Tensors of a few KiB to a few hundred "
            "KiB are a small part of a call that the encoder dominates, so expect differences within the noise "
            "here; shared memory pays off for large tensors (full-size images, big batches) and saves the "
            "server a copy out of the socket."
        ),
        Table(["transport", "batch", "tensor", "mean ms", "p50 ms", "p99 ms", "images/s", "mean vs no shm"], rows),
    ])  # fmt: skip
