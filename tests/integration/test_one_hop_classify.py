"""The one-hop `classify` (encoder and index in one Python-backend model) answers exactly as the
encoder -> retriever ensemble does: two real servers on the same encoder and index."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses

import numpy as np
import pytest

from megaclass.clients.client import Client
from megaclass.export.config import ExportConfig
from megaclass.export.repository.generate import ModelShapes, build_repository, is_one_hop, parse_config
from megaclass.export.repository.tiny import EMBEDDING_DIM, IMAGE_SIZE
from megaclass.python_backend.server.triton_server import free_port, start_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ensemble_server(tiny_stack, tmp_path_factory):
    """The tiny stack's encoder and index served with `classify` as the ensemble."""
    root = tmp_path_factory.mktemp("ensemble")
    serving = dataclasses.replace(tiny_stack.serving, classify_form="ensemble")
    onnx_path = tiny_stack.repo / "encoder" / "1" / "encoder.onnx"
    index_dir = tiny_stack.repo / "retriever" / "1" / "index"
    repo = root / "repo"
    build_repository(repo, onnx_path, index_dir, ModelShapes(IMAGE_SIZE, EMBEDDING_DIM), serving, ExportConfig())
    assert parse_config((repo / "classify" / "config.pbtxt").read_text()).platform == "ensemble"
    server = start_server(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), work_dir=root / "triton"
    )
    try:
        yield server
    finally:
        server.stop()


def _classify(url: str, protocol: str, images: np.ndarray, **options):
    with Client(url, protocol) as client:
        return client.classify(images, **options)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("options", [{}, {"top_k": 1}, {"top_k": 20}, {"top_k": 5, "threshold": 0.9}])
def test_one_hop_and_ensemble_give_identical_answers(tiny_stack, ensemble_server, protocol, options):
    assert is_one_hop(tiny_stack.repo)  # the cpu target's default form
    one_hop_url = tiny_stack.server.grpc_url if protocol == "grpc" else tiny_stack.server.http_url
    ensemble_url = ensemble_server.grpc_url if protocol == "grpc" else ensemble_server.http_url
    images = tiny_stack.images[:30]
    got = _classify(one_hop_url, protocol, images, **options)
    want = _classify(ensemble_url, protocol, images, **options)
    np.testing.assert_array_equal(got.class_ids, want.class_ids)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=1e-6)
    assert list(got.index_versions) == list(want.index_versions)


def test_one_hop_answers_do_not_depend_on_batch_mates(tiny_stack):
    """Concurrent requests with different top_k (batched together by Triton) get their own answers."""
    images = tiny_stack.images[:8]
    alone = {k: _classify(tiny_stack.server.grpc_url, "grpc", images, top_k=k) for k in (2, 20)}
    with cf.ThreadPoolExecutor(8) as pool:
        mixed = list(
            pool.map(
                lambda i: (i % 2, _classify(tiny_stack.server.grpc_url, "grpc", images, top_k=(2, 20)[i % 2])),
                range(16),
            )
        )
    for which, got in mixed:
        want = alone[(2, 20)[which]]
        np.testing.assert_array_equal(got.class_ids, want.class_ids)
        np.testing.assert_array_equal(got.scores, want.scores)
