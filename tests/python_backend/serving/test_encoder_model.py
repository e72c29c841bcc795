"""The glyph encoder: shapes, unit norm, other image sizes, batch independence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megaclass.export.config import TrainConfig
from megaclass.export.enrol.embedding import embed_images
from megaclass.python_backend.serving.encoder_model import ENCODERS, GlyphEncoder, VectorEncoder, build_encoder


@pytest.mark.parametrize("size", [8, 17, 32, 64])
def test_unit_norm_embeddings_for_any_size(size):
    torch.manual_seed(0)
    model = build_encoder(TrainConfig(embedding_dim=24, width=8), size).eval()
    with torch.no_grad():
        y = model(torch.rand(3, 1, size, size))
    assert y.shape == (3, 24)
    torch.testing.assert_close(y.norm(dim=1), torch.ones(3))


def test_deeper_stages():
    shallow = build_encoder(TrainConfig(width=8, convs_per_stage=1), 32)
    deep = build_encoder(TrainConfig(width=8, convs_per_stage=2), 32).eval()
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in e.modules()) for e in (shallow, deep)]
    assert convs == [4, 6] and deep.args["convs_per_stage"] == 2
    with torch.no_grad():
        assert deep(torch.rand(2, 1, 32, 32)).shape == (2, 128)


def test_too_small_image_is_refused():
    with pytest.raises(ValueError, match="at least 8"):
        build_encoder(TrainConfig(), 4)


def test_config_and_args_round_trip():
    model = build_encoder(TrainConfig(embedding_dim=64, width=16), 32)
    assert isinstance(model, GlyphEncoder) and model.embedding_dim == 64
    again = ENCODERS[type(model).__name__](**model.args)
    assert again.load_state_dict(model.state_dict()) is not None


def test_eval_output_does_not_depend_on_batch_mates():
    torch.manual_seed(0)
    model = build_encoder(TrainConfig(embedding_dim=16, width=8), 32).eval()
    x = torch.rand(6, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[2:3], model(x[2:3]), atol=1e-6, rtol=1e-5)


def test_gradients_reach_every_parameter():
    model = build_encoder(TrainConfig(embedding_dim=16, width=8), 16).train()
    model.forward_unnormalized(torch.rand(4, 1, 16, 16)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_embed_images_matches_model_and_keeps_mode():
    torch.manual_seed(0)
    model = build_encoder(TrainConfig(embedding_dim=16, width=8), 16).train()
    images = np.random.default_rng(0).integers(0, 256, size=(10, 16, 16), dtype=np.uint8)
    emb = embed_images(model, images, batch_size=4)
    assert emb.shape == (10, 16) and emb.dtype == np.float32 and model.training
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(images[:, None].astype(np.float32) / 255))
    np.testing.assert_allclose(emb, want.numpy(), atol=1e-6)
    assert embed_images(model, images[:0]).shape == (0, 16)


def test_vector_encoder():
    model = VectorEncoder(input_dim=12, embedding_dim=8, hidden=32).eval()
    with torch.no_grad():
        y = model(torch.randn(5, 12))
    assert y.shape == (5, 8)
    torch.testing.assert_close(y.norm(dim=1), torch.ones(5))
