"""Images -> embeddings with a trained encoder (batched, eval mode, no gradients)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from megaclass.python_backend.serving.preprocess import to_model_input


def embed_images(model: nn.Module, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """uint8 `[N, S, S]` -> float32 `[N, D]` embeddings, on the model's device."""
    return embed_inputs(model, to_model_input(images) if len(images) else images, batch_size)


def embed_inputs(model: nn.Module, inputs: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Encoder-ready float inputs `[N, ...]` -> float32 `[N, D]` embeddings, on the model's device."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    out = [np.zeros((0, model.embedding_dim), dtype=np.float32)]
    try:
        with torch.no_grad():
            for start in range(0, len(inputs), batch_size):
                x = torch.as_tensor(np.asarray(inputs[start : start + batch_size], dtype=np.float32))
                out.append(model(x.to(param.device)).float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out)
