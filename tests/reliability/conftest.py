"""The reliability suite's stack and tools: a tiny real stack (the integration tests' builder)
served with the model-control API restricted by an admin key and the stub watchdog on, good
traffic that runs beside the bad requests, and memory sampling of the server's processes.

Every loop here is bounded in count and in time; everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from megaclass.export.repository.tiny import (  # noqa: F401 - used by the suite
    EMBEDDING_DIM,
    IMAGE_SIZE,
    NUM_CLASSES,
    build_tiny_repository,
    class_patterns,
)
from megaclass.python_backend.server.triton_server import TritonServer, free_port, start_server
from megaclass.python_backend.serving.config import ModelServingConfig, RequestLimits, ServingConfig

ADMIN_KEY = "reliability-admin-key"
MODELS = ["encoder", "retriever", "classify", "decode", "classify_encoded"]
MAX_BATCH = 16


@dataclass
class Stack:
    server: TritonServer
    root: Path
    repo: Path
    onnx: Path
    index_dir: Path
    index: object  # RoutedIndex, in-process
    encoder: object  # OnnxEncoder, in-process
    images: np.ndarray  # uint8 [N, S, S]
    class_ids: np.ndarray
    admin_key: str = ADMIN_KEY
    tmpfs: Path | None = None  # the mount point holding `repo`, when the repository is on a tmpfs

    def url(self, protocol: str) -> str:
        return self.server.grpc_url if protocol == "grpc" else self.server.http_url


def serving_config() -> ServingConfig:
    small = ModelServingConfig(max_batch_size=MAX_BATCH, preferred_batch_sizes=(8, 16), max_queue_delay_us=2000)
    # The ensemble: these tests kill, stall and overload the encoder and retriever stubs behind
    # `classify` (the one-hop form is checked against it in tests/integration/test_one_hop_classify.py).
    return ServingConfig(
        encoder=small, retriever=small, default_top_k=5, limits=RequestLimits(max_top_k=20), classify_form="ensemble"
    )


def start_stack(root: Path, repo_dir: Path | None = None, **server_kwargs) -> Stack:
    """Build the tiny repository under `root` (or into `repo_dir`) and serve it in explicit mode."""
    from megaclass.python_backend.index.routed_index import RoutedIndex
    from megaclass.python_backend.serving.encoder_runtime import OnnxEncoder

    repo, onnx_path, index_dir = build_tiny_repository(root, serving_config())
    if repo_dir is not None:
        import shutil

        shutil.copytree(repo, repo_dir, dirs_exist_ok=True)
        repo = repo_dir
    kwargs = dict(
        http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), work_dir=root / "triton",
        explicit=True, models=MODELS, admin_key=ADMIN_KEY, ready_timeout_s=120,
    )  # fmt: skip
    server = start_server(repo, **{**kwargs, **server_kwargs})
    images, ids = class_patterns(NUM_CLASSES, 2, IMAGE_SIZE, seed=1)
    return Stack(
        server, root, repo, onnx_path, index_dir, RoutedIndex.load(index_dir), OnnxEncoder(onnx_path), images, ids
    )


def mount_tmpfs(path: Path, size_mb: int) -> bool:
    """Mount a tmpfs of `size_mb` at `path` (root only); False where that is not allowed."""
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], capture_output=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def umount(path: Path) -> None:
    import subprocess

    if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    """The stack for the whole suite. Its repository lives on a small tmpfs of its own where the
    machine lets root mount one (`stack.tmpfs`), so publishing can meet a full or read-only disk."""
    root = tmp_path_factory.mktemp("reliability")
    tmpfs = root / "fs" if mount_tmpfs(root / "fs", 64) else None
    s = start_stack(root, repo_dir=tmpfs / "repo" if tmpfs else None)
    s.tmpfs = tmpfs
    try:
        yield s
    finally:
        # Triton 2.51 never releases a model instance whose stub died (test_faults.py kills some):
        # on SIGTERM it waits its whole 30 s exit timeout for them. A few seconds are enough here.
        s.server.stop(timeout=5)
        if tmpfs:
            umount(tmpfs)


# --- requests -----------------------------------------------------------------------------------


def client_module(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as tc
    else:
        import tritonclient.http as tc
    return tc


def raw_infer(
    stack: Stack,
    protocol: str,
    model: str,
    inputs: Sequence[tuple[str, np.ndarray, str]],
    parameters: dict | None = None,
    version: str = "",
    timeout_s: float = 30.0,
):
    """One inference with tritonclient, no client-side checks; raises InferenceServerException."""
    tc = client_module(protocol)
    client = tc.InferenceServerClient(
        stack.url(protocol), **({"network_timeout": timeout_s} if protocol == "http" else {})
    )
    try:
        xs = []
        for name, array, dtype in inputs:
            x = tc.InferInput(name, list(array.shape), dtype)
            x.set_data_from_numpy(array)
            xs.append(x)
        kwargs = {"client_timeout": timeout_s} if protocol == "grpc" else {}
        return client.infer(model, xs, model_version=version, parameters=parameters, **kwargs)
    finally:
        client.close()


def png_bytes(image: np.ndarray, fmt: str = "PNG", **save_options) -> bytes:
    """The image encoded as a file (PNG by default; any format Pillow writes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt, **save_options)
    return buf.getvalue()


def model_input(images: np.ndarray) -> np.ndarray:
    from megaclass.python_backend.serving.preprocess import to_model_input

    return to_model_input(images)


# --- good traffic beside the bad requests ---------------------------------------------------------


@dataclass
class GoodTraffic:
    """Threads sending good requests (classify over gRPC and HTTP, retriever over gRPC) and
    checking every answer against the in-process computation, until stopped or `max_s` passed."""

    stack: Stack
    max_s: float = 600.0
    errors: list[str] = field(default_factory=list)
    error_times: list[float] = field(default_factory=list)  # when each error came back (monotonic)
    done: list[float] = field(default_factory=list)  # completion times (monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> GoodTraffic:
        images = self.stack.images[:4]
        want = self.stack.index.search(self.stack.encoder.embed(model_input(images)), top_k=5).class_ids
        emb = self.stack.encoder.embed(model_input(images))
        jobs = [
            ("grpc", "classify", [("IMAGE", model_input(images), "FP32")]),
            ("http", "classify", [("IMAGE", model_input(images), "FP32")]),
            ("grpc", "retriever", [("EMBEDDING", emb, "FP32")]),
        ]
        for protocol, model, inputs in jobs:
            t = threading.Thread(target=self._loop, args=(protocol, model, inputs, want), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _loop(self, protocol, model, inputs, want) -> None:
        deadline = time.monotonic() + self.max_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                got = raw_infer(self.stack, protocol, model, inputs).as_numpy("CLASS_IDS")
                # the answers may tie on near-equal scores; the top class must match
                if not np.array_equal(got[:, 0], want[:, 0]):
                    self.errors.append(f"{protocol} {model}: wrong answer {got[:, 0]} != {want[:, 0]}")
            except Exception as exc:
                self.errors.append(f"{protocol} {model}: {type(exc).__name__}: {exc}")
                self.error_times.append(time.monotonic())
            self.done.append(time.monotonic())

    def settle(self, after: float, count: int = 3, timeout_s: float = 20.0) -> None:
        """Wait until `count` good requests completed after time `after`."""
        deadline = time.monotonic() + timeout_s
        while sum(t > after for t in self.done) < count and time.monotonic() < deadline:
            time.sleep(0.02)

    def assert_healthy(self, since: float) -> None:
        """Good requests completed after `since`, and none failed."""
        self.settle(since)
        assert self.errors == [], self.errors[:5]
        assert sum(t > since for t in self.done) >= 3, "good traffic stalled"

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


@pytest.fixture(scope="module")
def good_traffic(stack):
    traffic = GoodTraffic(stack).start()
    try:
        yield traffic
    finally:
        traffic.stop()
    assert traffic.errors == [], traffic.errors[:5]


# --- memory of the server's processes -------------------------------------------------------------


def process_rss(server: TritonServer) -> dict[str, int]:
    """RSS in bytes of tritonserver and of each live Python-backend stub (keyed by instance name)."""
    import psutil

    from megaclass.python_backend.server.watchdog import stub_identity

    main = psutil.Process(server.process.pid)
    out = {"tritonserver": main.memory_info().rss}
    for child in main.children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            ident = stub_identity(child.cmdline())
            if ident:
                out[ident[1]] = child.memory_info().rss
        except psutil.Error:
            continue
    return out


def stub_pid(server: TritonServer, model: str) -> int:
    """The pid of a live Python-backend stub of `model`."""
    import psutil

    from megaclass.python_backend.server.watchdog import stub_identity

    for child in psutil.Process(server.process.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and (ident := stub_identity(child.cmdline())):
                if ident[0] == model:
                    return child.pid
        except psutil.Error:
            continue
    raise LookupError(f"no live stub of {model}")
