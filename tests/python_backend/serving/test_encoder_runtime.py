"""The PyTorch encoder runtime: warm-up at load, CUDA graphs for the preferred batch sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megaclass.python_backend.serving.encoder_model import GlyphEncoder, save_encoder
from megaclass.python_backend.serving.encoder_runtime import TorchEncoder


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("enc") / "encoder.pt"
    return save_encoder(GlyphEncoder(embedding_dim=16, width=8).eval(), path, image_size=16)


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(n).random((n, 1, 16, 16), dtype=np.float32)


def test_on_the_cpu_warm_up_runs_and_no_graph_is_captured(weights):
    enc = TorchEncoder(weights, "cpu", fp16=True, graph_batch_sizes=(4, 8))
    assert enc.dtype == torch.float32 and enc.graph_batch_sizes == ()  # FP16 and graphs: CUDA only
    enc.warm_up((1, 16, 16), (1, 4))
    assert enc.graphs == {}
    out = enc.embed(_images(3))
    assert out.shape == (3, 16) and out.dtype == torch.float32
    np.testing.assert_allclose(torch.linalg.norm(out, dim=1).numpy(), 1.0, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CUDA graphs)")
@pytest.mark.parametrize("fp16", [False, True])
def test_cuda_graphs_answer_as_the_eager_model(weights, fp16):
    enc = TorchEncoder(weights, "cuda", fp16=fp16, graph_batch_sizes=(4, 8))
    eager = TorchEncoder(weights, "cuda", fp16=fp16)
    enc.warm_up((1, 16, 16))
    assert sorted(enc.graphs) == [4, 8]
    for n in (1, 3, 4, 8, 11):  # padded to 4 or 8; 11 runs eagerly
        got, want = enc.embed(_images(n)), eager.embed(_images(n))
        assert got.shape == (n, 16) and got.is_cuda
        torch.testing.assert_close(got, want, atol=2e-3 if fp16 else 1e-5, rtol=0)
    first = enc.embed(_images(3))
    enc.embed(_images(4))  # the next replay must not change an answer already handed out
    torch.testing.assert_close(first, eager.embed(_images(3)), atol=2e-3 if fp16 else 1e-5, rtol=0)
