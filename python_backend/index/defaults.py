"""The index's "auto" settings made concrete at build: the fastest form this machine supports.

`IndexConfig()` leaves `backend`, `storage`, `spill` and `pq_residual` on "auto"/None. At build they
become the configuration measured fastest at a given search recall (docs/benchmarks.md, "Routed
index"): the native kernel scanning residual 4-bit PQ codes with one SOAR spill, an exact re-rank
and class aggregation in one call. Where that kernel cannot run (no C++ compiler, a dimension it
cannot split into an even number of sub-quantisers <= 128) the index says so once, in one line, and
uses FAISS with flat storage. Sets too small to train 4-bit codebooks well (under
`MIN_COMPRESSED_ROWS` prototypes) are stored flat: scanning them exactly costs microseconds.
Explicit settings are never changed.
"""

from __future__ import annotations

import dataclasses
import sys

from megaclass.python_backend.index.config import IndexConfig

MIN_COMPRESSED_ROWS = 1000
MAX_NATIVE_PQ_M = 128
_NOTICED: set[str] = set()


NATIVE_PQ_M_FLOOR = 64  # sub-quantisers the default gives any dimension that has 64 of 2+ dimensions each


def native_pq_m(dim: int, pq_m: int | None) -> int | None:
    """Sub-quantisers for the native kernel: `pq_m`, else the largest even divisor of `dim` that is at
    most max(64, dim / 4), dim / 2 and 128. None when `dim` has none.

    64 sub-quantisers of 2 dimensions each at 128-d were 10-28 % faster at recall 0.95 than 32 of 4
    (glyph embeddings twice, synthetic 1M; docs/benchmarks.md): the finer codes need a re-rank half as
    deep. Wider embeddings keep 4 dimensions each (96 at 384-d measured level with 64), up to 128."""
    if pq_m is not None:
        return pq_m if pq_m % 2 == 0 and pq_m <= MAX_NATIVE_PQ_M and dim % pq_m == 0 else None
    for m in range(min(max(NATIVE_PQ_M_FLOOR, dim // 4), dim // 2, MAX_NATIVE_PQ_M), 1, -1):
        if m % 2 == 0 and dim % m == 0:
            return m
    return None


def native_available() -> str | None:
    """None when the native kernel builds and loads here, else why not (one line)."""
    from megaclass.python_backend.index.native import build as native_build

    try:
        native_build.load("pq4_search")
    except native_build.NativeUnavailable as exc:
        return str(exc).splitlines()[0]
    return None


def _notice(reason: str) -> None:
    """Say once per process, in one line, why the index is not on its fastest path."""
    if reason not in _NOTICED:
        _NOTICED.add(reason)
        print(f"megaclass index: {reason}; using the FAISS backend with flat storage", file=sys.stderr)


def _wants_native(cfg: IndexConfig, rows: int, dim: int) -> tuple[bool, int | None]:
    """(use the native compressed path, its pq_m) for the "auto" fields of `cfg`."""
    if cfg.backend not in ("auto", "native") or cfg.storage not in ("auto", "pq") or cfg.pq_bits != 4:
        return False, None
    if cfg.backend == "auto" and cfg.storage == "auto" and rows < MIN_COMPRESSED_ROWS:
        return False, None
    pq_m = native_pq_m(dim, cfg.pq_m)
    if pq_m is None:
        _notice(f"the native kernel needs an even number of sub-quantisers <= 128 dividing dimension {dim}")
        return False, None
    reason = native_available()
    if reason is not None:
        _notice(reason)
        return False, None
    return True, pq_m


def resolve(cfg: IndexConfig, rows: int, dim: int) -> IndexConfig:
    """`cfg` with every "auto"/None field of the fast path made concrete for `rows` prototypes of `dim`."""
    auto = cfg.backend == "auto" or cfg.storage == "auto" or cfg.spill is None or cfg.pq_residual is None
    if not auto:
        return cfg
    native, pq_m = _wants_native(cfg, rows, dim) if "auto" in (cfg.backend, cfg.storage) else (False, None)
    if native:
        return dataclasses.replace(
            cfg,
            backend="native",
            storage="pq",
            pq_m=pq_m,
            spill=1 if cfg.spill is None else cfg.spill,
            pq_residual=True if cfg.pq_residual is None else cfg.pq_residual,
        )
    backend = "faiss" if cfg.backend == "auto" else cfg.backend
    storage = cfg.storage
    if storage == "auto":
        storage = "pq" if backend == "native" else "flat"
    residual = cfg.pq_residual
    if residual is None:
        residual = backend == "native" and storage == "pq"
    spill = cfg.spill if cfg.spill is not None else (1 if backend == "native" else 0)
    return dataclasses.replace(cfg, backend=backend, storage=storage, pq_residual=residual, spill=spill)


# The settings IndexConfig() had before "auto": FAISS scanning exact float32 vectors, no spill. A
# baseline to compare against, and what code that relies on exact scores pins.
FAISS_FLAT: dict[str, object] = {"backend": "faiss", "storage": "flat", "spill": 0, "pq_residual": False}
