"""The native backend of the routed index: one compiled call per batch over 4-bit PQ lists.

`native/pq4_search.cpp` does, per query, what the FAISS backend does in several calls with Python
between them: route the query (int8 centroid scores with a proven error bound, the few clusters the
bound cannot rule out scored again in float32, so the probes are exact), scan the `nprobe` clusters'
4-bit PQ codes with byte-shuffle kernels (uint8 look-up tables, uint16 sums), keep the best `fetch`
entries, re-rank them (8-bit codes of the exact vectors with an error bound rule out most of them;
only the rows that could still be a top-k class's best are read in float32) and aggregate the exact
scores into the top-k distinct classes. Inside the call `threads` workers (kept between calls) take
tasks in turn: routing a block of 8 queries (each centroid block read once for all 8), then searching
one query (so that uneven queries do not leave a worker idle). No BLAS call: its worker threads
would spin on the cores the kernel needs.

With residual codes (`pq_residual`) an entry's code holds x - its cluster's centroid, and the scan
adds the query's route score to that cluster's sums (q.x = q.centroid + q.residual).
"""

from __future__ import annotations

import ctypes

import faiss
import numpy as np

from megaclass.python_backend.index import storage as storage_mod
from megaclass.python_backend.index.native import build as native_build

BLOCK = 32  # entries per scan block (the kernel's SIMD width in slots)
SLOT_BYTE = np.array([(v // 16) * 16 + 2 * (v % 8) + (v % 16) // 8 for v in range(BLOCK)])  # = slot_byte() in C++


class Args(ctypes.Structure):
    """The kernel's arguments (struct mc_pq4_args in pq4_search.cpp, field for field)."""

    _fields_ = [
        *((name, ctypes.c_int64) for name in ("nq", "dim", "m", "nlist", "nprobe", "fetch", "top_k", "residual", "threads")),
        ("probe_margin", ctypes.c_double),
        *((name, ctypes.c_void_p) for name in (
            "xq_lut", "xq", "centroids", "route_codes", "route_scale", "route_l1", "route_sum", "pq_centroids",
            "list_block", "list_size", "codes", "slot_row", "vectors", "row_codes", "row_step", "row_class",
            "out_class", "out_score", "out_counts",
        )),
    ]  # fmt: skip


def kernel(target: str = "native") -> ctypes.CDLL:
    """The loaded kernel library (built on first use) for a native_build target: "native" for this CPU
    (AVX2 kernels where it has AVX2, AVX-512 VNNI routing where it has that), "portable" (the plain
    loops) or "avx2"; the tests compare their answers."""
    lib = native_build.load("pq4_search", target)
    lib.mc_pq4_simd.restype = ctypes.c_int
    lib.mc_pq4_search.restype = ctypes.c_int
    lib.mc_pq4_search.argtypes = [ctypes.POINTER(Args)]
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
    `residual`), slot_row int32 [blocks * BLOCK] (-1: empty slot), list_block int64 [nlist] (first
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
    if len(vectors) >= 2**31:
        raise ValueError(f"the native backend holds row numbers in int32: {len(vectors)} rows is too many")
    slot_row = np.full(total * BLOCK, -1, dtype=np.int32)
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


ROUTE_LANES = 16  # centroids per block of the int8 routing table (the kernel's SIMD width in int32 lanes)


def route_table(centroids: np.ndarray) -> dict[str, np.ndarray]:
    """The int8 routing table: each centroid c ~ scale_c * c8 (|c8| <= 127, round to nearest).

    route_codes int8 [ceil(nlist/16), dim4/4, 16, 4]: blocks of 16 centroids, 4 consecutive dimensions of
    each centroid side by side (one vpdpbusd multiplies 4 query bytes into all 16 lanes); dim4 is dim
    rounded up to 4, padding zeros. Per centroid (padded to the block): route_scale (0 for padding),
    route_l1 = scale_c * sum |c8| (for the kernel's error bound) and route_sum = sum c8 (int32).
    """
    c = np.asarray(centroids, dtype=np.float32)
    nlist, dim = c.shape
    nblk, d4 = -(-nlist // ROUTE_LANES), -(-dim // 4) * 4
    top = np.abs(c).max(axis=1)
    scale = np.where(top > 0, top / np.float32(127), 0).astype(np.float32)
    inv = np.where(top > 0, np.float32(127) / np.where(top > 0, top, 1), 0).astype(np.float32)
    c8 = np.zeros((nblk * ROUTE_LANES, d4), dtype=np.int8)
    c8[:nlist, :dim] = np.clip(np.rint(c * inv[:, None]), -127, 127)
    padded = np.zeros(nblk * ROUTE_LANES, dtype=np.float32)
    padded[:nlist] = scale
    return {
        "route_codes": np.ascontiguousarray(c8.reshape(nblk, ROUTE_LANES, d4 // 4, 4).transpose(0, 2, 1, 3)),
        "route_scale": padded,
        "route_l1": (padded * np.abs(c8.astype(np.int32)).sum(axis=1)).astype(np.float32),
        "route_sum": c8.astype(np.int32).sum(axis=1).astype(np.int32),
    }


def row_record_bytes(dim: int) -> int:
    """Bytes of one prototype's codes in `row_codes` (8-bit codes, then 4-bit refinements two per byte)."""
    return dim + (dim + 1) // 2


def row_codes(vectors: np.ndarray) -> dict[str, np.ndarray]:
    """Codes of the exact vectors for the re-rank's first passes: x_d ~ lo_d + (c8 + (c4 - 7) / 14) step_d,
    with lo and step per dimension from the rows' range. c8 rounds (x_d - lo_d) / step_d to the nearest
    integer (error <= step_d / 2), c4 the remainder to the nearest 14th (error <= step_d / 28); the
    kernel's error bounds rely on both. row_codes uint8 [rows, dim + ceil(dim/2)]: per row the dim bytes
    of c8, then c4 two per byte (dimension 2j in the low nibble of byte j); row_step float32 [dim]."""
    x = np.asarray(vectors, dtype=np.float32)
    n, dim = x.shape
    codes = np.zeros((n, row_record_bytes(dim)), dtype=np.uint8)
    if not n:
        return {"row_codes": codes, "row_step": np.zeros(dim, np.float32)}
    lo, hi = x.min(axis=0), x.max(axis=0)
    step = ((hi - lo) / np.float32(255)).astype(np.float32)
    safe = np.where(step > 0, step, 1).astype(np.float32)
    chunk = 262144
    for s in range(0, n, chunk):
        t = (x[s : s + chunk] - lo) / safe
        c8 = np.clip(np.rint(t), 0, 255)
        c4 = (np.clip(np.rint((t - c8) * 14), -7, 7) + 7).astype(np.uint8)
        if dim % 2:
            c4 = np.concatenate([c4, np.full((len(c4), 1), 7, np.uint8)], axis=1)
        codes[s : s + chunk, :dim] = c8
        codes[s : s + chunk, dim:] = c4[:, 0::2] | (c4[:, 1::2] << 4)
    return {"row_codes": codes, "row_step": step}


def _addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


class Pq4Search:
    """The native search over one index's arrays: the tables are built once, and the addresses of every
    array that does not change between searches are set once in the kernel's argument struct. The index
    builds a new one whenever its entries, vectors or router change."""

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
        target: str = "native",
    ) -> None:
        self.lib = kernel(target)
        self.layout = build_layout(entry_row, entry_list, centroids, vectors, codec, residual)
        self.codec = codec
        self.residual = bool(residual)
        # Held here so that the addresses below stay valid for the life of this object.
        self._arrays = {
            "centroids": np.ascontiguousarray(centroids, dtype=np.float32),
            "vectors": np.ascontiguousarray(vectors, dtype=np.float32),
            "row_class": np.ascontiguousarray(row_class, dtype=np.int64),
            **route_table(centroids),
            **row_codes(vectors),
            **{k: v for k, v in self.layout.items() if k != "pq_centroids_t"},
            "pq_centroids": self.layout["pq_centroids_t"],
        }
        self.dim = int(self._arrays["centroids"].shape[1])
        self.nlist = int(len(self._arrays["centroids"]))
        self.m = int(self.layout["pq_centroids_t"].shape[0])
        self._args = Args(dim=self.dim, m=self.m, nlist=self.nlist, residual=int(self.residual))
        for name, arr in self._arrays.items():
            setattr(self._args, name, _addr(arr))

    def table_bytes(self) -> dict[str, int]:
        """Bytes the kernel holds beside the index's own arrays: the scanned codes (padding included),
        the slot rows, and the int8 router and the rows' 8- and 4-bit codes."""
        a = self._arrays
        tables = ("route_codes", "route_scale", "route_l1", "route_sum", "row_codes", "row_step")
        return {
            "codes": int(a["codes"].nbytes),
            "slot_row": int(a["slot_row"].nbytes),
            "tables": int(sum(a[k].nbytes for k in tables)),
        }

    @property
    def simd(self) -> int:
        """The loaded kernel's instruction set: 2 AVX-512 VNNI (routing) + AVX2, 1 AVX2, 0 portable loops."""
        return int(self.lib.mc_pq4_simd())

    def search(
        self,
        queries: np.ndarray,
        *,
        nprobe: int,
        fetch: int,
        top_k: int,
        threads: int,
        probe_margin: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top `top_k` classes per query: (class ids int64 [n, k], exact scores float32 [n, k], counts
        int64 [4, n]); empty slots have class -1 and score -inf. The answer is that of an exact re-rank
        of the best `fetch` entries by scan score. counts: per query the entries scanned, the distinct
        rows scored with their codes, the rows scored in float32, the clusters probed (`probe_margin`:
        see router.drop_far_probes)."""
        xq = np.ascontiguousarray(queries, dtype=np.float32)
        n = len(xq)
        xl = storage_mod.rotate(xq, self.codec)
        # One buffer for all outputs: an address costs ~1 us in Python, a ~400 us batch makes several.
        out = np.empty(n * (12 * top_k + 32), dtype=np.uint8)
        base = _addr(out)
        out_class = out[: 8 * n * top_k].view(np.int64).reshape(n, top_k)
        counts = out[8 * n * top_k : 8 * n * (top_k + 4)].view(np.int64).reshape(4, n)
        out_score = out[8 * n * (top_k + 4) :].view(np.float32).reshape(n, top_k)
        a = Args.from_buffer_copy(self._args)  # this call's own copy: callers may search concurrently
        a.nq, a.nprobe, a.fetch, a.top_k, a.threads = n, nprobe, fetch, top_k, max(1, threads)
        a.probe_margin = np.inf if probe_margin is None else probe_margin
        a.xq = _addr(xq)
        a.xq_lut = a.xq if xl is xq else _addr(xl)
        a.out_class, a.out_counts, a.out_score = base, base + 8 * n * top_k, base + 8 * n * (top_k + 4)
        rc = self.lib.mc_pq4_search(ctypes.byref(a))
        if rc <= -2:  # the kernel checks the values (RoutedIndex.search leaves it to it)
            raise ValueError(f"queries contain NaN or infinity (first in row {-2 - rc})")
        if rc != 0:
            raise ValueError(f"native search refused its arguments (code {rc})")
        return out_class, out_score, counts
