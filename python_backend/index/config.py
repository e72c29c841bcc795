"""The routed index's configuration: how prototypes are clustered, stored and searched.

The serving side owns it (the index reads it when built or loaded); the offline pipeline's
`MegaclassConfig` holds one as its `index` section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class IndexConfig:
    """Prototype building and the routed (coarse-quantised) index."""

    prototypes_per_class: int = 1
    nlist: int | None = None  # coarse clusters; None: about 4 * sqrt(prototypes)
    nprobe: int = 8
    # Adaptive probing: of the nprobe best clusters, past the best only those whose route score is within
    # this of the best one's (None: all nprobe). `tune` chooses it.
    probe_margin: float | None = None
    # "auto" (the default): the fastest form the machine supports, chosen at build (index/defaults.py):
    # native 4-bit residual PQ with spill 1 where the kernel compiles, else FAISS with flat storage.
    storage: Literal["auto", "flat", "fp16", "sq8", "pq"] = "auto"
    spill: int | None = None  # extra clusters a prototype is also assigned to; None: 1 on the native path, else 0
    score_threshold: float | None = None  # below it the answer is "unknown"
    # Scan kernels: "numpy"/"torch" grouped GEMM; "native" fused 4-bit PQ (README, "scan backends").
    backend: Literal["auto", "faiss", "numpy", "torch", "native"] = "auto"
    seed: int = 0
    # Routed-index details (python_backend/index/).
    rerank: int = 0  # compressed storage: candidates per query re-scored exactly; 0: max(4 * top_k, 40)
    # Routing by taxonomy: the coarse clusters are the nodes at depth `taxonomy_level` (1 = top) of this
    # `class,parent` file instead of k-means (router.group_primary); a class is found by its label, else its
    # id; classes not in it go to the nearest cluster. The offline side reads the file and passes the groups
    # to RoutedIndex.build (export/evaluate/taxonomy.py: routing_groups; megaclass index build --taxonomy).
    taxonomy: str | None = None  # None: k-means routing
    taxonomy_level: int = 1
    balance: float | None = 2.0  # no cluster holds more than this times the mean entries (None: plain k-means)
    kmeans_iters: int = 20
    kmeans_sample: int = 64  # training points per cluster
    soar_lambda: float = 1.0  # SOAR spill: weight of the residual-parallel penalty
    pq_m: int | None = None  # PQ sub-quantisers; None: dim // 4
    pq_bits: int = 4  # 4: FAISS fast-scan kernels
    opq: bool = False  # PQ after a learnt rotation (OPQ); helps on data whose variance is uneven across dims
    # PQ of x - its cluster's centroid (far smaller errors on clustered data); native backend. None: on with native
    pq_residual: bool | None = None
    threads: int = 0  # search threads (FAISS/OpenMP, torch); 0: the libraries' default
    rebuild_imbalance: float = 3.0  # `needs_rebuild` once the largest cluster exceeds this times the mean
    rebuild_drift: float = 1.5  # ... or once entries sit this much farther (mean squared) from their centroids
    device: str = "auto"  # torch backend: "auto", "cpu" or "cuda"
