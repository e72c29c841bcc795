"""Per-cluster storage forms: exact float32, float16, 8-bit scalar quantisation, product quantisation.

A codec is trained once (on a sample) into plain arrays, saved as `.npy`:
- "flat": no parameters, scores are exact.
- "fp16": no parameters; half-precision vectors.
- "sq8": per-dimension offset `a` and step `s`; x ≈ a + s·c with c int8. Then q·x ≈ q·a + (q⊙s)·c:
  scanning scores the int8 codes against the scaled query q⊙s, and the constant q·a (the same for every
  candidate of a query) is added back. FAISS scans z = (x - a)/s with its one-range 8-bit quantiser
  (`QT_8bit_uniform` over [-128, 128]); its `QT_8bit_direct_signed` would fit exactly but returns
  zero scores for d >= 32 under inner product in faiss-cpu 1.15.
- "pq": product quantiser (m sub-vectors, 2^bits centroids each, not on residuals), optionally after an
  OPQ rotation R (orthogonal, so q·x = Rq·Rx: queries and vectors are rotated alike); with 4 bits FAISS
  scans it with its SIMD "fast scan" kernels.
The compressed forms only pick candidates; the index re-ranks them with the exact vectors.
"""

from __future__ import annotations

from typing import Literal

import faiss
import numpy as np

Storage = Literal["flat", "fp16", "sq8", "pq"]
STORAGES: tuple[str, ...] = ("flat", "fp16", "sq8", "pq")


def check_storage(storage: str) -> None:
    """Raise ValueError unless `storage` is one of STORAGES."""
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")


def pq_shape(dim: int, pq_m: int | None, pq_bits: int) -> tuple[int, int]:
    """(sub-quantisers, bits) for `dim`; the default is one sub-quantiser per 4 dimensions."""
    m = pq_m or max(1, dim // 4)
    if dim % m:
        raise ValueError(f"pq_m={m} must divide the dimension {dim}")
    if pq_bits not in (4, 8):
        raise ValueError(f"pq_bits must be 4 or 8, got {pq_bits}")
    return m, pq_bits


def train_codec(
    storage: str,
    sample: np.ndarray,
    *,
    pq_m: int | None = None,
    pq_bits: int = 4,
    opq: bool = False,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Train the codec of `storage` on `sample` (float32 [n, D]); returns its parameter arrays."""
    check_storage(storage)
    d = sample.shape[1]
    if storage == "sq8":
        lo, hi = sample.min(axis=0), sample.max(axis=0)
        step = np.maximum(hi - lo, 1e-12) / 255.0
        return {"sq_offset": ((hi + lo) / 2).astype(np.float32), "sq_step": step.astype(np.float32)}
    if storage == "pq":
        m, bits = pq_shape(d, pq_m, pq_bits)
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        out = {}
        if opq:
            rot = faiss.OPQMatrix(d, m)
            rot.niter = 20
            rot.train(sample)
            out["opq_rotation"] = faiss.vector_to_array(rot.A).reshape(d, d).astype(np.float32)
            sample = rotate(sample, out)
        pq = faiss.ProductQuantizer(d, m, bits)
        pq.cp.seed = seed
        pq.train(sample)
        out["pq_centroids"] = faiss.vector_to_array(pq.centroids).reshape(m, pq.ksub, pq.dsub).astype(np.float32)
        return out
    return {}


def rotate(x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    """x Rᵀ when the codec has an OPQ rotation R, else x."""
    r = params.get("opq_rotation")
    return x if r is None else np.ascontiguousarray(x @ r.T, dtype=np.float32)


def sq8_encode(x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    """int8 codes c with x ≈ offset + step · c."""
    c = np.rint((x - params["sq_offset"]) / params["sq_step"])
    return np.clip(c, -128, 127).astype(np.int8)


def encode(storage: str, x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    """Codes of rows `x` for the grouped (GEMM) kernels: float32, float16 or int8 [n, D]."""
    if storage == "flat":
        return np.ascontiguousarray(x, dtype=np.float32)
    if storage == "fp16":
        return x.astype(np.float16)
    if storage == "sq8":
        return sq8_encode(x, params)
    raise ValueError("pq storage is scanned by the faiss backend only")


def scan_queries(storage: str, xq: np.ndarray, params: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Queries as the scanner sees them, and the per-query constant to add to its scores."""
    if storage == "sq8":
        return np.ascontiguousarray(xq * params["sq_step"], dtype=np.float32), xq @ params["sq_offset"]
    if storage == "pq":
        return rotate(xq, params), np.zeros(len(xq), dtype=np.float32)
    return xq, np.zeros(len(xq), dtype=np.float32)


def make_faiss_ivf(storage: str, centroids: np.ndarray, params: dict[str, np.ndarray]) -> faiss.IndexIVF:
    """An empty, trained FAISS IVF index (inner product) for `storage` over fixed `centroids`."""
    nlist, d = centroids.shape
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    ip = faiss.METRIC_INNER_PRODUCT
    if storage == "flat":
        ivf = faiss.IndexIVFFlat(quantizer, d, nlist, ip)
    elif storage == "fp16":
        ivf = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_fp16, ip, False)
    elif storage == "sq8":
        qt = faiss.ScalarQuantizer.QT_8bit_uniform
        ivf = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, qt, ip, False)
        faiss.copy_array_to_vector(np.array([-128.0, 256.0], dtype=np.float32), ivf.sq.trained)
    elif storage == "pq":
        cent = params["pq_centroids"]
        m, ksub, _ = cent.shape
        ivf = faiss.IndexIVFPQ(quantizer, d, nlist, m, int(np.log2(ksub)), ip)
        ivf.by_residual = False
        faiss.copy_array_to_vector(np.ascontiguousarray(cent.ravel()), ivf.pq.centroids)
    else:
        check_storage(storage)
    ivf.own_fields = True
    quantizer.this.disown()
    ivf.is_trained = True
    return ivf


def faiss_add(
    ivf: faiss.IndexIVF,
    storage: str,
    params: dict[str, np.ndarray],
    x: np.ndarray,
    ids: np.ndarray,
    lists: np.ndarray,
) -> None:
    """Add rows `x` with ids `ids` to the given inverted `lists` (assignment precomputed: spill allowed)."""
    if len(x) == 0:
        return
    if storage == "sq8":
        x = np.clip((x - params["sq_offset"]) / params["sq_step"], -128.0, 127.99)
    elif storage == "pq":
        x = rotate(x, params)
    x = np.ascontiguousarray(x, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    lists = np.ascontiguousarray(lists, dtype=np.int64)
    ivf.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(lists))


def search_form(ivf: faiss.IndexIVF, storage: str) -> faiss.IndexIVF:
    """The index to search: 4-bit PQ is converted to FAISS's fast-scan layout, others are used as is.

    Parallel mode 3: `search_preassigned` (we route ourselves) spreads a batch's queries over the
    OpenMP threads; in the default mode only `search` does, and a preassigned scan runs on one thread.
    """
    if storage == "pq" and ivf.pq.nbits == 4:
        fast = faiss.IndexIVFPQFastScan(ivf)
        fast.by_residual = False
        ivf = fast
    ivf.parallel_mode = 3
    return ivf


def code_bytes(storage: str, dim: int, params: dict[str, np.ndarray]) -> int:
    """Bytes one stored entry's code takes (what a scan reads per candidate)."""
    if storage == "flat":
        return 4 * dim
    if storage == "fp16":
        return 2 * dim
    if storage == "sq8":
        return dim
    m, ksub, _ = params["pq_centroids"].shape
    return (m * int(np.log2(ksub)) + 7) // 8
