"""Batched cluster scans: the queries of a batch are grouped by cluster, each cluster is read once.

Layout: clusters padded to a common capacity, `codes` [C, cap, D] (float32, float16 or int8) and
`rows` [C, cap] (prototype row of each slot, -1 = empty). For a batch, the (query, cluster) probe
pairs are sorted by cluster; clusters probed by about the same number of queries m are stacked, and
one batched matrix product per stack scores every probing query against every slot:
[n, m, D] x [n, D, cap]. Each stack is one call into BLAS (numpy) or one `bmm` (torch, CPU or CUDA),
so a list is read once per batch however many queries probe it.

Both kernels return, per query, `per_list` best (score, row) pairs from each probed list:
scores [Q, nprobe * per_list] and rows [Q, nprobe * per_list] (-1 where a list had fewer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

_BLOCK_BYTES = 8 << 20  # decoded cluster data per stacked product (fits the last-level cache)


def probe_groups(probes: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split the probe pairs into stacks of clusters probed by a similar number of queries.

    Returns [(clusters [n], pair_index [n, m])], pair_index into `probes.ravel()` (-1 = padding).
    Probes -1 (dropped by adaptive probing) are in no group.
    """
    flat = probes.ravel()
    order = np.argsort(flat, kind="stable")
    order = order[flat[order] >= 0]
    if not len(order):
        return []
    uniq, start, count = np.unique(flat[order], return_index=True, return_counts=True)
    width = 1 << np.ceil(np.log2(count)).astype(np.int64)  # pad the stack to the next power of two
    out = []
    for m in np.unique(width):
        sel = np.flatnonzero(width == m)
        j = np.arange(m)
        idx = start[sel, None] + j
        pair = np.where(j < count[sel, None], order[np.minimum(idx, len(order) - 1)], -1)
        out.append((uniq[sel], pair))
    return out


def _block_step(per_item_bytes: int) -> int:
    """Clusters per stacked product so that one stack of decoded data stays near _BLOCK_BYTES."""
    return max(1, _BLOCK_BYTES // max(per_item_bytes, 1))


def grouped_scan_numpy(
    xq: np.ndarray, probes: np.ndarray, codes: np.ndarray, rows: np.ndarray, per_list: int
) -> tuple[np.ndarray, np.ndarray]:
    """Grouped scan with numpy/BLAS; `xq` float32 [Q, D] (already in the codes' scale)."""
    q, nprobe = probes.shape
    cap, d = codes.shape[1], codes.shape[2]
    f = min(per_list, cap)
    out_s = np.full((q * nprobe, f), -np.inf, dtype=np.float32)
    out_r = np.full((q * nprobe, f), -1, dtype=np.int64)
    query_of_pair = np.repeat(np.arange(q), nprobe)
    step = _block_step(cap * d * 4)
    for clusters, pair in probe_groups(probes):
        m = pair.shape[1]
        for s0 in range(0, len(clusters), step):
            cl, pr = clusters[s0 : s0 + step], pair[s0 : s0 + step]
            xb = codes[cl].astype(np.float32, copy=False)  # [n, cap, D]
            xg = xq[query_of_pair[np.maximum(pr, 0)]]  # [n, m, D]
            s = np.matmul(xg, xb.transpose(0, 2, 1))  # [n, m, cap]
            slot_rows = rows[cl]  # [n, cap]
            s[np.broadcast_to((slot_rows < 0)[:, None, :], s.shape)] = -np.inf
            if f < cap:
                top = np.argpartition(-s, f - 1, axis=2)[:, :, :f]
                s = np.take_along_axis(s, top, axis=2)
                r = np.take_along_axis(np.broadcast_to(slot_rows[:, None, :], (len(cl), m, cap)), top, axis=2)
            else:
                r = np.broadcast_to(slot_rows[:, None, :], s.shape)
            valid = pr >= 0
            out_s[pr[valid]] = s[valid]
            out_r[pr[valid]] = np.where(np.isfinite(s[valid]), r[valid], -1)
    return out_s.reshape(q, nprobe * f), out_r.reshape(q, nprobe * f)


def grouped_scan_torch(
    xq: Any, probes: np.ndarray, codes: Any, rows: Any, per_list: int, compute_dtype: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Grouped scan with torch (`codes`, `rows`, `xq` torch tensors on one device)."""
    import torch

    q, nprobe = probes.shape
    cap, d = codes.shape[1], codes.shape[2]
    f = min(per_list, cap)
    dev = codes.device
    dt = compute_dtype or torch.float32
    out_s = torch.full((q * nprobe, f), float("-inf"), dtype=torch.float32, device=dev)
    out_r = torch.full((q * nprobe, f), -1, dtype=torch.int64, device=dev)
    query_of_pair = torch.arange(q, device=dev).repeat_interleave(nprobe)
    xq = xq.to(dt)
    step = _block_step(cap * d * 4) if dev.type == "cpu" else 1 << 30
    for clusters, pair in probe_groups(probes):
        clusters_t = torch.from_numpy(clusters).to(dev)
        pair_t = torch.from_numpy(pair).to(dev)
        m = pair.shape[1]
        for s0 in range(0, len(clusters), step):
            cl, pr = clusters_t[s0 : s0 + step], pair_t[s0 : s0 + step]
            xb = codes.index_select(0, cl).to(dt)  # [n, cap, D]
            xg = xq.index_select(0, query_of_pair[pr.clamp(min=0)].reshape(-1)).reshape(len(cl), m, d)
            s = torch.bmm(xg, xb.transpose(1, 2)).float()  # [n, m, cap]
            slot_rows = rows.index_select(0, cl)
            s.masked_fill_((slot_rows < 0)[:, None, :], float("-inf"))
            s, top = torch.topk(s, f, dim=2) if f < cap else (s, None)
            r = slot_rows[:, None, :].expand(len(cl), m, cap)
            if top is not None:
                r = torch.gather(r, 2, top)
            valid = pr >= 0
            out_s[pr[valid]] = s[valid]
            out_r[pr[valid]] = torch.where(torch.isfinite(s[valid]), r[valid], -1)
    return out_s.reshape(q, nprobe * f).cpu().numpy(), out_r.reshape(q, nprobe * f).cpu().numpy()
