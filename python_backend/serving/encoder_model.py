"""The glyph encoder: a small CNN mapping a 1×S×S image to an L2-normalised embedding.

A stem conv (width w) and two stages (2w, 4w) of `convs_per_stage` conv-bn-relu blocks, each
followed by a 2×2 max pool, one more 4w conv at S/8, then global average and max pooling
concatenated and a linear head. It works for any S >= 8, trains on a laptop CPU, and exports
to ONNX as Conv (BatchNorm folded), Relu, MaxPool, ReduceMean/ReduceMax, Gemm and an L2
normalisation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class GlyphEncoder(nn.Module):
    """`[B, 1, S, S]` float in [0, 1] -> `[B, embedding_dim]` with unit L2 norm."""

    def __init__(
        self, embedding_dim: int = 128, width: int = 32, in_channels: int = 1, convs_per_stage: int = 1
    ) -> None:
        super().__init__()
        self.args: dict[str, Any] = {
            "embedding_dim": embedding_dim,
            "width": width,
            "in_channels": in_channels,
            "convs_per_stage": convs_per_stage,
        }
        w = width
        layers = [*_block(in_channels, w), nn.MaxPool2d(2)]
        for c_in, c_out in ((w, 2 * w), (2 * w, 4 * w)):
            for i in range(convs_per_stage):
                layers += _block(c_in if i == 0 else c_out, c_out)
            layers.append(nn.MaxPool2d(2))
        layers += _block(4 * w, 4 * w)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(8 * w, embedding_dim)
        self.embedding_dim = embedding_dim

    def forward_unnormalized(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding before L2 normalisation (what a plain softmax head reads)."""
        h = self.features(x)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.forward_unnormalized(x), dim=1)


class EncoderArchitecture(Protocol):
    """What `build_encoder` reads: the architecture's fields (the training config has them)."""

    @property
    def embedding_dim(self) -> int: ...

    @property
    def width(self) -> int: ...

    @property
    def convs_per_stage(self) -> int: ...


def build_encoder(cfg: EncoderArchitecture, image_size: int) -> GlyphEncoder:
    """The encoder with `cfg`'s architecture for `image_size`×`image_size` inputs."""
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 (three 2×2 pools), got {image_size}")
    return GlyphEncoder(embedding_dim=cfg.embedding_dim, width=cfg.width, convs_per_stage=cfg.convs_per_stage)


class VectorEncoder(nn.Module):
    """`[B, input_dim]` float -> `[B, embedding_dim]` unit-norm: an MLP for vector inputs."""

    def __init__(self, input_dim: int, embedding_dim: int = 128, hidden: int = 256) -> None:
        super().__init__()
        self.args: dict[str, Any] = {"input_dim": input_dim, "embedding_dim": embedding_dim, "hidden": hidden}
        self.body = nn.Sequential(
            nn.Linear(input_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, embedding_dim),
        )
        self.embedding_dim = embedding_dim

    def forward_unnormalized(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding before L2 normalisation."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.body(x), dim=1)


# Encoder classes by name, so a checkpoint can say which one to rebuild.
ENCODERS: dict[str, type[nn.Module]] = {"GlyphEncoder": GlyphEncoder, "VectorEncoder": VectorEncoder}


def save_encoder(model: nn.Module, path: Path, **meta: Any) -> Path:
    """Write a slim encoder file (class name, constructor args, weights, `meta`); atomic."""
    blob = {"model_class": type(model).__name__, "model_args": dict(model.args), "state_dict": model.state_dict()}
    blob.update(meta)
    return atomic_save(blob, Path(path))


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The encoder stored in a checkpoint or `save_encoder` file, in eval mode (weights_only load)."""
    blob = torch.load(path, map_location=map_location, weights_only=True)
    cls = ENCODERS[blob["model_class"]]
    model = cls(**blob["model_args"])
    model.load_state_dict(blob["state_dict"])
    return model.eval()


def atomic_save(obj: Any, path: Path) -> Path:
    """torch.save to a temporary file, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path
