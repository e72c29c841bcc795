"""Images -> embeddings with a trained encoder (batched, eval mode, no gradients)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .preprocess import to_model_input


def embed_images(model: nn.Module, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """uint8 `[N, S, S]` -> float32 `[N, D]` embeddings, on the model's device."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                x = torch.from_numpy(to_model_input(images[start : start + batch_size])).to(param.device)
                out.append(model(x).float().cpu().numpy())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, model.embedding_dim), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)
