"""The index benchmark's data: clustered synthetic embeddings, or glyph embeddings from an encoder.

Both give prototypes with their classes and queries; `bench_index` takes either (the glyph set
as the P.npy / L.txt / Q.npy files the command line reads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def synthetic_embeddings(num_classes: int, dim: int = 128, **kwargs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prototypes, class ids, queries) of `hierarchical_embeddings` (the same arguments), without the groups."""
    return hierarchical_embeddings(num_classes, dim, **kwargs)[:3]


def hierarchical_embeddings(
    num_classes: int,
    dim: int = 128,
    *,
    num_queries: int = 4096,
    group_size: int = 500,
    spread: float = 1.0,
    query_noise: float = 0.8,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Clustered unit vectors that look like class embeddings, and queries near random classes.

    Classes fall into num_classes / group_size groups (Zipf-sized: a few large, many small) whose
    centres lie on the sphere; a class prototype is its group centre plus `spread` × an anisotropic
    unit perturbation (variance decaying as 1/i over a random basis, as in trained embeddings). A
    query is a random class's prototype plus `query_noise` × an isotropic unit vector (cos ≈ 0.78).
    Returns (prototypes float32 [N, dim], class ids int64 [N], queries float32 [num_queries, dim], group
    of each class int64 [N]): the groups are a two-level hierarchy (parent -> child classes) that the
    geometry follows, what routing by taxonomy seeds its clusters from.
    """
    rng = np.random.default_rng(seed)
    groups = max(1, num_classes // group_size)
    spec = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    centres = (rng.standard_normal((groups, dim)).astype(np.float32) * spec) @ basis
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weight = 1.0 / np.arange(1, groups + 1) ** 0.7
    group = rng.choice(groups, size=num_classes, p=weight / weight.sum())
    out = np.empty((num_classes, dim), np.float32)
    for s in range(0, num_classes, 200_000):
        n = min(200_000, num_classes - s)
        e = (rng.standard_normal((n, dim)).astype(np.float32) * spec) @ basis
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        x = centres[group[s : s + n]] + spread * e
        out[s : s + n] = x / np.linalg.norm(x, axis=1, keepdims=True)
    own = rng.integers(0, num_classes, num_queries)
    e = rng.standard_normal((num_queries, dim)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    xq = out[own] + query_noise * e
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    return out, np.arange(num_classes, dtype=np.int64), xq.astype(np.float32), group.astype(np.int64)


def glyph_embedding_files(
    encoder_onnx: Path,
    out_dir: Path,
    *,
    glyph_dir: Path = Path(".cache/megaclass/glyphs"),
    num_queries: int = 4096,
    seed: int = 0,
    batch_size: int = 1024,
    prototypes_per_class: int = 4,
) -> tuple[Path, Path, Path]:
    """Glyph embeddings from an exported encoder (ONNX), as P.npy / L.txt / Q.npy for `bench_index`.

    Every class the installed fonts render (GlyphDataConfig defaults, no class limit) is embedded
    from its training-font samples and reduced to up to `prototypes_per_class` k-means centres
    (`export.prototypes.class_prototypes`; 0 keeps every sample as a prototype). The queries are
    `num_queries` samples of the held-out fonts. Labels are "U+XXXX" code points.
    """
    import onnxruntime as ort

    from megaclass.export.config import GlyphDataConfig
    from megaclass.export.data.glyphs import render_glyph_dataset, split_glyphs
    from megaclass.export.enrol.prototypes import class_prototypes
    from megaclass.python_backend.serving.preprocess import to_model_input

    out_dir = Path(out_dir)
    paths = out_dir / "P.npy", out_dir / "L.txt", out_dir / "Q.npy"
    if all(p.exists() for p in paths):
        return paths
    cfg = GlyphDataConfig(max_classes=None, seed=seed)
    ds = render_glyph_dataset(cfg, Path(glyph_dir))
    splits = split_glyphs(ds, cfg)
    session = ort.InferenceSession(str(encoder_onnx), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def embed(images: np.ndarray) -> np.ndarray:
        out = [
            session.run(None, {name: to_model_input(images[s : s + batch_size])})[0]
            for s in range(0, len(images), batch_size)
        ]
        x = np.concatenate(out).astype(np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    samples = embed(splits.train.images)
    cps = splits.train.codepoints[splits.train.class_index]
    if prototypes_per_class > 0:
        protos, cps = class_prototypes(samples, cps, prototypes_per_class, seed=seed)
    else:
        protos = samples
    rng = np.random.default_rng(seed)
    q = splits.held_out_fonts
    pick = np.sort(rng.choice(len(q.images), min(num_queries, len(q.images)), replace=False))
    queries = embed(q.images[pick])
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(paths[0], protos, allow_pickle=False)
    paths[1].write_text("".join(f"U+{int(c):04X}\n" for c in cps), encoding="utf-8")
    np.save(paths[2], queries, allow_pickle=False)
    return paths
