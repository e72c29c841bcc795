"""Class prototypes: reduce each class's sample embeddings to one or a few vectors."""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def class_prototypes(
    embeddings: np.ndarray, class_ids: np.ndarray, per_class: int = 1, seed: int = 0, iters: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Prototypes and their class ids: the normalised class mean, or up to `per_class` k-means centres.

    Several centres per class serve multi-modal classes (a character drawn in clearly
    different styles); a class with fewer samples than `per_class` keeps one per sample.
    """
    emb = l2_normalize(np.asarray(embeddings, dtype=np.float32))
    class_ids = np.asarray(class_ids, dtype=np.int64)
    order = np.argsort(class_ids, kind="stable")
    uniq, starts = np.unique(class_ids[order], return_index=True)
    bounds = np.append(starts, len(order))
    if per_class == 1:
        sums = np.add.reduceat(emb[order], starts, axis=0)
        return l2_normalize(sums), uniq
    rng = np.random.default_rng(seed)
    protos, ids = [], []
    for c, a, b in zip(uniq, bounds[:-1], bounds[1:], strict=True):
        x = emb[order[a:b]]
        centres = _spherical_kmeans(x, min(per_class, len(x)), rng, iters)
        protos.append(centres)
        ids.extend([c] * len(centres))
    return np.concatenate(protos).astype(np.float32), np.asarray(ids, dtype=np.int64)


def _spherical_kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int) -> np.ndarray:
    """Plain spherical k-means on a handful of vectors (one class)."""
    if k >= len(x):
        return x.copy()
    centres = x[rng.choice(len(x), k, replace=False)]
    for _ in range(iters):
        assign = np.argmax(x @ centres.T, axis=1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                centres[j] = members.sum(0)
        centres = l2_normalize(centres)
    return centres
