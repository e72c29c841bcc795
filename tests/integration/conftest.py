"""A tiny but real stack for integration tests: the real tritonserver on free ports serving
`megaclass.export.repository.tiny`, with the same computation available in-process to check
the answers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from megaclass.export.repository.tiny import (  # noqa: F401 - re-exported for other test packages
    IMAGE_SIZE,
    NUM_CLASSES,
    build_tiny_repository,
    class_patterns,
    projection_encoder,
)
from megaclass.python_backend.server.triton_server import TritonServer, free_port, start_server
from megaclass.python_backend.serving.config import ModelServingConfig, RequestLimits, ServingConfig


@dataclass
class TinyStack:
    server: TritonServer
    repo: Path
    index: object  # RoutedIndex, loaded in-process
    encoder: object  # OnnxEncoder, in-process
    images: np.ndarray  # uint8 [N, S, S]
    class_ids: np.ndarray  # int64 [N]
    serving: ServingConfig


@pytest.fixture(scope="session")
def tiny_stack(tmp_path_factory) -> TinyStack:
    from megaclass.python_backend.index.routed_index import RoutedIndex
    from megaclass.python_backend.serving.encoder_runtime import OnnxEncoder

    root = tmp_path_factory.mktemp("stack")
    small = ModelServingConfig(max_batch_size=16, preferred_batch_sizes=(8, 16), max_queue_delay_us=5000)
    serving = ServingConfig(encoder=small, retriever=small, default_top_k=5, limits=RequestLimits(max_top_k=20))
    repo, onnx_path, index_dir = build_tiny_repository(root, serving)
    images, ids = class_patterns(NUM_CLASSES, 3, IMAGE_SIZE, seed=1)
    server = start_server(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), work_dir=root / "triton"
    )
    try:
        yield TinyStack(server, repo, RoutedIndex.load(index_dir), OnnxEncoder(onnx_path), images, ids, serving)
    finally:
        server.stop()
