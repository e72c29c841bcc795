"""Search on a torch device (the GPU serving path; the CPU runs the same code in the tests).

- `ExactTorchSearch`: every live prototype resident on the device; a batch is one matrix product
  (FP16 inputs on CUDA, FP32 accumulate) and one top-k, the candidates re-scored in FP32.
- `RoutedTorchSearch`: the routed index's clusters padded to one capacity and resident on the device;
  a batch is routed (one product with the centroids), its probed lists gathered and scanned by one
  batched product per chunk of queries (no Python loop over clusters), then re-scored in FP32.

Both aggregate classes on the device (`aggregate_classes_torch`: each class once, at its best score,
ties by class id as `aggregation.aggregate_classes`) and copy only the top-k answer to the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from megaclass.python_backend.index.layout import padded_layout
from megaclass.python_backend.serving.device_arrays import is_torch_tensor

_CHUNK_BYTES = 512 << 20  # scratch per kernel call (scores or gathered lists); bounds device memory


def aggregate_classes_torch(scores: Any, classes: Any, k: int) -> tuple[Any, Any]:
    """Top-k distinct classes per row on the device; `scores` float [Q, M], `classes` int64 [Q, M]
    (-1 = none). Returns (class ids [Q, k], scores float32 [Q, k]), -1 / -inf where fewer were found."""
    import torch

    q, m = classes.shape
    scores = scores.float().masked_fill(classes < 0, float("-inf"))
    by_class = torch.argsort(classes, dim=1, stable=True)  # ties in score then fall to the smaller id
    scores, classes = scores.gather(1, by_class), classes.gather(1, by_class)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    scores, classes = scores.gather(1, order), classes.gather(1, order)
    same = classes[:, :, None] == classes[:, None, :]  # [Q, M, M]; M = top_k x entries per class: small
    earlier = torch.ones(m, m, dtype=torch.bool, device=classes.device).tril(-1)
    dup = (same & earlier).any(dim=2)
    scores = scores.masked_fill(dup, float("-inf"))
    keep = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    s, c = scores.gather(1, keep), classes.gather(1, keep)
    c = c.masked_fill(~torch.isfinite(s), -1)
    if c.shape[1] < k:  # fewer candidates than k
        pad = k - c.shape[1]
        s = torch.cat([s, s.new_full((q, pad), float("-inf"))], dim=1)
        c = torch.cat([c, c.new_full((q, pad), -1)], dim=1)
    return c, s


def as_device_queries(xq: Any, device: Any) -> Any:
    """Queries as a float32 tensor on `device` (numpy is copied, a tensor moved only if elsewhere)."""
    import torch

    t = xq if is_torch_tensor(xq) else torch.from_numpy(np.ascontiguousarray(xq))
    return t.to(device=device, dtype=torch.float32, non_blocking=True)


def rescore(xq: Any, xb: Any, rows: Any) -> Any:
    """FP32 inner products of each query with its candidate rows of `xb` (-inf where rows is -1)."""
    import torch

    cand = xb.index_select(0, rows.clamp(min=0).reshape(-1)).reshape(*rows.shape, xb.shape[1]).float()
    s = torch.bmm(cand, xq[:, :, None]).squeeze(2)
    return s.masked_fill(rows < 0, float("-inf"))


class ExactTorchSearch:
    """Every live prototype on `device`; `dtype` torch.float16 (GPU default) or torch.float32."""

    def __init__(self, vectors: np.ndarray, row_class: np.ndarray, device: str, dtype: Any = None):
        import torch

        live = np.flatnonzero(row_class >= 0)
        self.device = torch.device(device)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.xb = torch.from_numpy(np.ascontiguousarray(vectors[live])).to(self.device, self.dtype)
        self.row_class = torch.from_numpy(row_class[live].astype(np.int64)).to(self.device)
        self.max_mult = int(np.unique(row_class[live], return_counts=True)[1].max()) if len(live) else 1
        self.num_entries = len(live)

    @property
    def nbytes(self) -> int:
        return self.xb.numel() * self.xb.element_size()

    def search(self, xq: Any, top_k: int) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """(class ids int64 [Q, k], scores float32 [Q, k], batch totals) for queries (numpy or tensor)."""
        import torch

        xq = as_device_queries(xq, self.device)
        fetch = max(1, min(top_k * self.max_mult, self.num_entries))
        # FP16 scores may swap near-equal candidates: take more, re-score in FP32, keep `fetch`.
        deep = min(self.num_entries, fetch if self.dtype == torch.float32 else 2 * fetch + 8)
        step = max(1, _CHUNK_BYTES // max(4 * self.num_entries, 1))
        ids, best = [], []
        with torch.inference_mode():
            for s0 in range(0, len(xq), step):
                q = xq[s0 : s0 + step]
                rows = torch.topk(q.to(self.dtype) @ self.xb.T, deep, dim=1).indices
                s = rescore(q, self.xb, rows)
                if deep > fetch:
                    s, pick = torch.topk(s, fetch, dim=1)
                    rows = rows.gather(1, pick)
                c, v = aggregate_classes_torch(s, self.row_class[rows], top_k)
                ids.append(c)
                best.append(v)
            c, v = (
                (torch.cat(ids), torch.cat(best))
                if ids
                else (xq.new_zeros((0, top_k)).long(), xq.new_zeros((0, top_k)))
            )
        totals = {"scanned": float(len(xq) * self.num_entries), "coded": 0.0, "exact": float(len(xq) * deep)}
        return c.cpu().numpy(), v.cpu().numpy(), {**totals, "probes": 0.0}


class RoutedTorchSearch:
    """The routed index's padded clusters on `device`: route, gather the probed lists, one batched
    product per chunk of queries, FP32 re-score, class aggregation; all on the device."""

    def __init__(self, index: Any, device: str, dtype: Any = None):
        import torch

        self.device = torch.device(device)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        g = padded_layout(index._entry_row, index._entry_list, index.nlist, index._vectors, "flat", {})
        self.codes = torch.from_numpy(g["codes"]).to(self.device, self.dtype)  # [C, cap, D]
        self.rows = torch.from_numpy(g["rows"]).to(self.device)  # [C, cap]
        self.centroids = torch.from_numpy(np.ascontiguousarray(index.centroids, dtype=np.float32)).to(self.device)
        self.xb = torch.from_numpy(np.ascontiguousarray(index._vectors)).to(self.device, self.dtype)
        self.row_class = torch.from_numpy(index._row_class.astype(np.int64)).to(self.device)
        self.sizes = torch.from_numpy(np.asarray(index._sizes, dtype=np.int64)).to(self.device)
        self.max_mult = int(index._max_mult)
        self.num_entries = int(index.num_entries)
        self.nlist = int(index.nlist)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.codes, self.rows, self.xb, self.row_class))

    def search(
        self, xq: Any, top_k: int, nprobe: int, margin: float | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """(class ids int64 [Q, k], scores float32 [Q, k], batch totals) probing `nprobe` clusters
        (those farther than `margin` below the best route score are skipped, as router.drop_far_probes)."""
        import torch

        xq = as_device_queries(xq, self.device)
        nprobe = max(1, min(int(nprobe), self.nlist))
        cap, d = self.codes.shape[1], self.codes.shape[2]
        fetch = max(1, min(top_k * self.max_mult, self.num_entries))
        deep = min(nprobe * cap, fetch if self.dtype == torch.float32 else 2 * fetch + 8)
        step = max(1, _CHUNK_BYTES // max(nprobe * cap * d * self.codes.element_size(), 1))
        ids, best, scanned, probes_n = [], [], 0.0, 0.0
        with torch.inference_mode():
            for s0 in range(0, len(xq), step):
                q = xq[s0 : s0 + step]
                route = torch.topk(q @ self.centroids.T, nprobe, dim=1)
                probes = route.indices
                far = None if margin is None else route.values < route.values[:, :1] - margin
                xb = self.codes.index_select(0, probes.reshape(-1)).reshape(len(q), nprobe * cap, d)
                s = torch.bmm(xb, q.to(self.dtype)[:, :, None]).squeeze(2)  # [q, nprobe * cap]
                rows = self.rows.index_select(0, probes.reshape(-1)).reshape(len(q), nprobe, cap)
                if far is not None:
                    rows = rows.masked_fill(far[:, :, None], -1)
                rows = rows.reshape(len(q), nprobe * cap)
                s = s.float().masked_fill(rows < 0, float("-inf"))
                pick = torch.topk(s, deep, dim=1).indices
                rows = rows.gather(1, pick)
                s = rescore(q, self.xb, rows)
                if deep > fetch:
                    s, keep = torch.topk(s, fetch, dim=1)
                    rows = rows.gather(1, keep)
                cls = torch.where(rows >= 0, self.row_class[rows.clamp(min=0)], -1)
                c, v = aggregate_classes_torch(s, cls, top_k)
                ids.append(c)
                best.append(v)
                used = probes if far is None else probes.masked_fill(far, -1)
                scanned += float(self.sizes[used.clamp(min=0)].masked_fill(used < 0, 0).sum())
                probes_n += float((used >= 0).sum())
            c, v = (
                (torch.cat(ids), torch.cat(best))
                if ids
                else (xq.new_zeros((0, top_k)).long(), xq.new_zeros((0, top_k)))
            )
        totals = {"scanned": scanned, "coded": 0.0, "exact": float(len(xq) * deep), "probes": probes_n}
        return c.cpu().numpy(), v.cpu().numpy(), totals
