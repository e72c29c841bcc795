"""The `gpu-torch` serving target in a real Triton server: the Python-backend PyTorch encoder feeding
the retriever, which searches on the GPU (exact or routed, chosen by size). On a CPU-only machine its
instances are turned into CPU ones (the same model code, outputs handed over through DLPack on the
host); with a GPU the target runs as generated
(encoder output stays on the GPU and reaches the retriever through DLPack)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from megaclass.export.repository.tiny import IMAGE_SIZE, NUM_CLASSES, build_torch_repository, class_patterns
from megaclass.python_backend.index.routed_index import RoutedIndex
from megaclass.python_backend.server.triton_server import free_port, start_server
from megaclass.python_backend.serving.config import ModelServingConfig, ServingConfig
from megaclass.python_backend.serving.encoder_model import load_encoder
from megaclass.python_backend.serving.preprocess import to_model_input

pytestmark = pytest.mark.integration


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _classify(url: str, x: np.ndarray, top_k: int = 3):
    with grpcclient.InferenceServerClient(url) as client:
        inp = grpcclient.InferInput("IMAGE", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        outs = [grpcclient.InferRequestedOutput(n) for n in ("CLASS_IDS", "SCORES", "INDEX_VERSION")]
        res = client.infer("classify", [inp], outputs=outs, parameters={"top_k": top_k})
        return res.as_numpy("CLASS_IDS"), res.as_numpy("SCORES")


def _serve_and_compare(tmp_path, on_gpu: bool) -> None:
    small = ModelServingConfig(max_batch_size=16, preferred_batch_sizes=(8, 16), max_queue_delay_us=2000)
    repo, weights, index_dir = build_torch_repository(
        tmp_path, ServingConfig(encoder=small, retriever=small), on_gpu=on_gpu
    )
    images, ids = class_patterns(NUM_CLASSES, 2, IMAGE_SIZE, seed=3)
    x = to_model_input(images[:12])
    import torch

    with torch.inference_mode():
        want_emb = load_encoder(weights)(torch.from_numpy(x)).numpy()
    want = RoutedIndex.load(index_dir, backend="numpy").search(want_emb, top_k=3)
    server = start_server(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), work_dir=tmp_path / "triton"
    )
    try:
        got_ids, got_scores = _classify(server.grpc_url, x)
        bad = _classify_error(server.grpc_url, np.full_like(x[:2], np.nan))
        direct = _mixed_load(server.grpc_url, x, want_emb)
    finally:
        server.stop()
    np.testing.assert_allclose(got_scores, want.scores, atol=2e-3 if on_gpu else 1e-4)
    assert np.mean(got_ids[:, 0] == want.class_ids[:, 0]) >= (0.9 if on_gpu else 1.0)
    assert "NaN" in bad
    for ids_, scores_ in direct:  # direct calls (host embeddings) batched with classify's (GPU ones on a GPU)
        np.testing.assert_array_equal(ids_, want.class_ids[:4])
        np.testing.assert_allclose(scores_, want.scores[:4], atol=2e-3 if on_gpu else 1e-4)


def _mixed_load(url: str, x: np.ndarray, emb: np.ndarray, rounds: int = 12) -> list:
    """`classify` and direct `retriever` requests at once, so the retriever's dynamic batches mix
    embeddings from the encoder (on the GPU on a GPU server) with embeddings from the client (host)."""
    from concurrent.futures import ThreadPoolExecutor

    def direct() -> list:
        out = []
        with grpcclient.InferenceServerClient(url) as client:
            for _ in range(rounds):
                inp = grpcclient.InferInput("EMBEDDING", [4, emb.shape[1]], "FP32")
                inp.set_data_from_numpy(np.ascontiguousarray(emb[:4]))
                res = client.infer("retriever", [inp], parameters={"top_k": 3})
                out.append((res.as_numpy("CLASS_IDS"), res.as_numpy("SCORES")))
        return out

    with ThreadPoolExecutor(8) as pool:
        classify = [pool.submit(lambda: [_classify(url, x) for _ in range(rounds)]) for _ in range(4)]
        directs = [pool.submit(direct) for _ in range(4)]
        for f in classify:
            f.result()  # raises on any failed request
        return [answer for f in directs for answer in f.result()]


def _classify_error(url: str, x: np.ndarray) -> str:
    from tritonclient.utils import InferenceServerException

    try:
        _classify(url, x)
    except InferenceServerException as exc:
        return str(exc)
    return ""


def test_torch_encoder_target_on_cpu_instances(tmp_path):
    _serve_and_compare(tmp_path, on_gpu=False)


@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU (the encoder output stays on the GPU: DLPack)")
def test_torch_encoder_target_on_the_gpu(tmp_path):
    _serve_and_compare(tmp_path, on_gpu=True)
