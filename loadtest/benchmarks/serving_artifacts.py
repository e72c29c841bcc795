"""What the head-to-head serves: an encoder and an index (from a repository or synthetic), the Triton
repository built from them with the benchmark's serving settings, and the images sent.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megaclass.export.config import MegaclassConfig
from megaclass.loadtest.benchmarks.serving_config import HeadToHeadConfig


@dataclass(frozen=True)
class BenchArtifacts:
    """The encoder, the index, the Triton repository built from them, and the images sent."""

    onnx: Path
    index: Path
    repository: Path
    images: Path  # uint8 [N, S, S] .npy
    image_size: int
    embedding_dim: int
    num_classes: int
    source: str  # where the encoder and index came from


def newest_version_file(model_dir: Path, name: str) -> Path:
    """`name` in the newest numbered version folder of `model_dir` that holds it."""
    versions = sorted((int(p.name) for p in model_dir.iterdir() if p.name.isdigit()), reverse=True)
    for v in versions:
        if (model_dir / str(v) / name).exists():
            return model_dir / str(v) / name
    raise FileNotFoundError(f"no version of {model_dir} holds {name}")


def glyph_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """`count` characters rendered from DejaVu Sans (the glyph set's rendering rule), or
    seeded blob patterns where that font is missing; uint8 `[count, size, size]`."""
    try:
        from megaclass.export.config import GlyphDataConfig
        from megaclass.export.data.fonts import load_font, render_char

        font_file = next(Path("/usr/share/fonts").rglob("DejaVuSans.ttf"))
        cfg = GlyphDataConfig(image_size=size)
        font = load_font(str(font_file), cfg)
        images = []
        for cp in range(0x21, 0x3000):
            img = render_char(font, chr(cp), cfg) if chr(cp).isprintable() else None
            if img is not None:
                images.append(img)
            if len(images) == count:
                return np.stack(images).astype(np.uint8)
    except (StopIteration, ImportError, OSError, AttributeError, TypeError):
        pass
    rng = np.random.default_rng(seed)
    blobs = rng.random((count, max(1, size // 4), max(1, size // 4))) > 0.5
    return (blobs.repeat(4, axis=1).repeat(4, axis=2)[:, :size, :size] * 255).astype(np.uint8)


def prepare_artifacts(
    work: Path, bench: HeadToHeadConfig, cfg: MegaclassConfig, repository: Path | None = None
) -> BenchArtifacts:
    """Encoder and index from `repository` (newest versions) or synthetic ones, then a Triton
    repository built from them with the configured serving settings."""
    from megaclass.export.repository.generate import ModelShapes, build_repository
    from megaclass.python_backend.index.routed_index import RoutedIndex

    work.mkdir(parents=True, exist_ok=True)
    if repository is not None:
        onnx_path = newest_version_file(Path(repository) / "encoder", "encoder.onnx")
        index_dir = newest_version_file(Path(repository) / "retriever", "index")
        source = f"repository {repository} ({onnx_path.parent.name}/{index_dir.parent.name})"
    else:
        onnx_path, index_dir = synthetic_encoder_and_index(work, bench, cfg)
        source = (
            f"synthetic: untrained GlyphEncoder(width={cfg.train.width}, dim={cfg.train.embedding_dim}), "
            f"{bench.classes} random unit-vector prototypes"
        )
    import onnxruntime as ort

    inp = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).get_inputs()[0]
    size = int(inp.shape[-1])
    index = RoutedIndex.load(index_dir)
    repo = work / "repository"
    shutil.rmtree(repo, ignore_errors=True)
    build_repository(repo, onnx_path, index_dir, ModelShapes(size, index.dim), cfg.serving, cfg.export)
    images = work / "images.npy"
    np.save(images, glyph_images(bench.image_count, size, bench.seed))
    return BenchArtifacts(onnx_path, index_dir, repo, images, size, index.dim, index.num_classes, source)


def _loads(index_dir: Path) -> bool:
    """A cached index that this version of the index library still reads."""
    from megaclass.python_backend.index.routed_index import RoutedIndex

    try:
        RoutedIndex.load(index_dir)
        return True
    except Exception:
        return False


def synthetic_encoder_and_index(work: Path, bench: HeadToHeadConfig, cfg: MegaclassConfig) -> tuple[Path, Path]:
    """An untrained GlyphEncoder exported to ONNX and a routed index of random prototypes (cached)."""
    from megaclass.export.config import config_hash

    key = config_hash(cfg.train.width, cfg.train.embedding_dim, cfg.glyphs.image_size, cfg.index, bench.classes)
    onnx_path, index_dir = work / f"encoder-{key}.onnx", work / f"index-{key}"
    if onnx_path.exists() and _loads(index_dir):
        return onnx_path, index_dir
    import torch

    from megaclass.export.convert.onnx_export import export_onnx
    from megaclass.python_backend.index.routed_index import RoutedIndex
    from megaclass.python_backend.serving.encoder_model import build_encoder

    torch.manual_seed(bench.seed)
    export_onnx(build_encoder(cfg.train, cfg.glyphs.image_size).eval(), onnx_path, cfg.export, cfg.glyphs.image_size)
    rng = np.random.default_rng(bench.seed)
    protos = rng.standard_normal((bench.classes, cfg.train.embedding_dim)).astype(np.float32)
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    ids = np.arange(bench.classes, dtype=np.int64)
    shutil.rmtree(index_dir, ignore_errors=True)
    RoutedIndex.build(protos, ids, {int(i): f"class-{i}" for i in ids}, cfg.index).save(index_dir)
    return onnx_path, index_dir
