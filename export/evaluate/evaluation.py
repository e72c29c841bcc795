"""Evaluation of an encoder as served: queries against class prototypes, split by how well the class was trained.

Splits of the queries (by the number n_c of training samples of the query's class):

- ``seen_classes``: n_c > 0 (glyphs: trained classes rendered in the held-out fonts);
- ``tail``: 0 < n_c <= `tail_max` (a subset of seen_classes);
- ``held_out_classes``: n_c = 0, classes never trained on, enrolled from their samples without retraining.

Per split: precision@1 and hit rate@k over the class prototypes of *every* enrolled class
(one gallery, as served); MAP@R over the enrolment samples (R = enrolment samples of the class);
cost-aware error: among wrong top-1 answers, the share whose predicted class lies in the true
class's coarse cluster (a k-means router over the prototypes), i.e. near misses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from megaclass.export.config import IndexConfig
from megaclass.export.enrol.embedding import embed_images, embed_inputs
from megaclass.export.enrol.prototypes import class_prototypes, l2_normalize
from megaclass.export.evaluate.metrics import class_counts, hit_rate_at_k, map_at_r, nearest_labels, precision_at_1


@dataclass
class EvalSets:
    """Enrolment samples (become prototypes) and queries, as encoder inputs or precomputed embeddings.

    Inputs are uint8 images `[N, S, S]`, float encoder inputs `[N, ...]`, or, with no encoder,
    the embeddings themselves. `trained_counts[c]`: training samples of class c (absent: 0).
    """

    enrol_x: np.ndarray
    enrol_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray
    trained_counts: dict[int, int]
    labels: dict[int, str] = field(default_factory=dict)
    description: dict[str, str] = field(default_factory=dict)


def embed(model: Any, x: np.ndarray) -> np.ndarray:
    """Embeddings of `x` with `model` (uint8 images or float inputs); without a model, `x` normalised."""
    if model is None:
        return l2_normalize(np.asarray(x, dtype=np.float32))
    if x.dtype == np.uint8 and x.ndim == 3:
        return embed_images(model, x)
    return embed_inputs(model, x)


def cost_aware_error(true_ids: np.ndarray, predicted_ids: np.ndarray, cluster_of: dict[int, int]) -> float:
    """Among wrong top-1 answers (predicted != true), the share with cluster_of[predicted] == cluster_of[true].

    nan when there is no wrong answer. A class missing from `cluster_of` is in no cluster.
    """
    true_ids, predicted_ids = np.asarray(true_ids), np.asarray(predicted_ids)
    wrong = true_ids != predicted_ids
    if not wrong.any():
        return float("nan")
    same = [
        cluster_of.get(int(t), -1) == cluster_of.get(int(p), -2)
        for t, p in zip(true_ids[wrong], predicted_ids[wrong], strict=True)
    ]
    return float(np.mean(same))


def coarse_clusters(
    prototypes: np.ndarray, proto_ids: np.ndarray, cfg: IndexConfig
) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """A spherical k-means router over the prototypes (faiss.Kmeans, `cfg.nlist` or ~4 sqrt(P) lists).

    Returns (centroids `[K, D]`, cluster of each prototype `[P]`, {class id: cluster of its mean prototype}).
    """
    import faiss

    xb = np.ascontiguousarray(prototypes, dtype=np.float32)
    k = int(cfg.nlist or max(1, round(4 * np.sqrt(len(xb)))))
    k = max(1, min(k, len(xb)))
    km = faiss.Kmeans(xb.shape[1], k, niter=cfg.kmeans_iters, seed=cfg.seed, spherical=True, verbose=False)
    km.cp.min_points_per_centroid = 1  # small sets: no warning
    km.train(xb)
    _, assign = km.index.search(xb, 1)
    means, classes = class_prototypes(xb, proto_ids)
    _, class_assign = km.index.search(np.ascontiguousarray(means), 1)
    cluster_of = {int(c): int(a) for c, a in zip(classes, class_assign[:, 0], strict=True)}
    return km.centroids, assign[:, 0], cluster_of


def split_masks(query_y: np.ndarray, trained_counts: dict[int, int], tail_max: int = 2) -> dict[str, np.ndarray]:
    """Boolean masks over the queries: seen_classes, tail, held_out_classes (see the module docstring)."""
    n = np.array([trained_counts.get(int(c), 0) for c in query_y], dtype=np.int64)
    return {"seen_classes": n > 0, "tail": (n > 0) & (n <= tail_max), "held_out_classes": n == 0}


def split_metrics(
    retrieved: np.ndarray,
    sample_retrieved: np.ndarray,
    r: np.ndarray,
    query_y: np.ndarray,
    cluster_of: dict[int, int],
    ks: tuple[int, ...],
) -> dict[str, float | int]:
    """The metrics of one split (rows already selected); see the module docstring."""
    out: dict[str, float | int] = {"queries": len(query_y), "classes": len(np.unique(query_y))}
    if len(query_y) == 0:
        return out
    out["precision_at_1"] = precision_at_1(retrieved, query_y)
    for k in ks:
        out[f"hit_rate_at_{k}"] = hit_rate_at_k(retrieved, query_y, min(k, retrieved.shape[1]))
    out["map_at_r"] = map_at_r(sample_retrieved, query_y, np.minimum(r, sample_retrieved.shape[1]))
    out["cost_aware_error"] = cost_aware_error(query_y, retrieved[:, 0], cluster_of)
    return out


def evaluate_sets(
    model: Any,
    sets: EvalSets,
    index_cfg: IndexConfig,
    ks: tuple[int, ...] = (1, 5, 10),
    tail_max: int = 2,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Embed, build prototypes and the coarse router, and score every split.

    Returns (report, arrays) with arrays = prototypes, proto_ids, clusters (of each prototype), top1 (each
    query's top-1 class) and cluster_of ({class id: its coarse cluster}, the taxonomy fallback).
    """
    enrol = embed(model, sets.enrol_x)
    queries = embed(model, sets.query_x)
    protos, proto_ids = class_prototypes(enrol, sets.enrol_y, index_cfg.prototypes_per_class, index_cfg.seed)
    _, proto_cluster, cluster_of = coarse_clusters(protos, proto_ids, index_cfg)
    depth = max(ks)
    # Top classes from the prototype gallery (more rows than classes with several prototypes per class).
    rows = nearest_labels(queries, protos, proto_ids, min(len(protos), depth * index_cfg.prototypes_per_class))
    retrieved = np.stack([_first_unique(r, depth) for r in rows]) if len(rows) else rows[:, :depth]
    r = class_counts(sets.query_y, sets.enrol_y)
    sample_retrieved = nearest_labels(queries, enrol, sets.enrol_y, max(int(r.max()) if len(r) else 1, 1))
    report: dict[str, Any] = {
        "enrolled_classes": int(len(np.unique(proto_ids))),
        "prototypes": int(len(protos)),
        "coarse_clusters": int(proto_cluster.max() + 1) if len(proto_cluster) else 0,
        "tail_max_training_samples": tail_max,
        "splits": {},
    }
    for name, mask in split_masks(sets.query_y, sets.trained_counts, tail_max).items():
        report["splits"][name] = split_metrics(
            retrieved[mask], sample_retrieved[mask], r[mask], sets.query_y[mask], cluster_of, ks
        )
    report["description"] = dict(sets.description)
    arrays = {"prototypes": protos, "proto_ids": proto_ids, "clusters": proto_cluster, "top1": retrieved[:, 0]}
    return report, {**arrays, "cluster_of": cluster_of}


def _first_unique(row: np.ndarray, k: int) -> np.ndarray:
    """The first k distinct values of `row` in order, padded with -1."""
    _, first = np.unique(row, return_index=True)
    out = row[np.sort(first)][:k]
    return np.pad(out, (0, k - len(out)), constant_values=-1)


def head_precision_at_1(logits: np.ndarray, head_classes: np.ndarray, query_y: np.ndarray) -> float:
    """precision@1 of a classifier head: argmax of `logits [Q, C]` mapped through `head_classes [C]`."""
    if len(query_y) == 0:
        return float("nan")
    return float(np.mean(head_classes[np.argmax(logits, axis=1)] == np.asarray(query_y)))


CANNOT_ANSWER = "cannot answer: the softmax head has no output for classes it was not trained on"


def softmax_head_metrics(checkpoint: dict[str, Any], model: Any, sets: EvalSets, tail_max: int = 2) -> dict[str, Any]:
    """A softmax checkpoint classified by its own head: precision@1 per split; held-out classes cannot be answered."""
    import torch

    from megaclass.python_backend.serving.preprocess import to_model_input

    w = checkpoint["loss_state"]["head.weight"].float()
    b = checkpoint["loss_state"]["head.bias"].float()
    param = next(model.parameters())
    logits = [np.zeros((0, len(b)), np.float32)]
    with torch.no_grad():
        for start in range(0, len(sets.query_x), 512):
            chunk = sets.query_x[start : start + 512]
            x = to_model_input(chunk) if chunk.dtype == np.uint8 else np.asarray(chunk, np.float32)
            h = model.forward_unnormalized(torch.from_numpy(x).to(param.device)).float().cpu()
            logits.append((h @ w.T + b).numpy())
    logits_all = np.concatenate(logits)
    classes = np.asarray(checkpoint["classes"])
    out: dict[str, Any] = {}
    for name, mask in split_masks(sets.query_y, sets.trained_counts, tail_max).items():
        if name == "held_out_classes":
            out[name] = CANNOT_ANSWER
        else:
            out[name] = {"precision_at_1": head_precision_at_1(logits_all[mask], classes, sets.query_y[mask])}
    return out


def plot_prototypes_pca(
    prototypes: np.ndarray, clusters: np.ndarray, path: Path, title: str = "", max_points: int = 20000, seed: int = 0
) -> Path:
    """A PNG of the prototypes' 2-D PCA projection, coloured by coarse cluster (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(prototypes, dtype=np.float64)
    clusters = np.asarray(clusters)
    if len(x) > max_points:
        keep = np.random.default_rng(seed).choice(len(x), max_points, replace=False)
        x, clusters = x[keep], clusters[keep]
    xc = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    xy = xc @ vt[:2].T if vt.shape[0] >= 2 else np.hstack([xc @ vt[:1].T, np.zeros((len(xc), 1))])
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    ax.scatter(xy[:, 0], xy[:, 1], c=clusters % 20, cmap="tab20", s=6, alpha=0.8, linewidths=0)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title or f"{len(x)} prototypes, {len(np.unique(clusters))} coarse clusters (colour = cluster mod 20)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], path: Path) -> Path:
    """The report as indented JSON (nan -> null)."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if isinstance(v, float) and not np.isfinite(v):
            return None
        if isinstance(v, np.generic):
            return clean(v.item())
        return v

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(report), indent=2))
    return path
