"""The client library against the real server: asyncio, shared memory, retries, timeouts, inputs."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from megaclass.clients.async_client import AsyncClient
from megaclass.clients.client import Client, MegaclassError, RetryPolicy
from megaclass.clients.errors import INVALID, TIMEOUT, UNAVAILABLE
from megaclass.clients.shared_memory import SHM_DIR
from megaclass.python_backend.server.triton_server import free_port

pytestmark = pytest.mark.integration
PROTOCOLS = ["grpc", "http"]


def _url(stack, protocol: str) -> str:
    return stack.server.grpc_url if protocol == "grpc" else stack.server.http_url


def _our_regions() -> set[str]:
    return {p.name for p in SHM_DIR.glob("megaclass-*")}


@pytest.fixture(scope="module")
def reference(tiny_stack):
    """Answers of the plain sync gRPC client (checked against in-process search in test_serving)."""
    with Client(tiny_stack.server.grpc_url) as c:
        return c.classify(tiny_stack.images[:40], top_k=5)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_client_matches_sync(tiny_stack, reference, protocol):
    async def run():
        async with AsyncClient(_url(tiny_stack, protocol), protocol, max_in_flight=3) as client:
            whole = await client.classify(tiny_stack.images[:40], top_k=5)  # 40 > max batch 16: 3 requests
            parts = await asyncio.gather(*(client.classify(tiny_stack.images[i : i + 8]) for i in range(0, 40, 8)))
            emb = tiny_stack.encoder.embed(tiny_stack.images[:4, None].astype(np.float32) / 255)
            found = await client.search(emb, top_k=2)
            return whole, parts, found

    whole, parts, found = asyncio.run(run())
    np.testing.assert_array_equal(whole.class_ids, reference.class_ids)
    np.testing.assert_allclose(whole.scores, reference.scores, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([p.class_ids for p in parts]), reference.class_ids)
    assert found.class_ids.shape == (4, 2)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shared_memory_gives_the_same_answers_and_cleans_up(tiny_stack, reference, protocol):
    before = _our_regions()
    with Client(_url(tiny_stack, protocol), protocol, shared_memory=True, max_in_flight=2) as client:
        got = client.classify(tiny_stack.images[:40], top_k=5)
        assert len(_our_regions() - before) == 1  # one region for the classify model
        status = client._client.get_system_shared_memory_status()
        assert status  # registered with the server
        with cf.ThreadPoolExecutor(4) as pool:  # more threads than slots: they wait their turn
            answers = list(pool.map(lambda i: client.classify(tiny_stack.images[i : i + 5]), range(0, 40, 5)))
    np.testing.assert_array_equal(got.class_ids, reference.class_ids)
    np.testing.assert_allclose(got.scores, reference.scores, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([a.class_ids for a in answers]), reference.class_ids)
    assert got.labels[0, 0].startswith("class-") and got.index_versions[0].startswith("1:")
    assert _our_regions() == before


def test_async_shared_memory(tiny_stack, reference):
    async def run():
        async with AsyncClient(tiny_stack.server.grpc_url, shared_memory=True, max_in_flight=2) as client:
            return await asyncio.gather(*(client.classify(tiny_stack.images[i : i + 10]) for i in range(0, 40, 10)))

    before = _our_regions()
    parts = asyncio.run(run())
    np.testing.assert_array_equal(np.concatenate([p.class_ids for p in parts]), reference.class_ids)
    assert _our_regions() == before


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_top_k_and_threshold_reach_the_retriever_through_the_ensemble(tiny_stack, protocol):
    with Client(_url(tiny_stack, protocol), protocol) as client:
        wide = client.classify(tiny_stack.images[:3], top_k=8)  # more than the server default of 5
        strict = client.classify(tiny_stack.images[:3], top_k=3, threshold=0.999999)
    assert wide.class_ids.shape == (3, 8)
    assert (strict.class_ids == -1).all() and (strict.labels == "<unknown>").all()


def test_images_as_paths_pil_and_arrays_agree(tiny_stack, tmp_path):
    imgs = tiny_stack.images[:3]
    paths = []
    for i, img in enumerate(imgs):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    with Client(tiny_stack.server.grpc_url) as client:
        from_array = client.classify(imgs)
        from_paths = client.classify(paths)
        from_pil = client.classify([Image.open(p) for p in paths])
    np.testing.assert_array_equal(from_paths.class_ids, from_array.class_ids)
    np.testing.assert_array_equal(from_pil.class_ids, from_array.class_ids)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_server_rejection_is_one_error_type_with_the_servers_message(tiny_stack, protocol):
    with Client(_url(tiny_stack, protocol), protocol, retries=5) as client:
        start = time.monotonic()
        with pytest.raises(MegaclassError, match="top_k must be between 1 and") as info:
            client.classify(tiny_stack.images[:2], top_k=10_000)
    assert info.value.status == INVALID
    assert time.monotonic() - start < 2  # a rejected request is not retried


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unreachable_server_is_retried_with_backoff(protocol):
    policy = RetryPolicy(retries=3, backoff_s=0.1, jitter=0.0)
    url = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    with Client(url, protocol, retry=policy, timeout_s=2) as client, pytest.raises(MegaclassError) as info:
        client.classify(np.zeros((1, 16, 16), np.uint8))
    elapsed = time.monotonic() - start
    assert info.value.status == UNAVAILABLE
    assert 0.7 <= elapsed < 6, elapsed  # waited 0.1 + 0.2 + 0.4 between four attempts

    async def run():
        async with AsyncClient(url, protocol, retry=policy, timeout_s=2) as client:
            await client.search(np.zeros((1, 16), np.float32))

    start = time.monotonic()
    with pytest.raises(MegaclassError) as info:
        asyncio.run(run())
    assert info.value.status == UNAVAILABLE and 0.7 <= time.monotonic() - start < 6


def test_retries_reach_a_server_that_comes_up_late(tiny_stack):
    """A client started before the server: retries bridge the gap (a TCP proxy that opens late)."""
    port = free_port()
    target = (tiny_stack.server.host, tiny_stack.server.http_port)
    opened = threading.Event()

    def proxy():
        time.sleep(0.6)
        with socket.create_server(("127.0.0.1", port)) as srv:
            opened.set()
            srv.settimeout(10)
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                up = socket.create_connection(target)
                for a, b in ((conn, up), (up, conn)):
                    threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=proxy, daemon=True).start()
    policy = RetryPolicy(retries=6, backoff_s=0.2, jitter=0.0)
    with Client(f"127.0.0.1:{port}", "http", retry=policy, timeout_s=5) as client:
        got = client.classify(tiny_stack.images[:2])
    assert opened.is_set() and got.class_ids.shape == (2, 5)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_silent_server_times_out(protocol):
    """A socket that accepts and never answers: the call ends after the timeout, not retried."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.listen(16)
        url = f"127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with Client(url, protocol, timeout_s=0.5, retries=3) as client, pytest.raises(MegaclassError) as info:
            client.search(np.zeros((1, 16), np.float32))
        elapsed = time.monotonic() - start
    assert info.value.status in (TIMEOUT, UNAVAILABLE), info.value
    assert elapsed < 5, elapsed


def test_transport_measurement_covers_every_transport(tiny_stack):
    from megaclass.loadtest.benchmarks.transport_bench import measure_transport, transport_markdown

    urls = {"grpc": tiny_stack.server.grpc_url, "http": tiny_stack.server.http_url}
    points = measure_transport(urls, tiny_stack.images, batch_sizes=(1, 16, 64), calls=5, warmup=1)
    assert {(p.protocol, p.shared_memory, p.batch_size) for p in points} == {
        (proto, shm, b) for proto in urls for shm in (False, True) for b in (1, 16)
    }  # 64 exceeds the tiny stack's max batch and is skipped
    assert all(p.p99_ms >= p.p50_ms > 0 and p.images_per_s > 0 for p in points)
    assert "grpc + shared memory" in transport_markdown(points, "cmd", "machine", "now")
