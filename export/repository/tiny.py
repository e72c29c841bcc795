"""A tiny but real serving stack, built in seconds: for tests, load runs and smoke checks.

A fixed random-projection encoder (no training needed) exported to ONNX, class-pattern
images, a routed index over their prototypes, and a model repository with the same models
as the real pipeline. Any ONNX encoder that follows the export contract can be served; this
one keeps class patterns apart because random projections keep distances.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from megaclass.export.config import ExportConfig, IndexConfig, ServingConfig

IMAGE_SIZE = 16
NUM_CLASSES = 40
EMBEDDING_DIM = 16


def class_patterns(num_classes: int, per_class: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images that look alike within a class: a fixed random blob pattern per class plus noise
    drawn from `seed` (different seeds: new samples of the same classes)."""
    base = np.random.default_rng(12345).random((num_classes, size // 4, size // 4)) > 0.5
    rng = np.random.default_rng(seed)
    base = base.repeat(4, axis=1).repeat(4, axis=2).astype(np.float32) * 220
    imgs = base.repeat(per_class, axis=0) + rng.normal(0, 20, (num_classes * per_class, size, size))
    ids = np.repeat(np.arange(1000, 1000 + num_classes), per_class).astype(np.int64)
    return np.clip(imgs, 0, 255).astype(np.uint8), ids


def projection_encoder(size: int, dim: int, seed: int = 0):
    """A stand-in encoder that needs no training: a fixed random projection, L2-normalised.

    Random projections keep distances (Johnson-Lindenstrauss), so class patterns stay
    separable; any ONNX encoder with the export contract can be served.
    """
    import torch
    from torch import nn

    class Projection(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(seed)
            self.proj = nn.Linear(size * size, dim, bias=False)
            self.embedding_dim = dim

        def forward(self, x):
            return nn.functional.normalize(self.proj(x.flatten(1) - 0.5), dim=1)

    return Projection().eval()


def tiny_label(class_id: int) -> str:
    """The label of a tiny-stack class."""
    return f"class-{int(class_id)}-{chr(0x4E00 + int(class_id))}"


def write_tiny_catalog(
    root: Path, num_classes: int, drop: tuple[int, ...] = (), per_class: int = 4, queries: int = 2
) -> Path:
    """An image catalogue (PNG files + catalog.csv) of tiny-stack classes 1000..1000+num_classes-1 without
    `drop`: `per_class` enrolment samples (split=train, seed 0, as the tiny index) and `queries` held-out
    ones (split=query, another seed) per class; for refresh tests and the orchestrator runs."""
    from PIL import Image

    from megaclass.export.data.catalog import write_catalog_csv

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    train = class_patterns(num_classes, per_class, IMAGE_SIZE, seed=0)
    query = class_patterns(num_classes, queries, IMAGE_SIZE, seed=7)
    ids, paths, splits = [], [], []
    for split, (images, cls) in (("train", train), ("query", query)):
        for i, (img, c) in enumerate(zip(images, cls, strict=True)):
            if int(c) in drop:
                continue
            name = f"images/{split}-{int(c)}-{i}.png"
            Image.fromarray(img).save(root / name)
            ids.append(int(c))
            paths.append(name)
            splits.append(split)
    return write_catalog_csv(
        root / "catalog.csv", np.array(ids), [tiny_label(c) for c in ids], paths=paths, splits=splits
    )


def build_tiny_repository(root: Path, serving: ServingConfig) -> tuple[Path, Path, Path]:
    """Encoder ONNX + index + repository under `root`; returns (repo, onnx, index_dir)."""
    from megaclass.export.convert.onnx_export import export_onnx
    from megaclass.export.enrol.embedding import embed_images
    from megaclass.export.enrol.prototypes import class_prototypes
    from megaclass.export.repository.generate import ModelShapes, build_repository
    from megaclass.python_backend.index.routed_index import RoutedIndex

    model = projection_encoder(IMAGE_SIZE, EMBEDDING_DIM)
    onnx_path = root / "encoder.onnx"
    export_onnx(model, onnx_path, ExportConfig(), image_size=IMAGE_SIZE)
    images, ids = class_patterns(NUM_CLASSES, 4, IMAGE_SIZE)
    protos, proto_ids = class_prototypes(embed_images(model, images), ids)
    labels = {int(c): tiny_label(c) for c in np.unique(ids)}
    index = RoutedIndex.build(protos, proto_ids, labels, IndexConfig(nlist=4, nprobe=4))
    index.save(root / "index")
    repo = root / "repo"
    build_repository(repo, onnx_path, root / "index", ModelShapes(IMAGE_SIZE, EMBEDDING_DIM), serving, ExportConfig())
    return repo, onnx_path, root / "index"


def build_torch_repository(root: Path, serving: ServingConfig, on_gpu: bool) -> tuple[Path, Path, Path]:
    """The `gpu-torch` repository (Python-backend PyTorch encoder, torch-backend retriever) over a
    small untrained GlyphEncoder; returns (repo, encoder.pt, index_dir).

    `on_gpu` False turns its instances into CPU ones (and the retriever's search to the CPU), so that
    the same model code runs on a machine without a GPU; True keeps the target's GPU instances.
    """
    from dataclasses import replace

    import torch

    from megaclass.export.enrol.embedding import embed_images
    from megaclass.export.enrol.prototypes import class_prototypes
    from megaclass.export.repository.generate import ModelShapes, build_repository, use_cpu_instances
    from megaclass.python_backend.index.routed_index import RoutedIndex
    from megaclass.python_backend.serving.encoder_model import GlyphEncoder, save_encoder

    torch.manual_seed(0)
    model = GlyphEncoder(embedding_dim=EMBEDDING_DIM, width=4).eval()
    weights = save_encoder(model, root / "encoder.pt", image_size=IMAGE_SIZE)
    images, ids = class_patterns(NUM_CLASSES, 4, IMAGE_SIZE)
    protos, proto_ids = class_prototypes(embed_images(model, images), ids)
    labels = {int(c): f"class-{int(c)}" for c in np.unique(ids)}
    index_cfg = IndexConfig(nlist=4, nprobe=4, backend="torch", device="auto")
    RoutedIndex.build(protos, proto_ids, labels, index_cfg).save(root / "index")
    repo = root / "repo"
    serving = replace(serving, target="gpu-torch", trt_fp16=False)
    shapes = ModelShapes(IMAGE_SIZE, EMBEDDING_DIM)
    build_repository(repo, weights, root / "index", shapes, serving, ExportConfig(), encoded_images=False)
    if not on_gpu:
        use_cpu_instances(repo)
    return repo, weights, root / "index"
