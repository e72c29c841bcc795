"""The native backend of the routed index: one compiled call per batch over 4-bit PQ lists.

`native/pq4_search.cpp` does, per query, what the FAISS backend does in several calls with Python
between them: pick the `nprobe` best clusters from the route scores, scan their 4-bit PQ codes with
byte-shuffle kernels (uint8 look-up tables, uint16 sums), keep the best `fetch` entries, re-score
them exactly and aggregate them into the top-k distinct classes. Inside the call `threads` workers
(kept between calls) take tasks in turn: routing a block of 8 queries (each centroid row read once
for all 8), then searching one query (so that uneven queries do not leave a worker idle). No BLAS
call: its worker threads would spin on the cores the kernel needs.

With residual codes (`pq_residual`) an entry's code holds x - its cluster's centroid, and the scan
adds the query's route score to that cluster's sums (q.x = q.centroid + q.residual).
"""

from __future__ import annotations

import ctypes

import faiss
import numpy as np

from megaclass.python_backend import native_build
from megaclass.python_backend import routed_index_storage as storage_mod

BLOCK = 32  # entries per scan block (the kernel's SIMD width in slots)
SLOT_BYTE = np.array([(v // 16) * 16 + 2 * (v % 8) + (v % 16) // 8 for v in range(BLOCK)])  # = slot_byte() in C++


def kernel(portable: bool = False) -> ctypes.CDLL:
    """The loaded kernel library (built on first use): for this CPU (AVX2 kernels where it has AVX2),
    or `portable` (the plain loops; the tests compare the two)."""
    lib = native_build.load("pq4_search", portable)
    lib.mc_pq4_simd.restype = ctypes.c_int
    lib.mc_pq4_search.restype = ctypes.c_int
    lib.mc_pq4_search.argtypes = (
        [ctypes.c_int64] * 4
        + [ctypes.c_void_p] * 4
        + [ctypes.c_int64] * 2
        + [ctypes.c_void_p] * 6
        + [ctypes.c_int64] * 3
        + [ctypes.c_void_p] * 3
    )
    return lib


def check_supported(codec: dict[str, np.ndarray]) -> None:
    """Raise ValueError unless the PQ codec is one the kernel scans: 4 bits, an even m <= 128."""
    m, ksub, _ = codec["pq_centroids"].shape
    if ksub != 16 or m % 2 or m > 128:
        raise ValueError(f"the native backend needs pq_bits=4 and an even pq_m <= 128 (got m={m}, {ksub} centroids)")


def pq4_codes(x: np.ndarray, codec: dict[str, np.ndarray]) -> np.ndarray:
    """Packed codes uint8 [n, m/2] of rows `x`: byte p holds sub-quantiser 2p (low nibble) and 2p+1 (high)."""
    cent = codec["pq_centroids"]
    m, ksub, dsub = cent.shape
    pq = faiss.ProductQuantizer(m * dsub, m, 4)
    faiss.copy_array_to_vector(np.ascontiguousarray(cent.ravel(), dtype=np.float32), pq.centroids)
    return pq.compute_codes(np.ascontiguousarray(storage_mod.rotate(x, codec), dtype=np.float32))


def build_layout(
    entry_row: np.ndarray,
    entry_list: np.ndarray,
    centroids: np.ndarray,
    vectors: np.ndarray,
    codec: dict[str, np.ndarray],
    residual: bool,
) -> dict[str, np.ndarray]:
    """The scan layout: each cluster's entries in whole blocks of BLOCK slots.

    codes uint8 [blocks, m/2, BLOCK] (one byte per slot per sub-quantiser pair; of x - centroid when
    `residual`), slot_row int64 [blocks * BLOCK] (-1: empty slot), list_block int64 [nlist] (first
    block), list_size int64 [nlist], pq_centroids_t float32 [m, dsub, 16].
    """
    m = codec["pq_centroids"].shape[0]
    nlist = len(centroids)
    order = np.argsort(entry_list, kind="stable")
    lists, rows = entry_list[order], entry_row[order]
    sizes = np.bincount(lists, minlength=nlist).astype(np.int64)
    blocks = (sizes + BLOCK - 1) // BLOCK
    first = np.concatenate([[0], np.cumsum(blocks)[:-1]]).astype(np.int64)
    total = int(blocks.sum())
    slot = first[lists] * BLOCK + (np.arange(len(lists)) - (np.cumsum(sizes) - sizes)[lists])
    slot_row = np.full(total * BLOCK, -1, dtype=np.int64)
    slot_row[slot] = rows
    packed = np.zeros((total * BLOCK, m // 2), dtype=np.uint8)
    chunk = 262144
    for s in range(0, len(rows), chunk):
        x = vectors[rows[s : s + chunk]]
        if residual:
            x = x - centroids[lists[s : s + chunk]]
        packed[slot[s : s + chunk]] = pq4_codes(x, codec)
    # Within a block, slot v's byte sits at SLOT_BYTE[v] (the order the AVX2 scorer yields its sums in).
    by_byte = np.empty(BLOCK, dtype=np.int64)
    by_byte[SLOT_BYTE] = np.arange(BLOCK)
    codes = np.ascontiguousarray(packed.reshape(total, BLOCK, m // 2)[:, by_byte, :].transpose(0, 2, 1))
    cent_t = np.ascontiguousarray(codec["pq_centroids"].transpose(0, 2, 1), dtype=np.float32)  # [m, dsub, 16]
    return {
        "codes": codes,
        "slot_row": slot_row,
        "list_block": first,
        "list_size": sizes,
        "pq_centroids_t": cent_t,
    }


def _addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


class Pq4Search:
    """The native search over one index's arrays: the layout is built once, and the addresses of every
    array that does not change between searches are taken once (a ctypes conversion costs microseconds).
    The index builds a new one whenever its entries, vectors or router change."""

    def __init__(
        self,
        *,
        entry_row: np.ndarray,
        entry_list: np.ndarray,
        centroids: np.ndarray,
        vectors: np.ndarray,
        row_class: np.ndarray,
        codec: dict[str, np.ndarray],
        residual: bool,
        portable: bool = False,
    ) -> None:
        self.lib = kernel(portable)
        self.layout = build_layout(entry_row, entry_list, centroids, vectors, codec, residual)
        self.codec = codec
        self.residual = bool(residual)
        # Held here so that the addresses below stay valid for the life of this object.
        self._arrays = {
            "centroids": np.ascontiguousarray(centroids, dtype=np.float32),
            "vectors": np.ascontiguousarray(vectors, dtype=np.float32),
            "row_class": np.ascontiguousarray(row_class, dtype=np.int64),
            **self.layout,
        }
        self.dim = int(self._arrays["centroids"].shape[1])
        self.nlist = int(len(self._arrays["centroids"]))
        self.m = int(self.layout["pq_centroids_t"].shape[0])
        self._addr = {k: _addr(v) for k, v in self._arrays.items()}

    def code_bytes(self) -> int:
        """Bytes of the scanned codes, padding included."""
        return int(self.layout["codes"].nbytes)

    @property
    def simd(self) -> bool:
        """True when the loaded kernel uses AVX2."""
        return bool(self.lib.mc_pq4_simd())

    def search(
        self, queries: np.ndarray, *, nprobe: int, fetch: int, top_k: int, threads: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top `top_k` classes per query: (class ids int64 [n, k], exact scores float32 [n, k], entries
        scanned int64 [n]); empty slots have class -1 and score -inf."""
        xq = np.ascontiguousarray(queries, dtype=np.float32)
        n = len(xq)
        xl = storage_mod.rotate(xq, self.codec)
        out_class = np.empty((n, top_k), dtype=np.int64)
        out_score = np.empty((n, top_k), dtype=np.float32)
        scanned = np.empty(n, dtype=np.int64)
        a = self._addr
        rc = self.lib.mc_pq4_search(
            n, self.dim, self.m, int(self.residual),
            _addr(xl), _addr(xq), a["pq_centroids_t"], a["centroids"],
            self.nlist, nprobe,
            a["list_block"], a["list_size"], a["codes"], a["slot_row"], a["vectors"], a["row_class"],
            fetch, top_k, max(1, threads),
            _addr(out_class), _addr(out_score), _addr(scanned),
        )  # fmt: skip
        if rc != 0:
            raise ValueError(f"native search refused its arguments (code {rc})")
        return out_class, out_score, scanned
