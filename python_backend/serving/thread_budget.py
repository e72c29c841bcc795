"""Threads per model instance: every library in a stub process gets its share of the cores.

Triton runs each model instance as its own process; a library left at its default starts one
worker per core in every one of them (ONNX Runtime's intra-op pool, OpenMP for FAISS, torch's
pool, the native scan kernel's workers), so N instances run N x cores threads that fight over
the cores. Each instance is sized to cores / instances of the model (at least one); the index's
threads are further capped by the per-stub budget the server sets (OMP_NUM_THREADS, one): a search
shares the cores with the other models' instances, and spinning OpenMP workers on a busy machine
cost far more than they give (measured: the retriever with 2 OpenMP threads beside two encoder
instances on 2 cores served a quarter of the throughput with 1).
"""

from __future__ import annotations

import dataclasses
import os
import sys


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_threads_per_instance(instances: int) -> int:
    """Cores per model instance, so that instances do not fight over cores."""
    return max(1, usable_cores() // max(1, instances))


def stub_thread_budget(instances: int) -> int:
    """Threads for the index in one instance: its share of the cores, capped by OMP_NUM_THREADS when
    the environment sets it (tritonserver's stubs get 1, see server_environment)."""
    share = cpu_threads_per_instance(instances)
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return min(share, int(cap)) if cap.isdigit() and int(cap) > 0 else share


def limit_library_threads(threads: int) -> None:
    """Size FAISS's OpenMP pool and, when loaded, torch's intra-op pool to `threads`."""
    import faiss

    faiss.omp_set_num_threads(threads)
    if "torch" in sys.modules:  # importing torch only to size it would cost the stub its memory
        sys.modules["torch"].set_num_threads(threads)


def size_index_threads(index, threads: int):
    """`index` (a RoutedIndex) searching with `threads` threads in every backend (FAISS/OpenMP,
    torch, the native kernel's workers, which otherwise start one per core); returns it."""
    index.cfg = dataclasses.replace(index.cfg, threads=threads)
    limit_library_threads(threads)
    return index
