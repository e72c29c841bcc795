"""Capacity measurements behind docs/scaling.md: what one class costs in memory, per storage form.

For each storage form the routed index is built over `classes` random unit vectors (memory does
not depend on how the vectors are spread), saved, and loaded again in a fresh Python process,
which reports its resident memory before and after the load (and after a first search, so
lazily built structures count), both as the process holds it and after `malloc_trim` hands
freed heap back (the memory the index itself keeps alive). Measuring at two sizes separates the fixed cost (interpreter,
libraries) from the cost per class. Also reported: the index's own account
(`RoutedIndex.memory_bytes`), the bytes on disk, the load time (what the startup probe waits
for) and single-thread search throughput.

    python -m megaclass.loadtest.benchmarks.capacity --classes 100000,300000 --dim 128 --out capacity.json
    python -m megaclass.loadtest.benchmarks.capacity --make-repository runs/sized --classes 100000 --storage flat
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STORAGES = ("flat", "fp16", "sq8", "pq")

_PROBE = r"""
import json, sys, time, gc
import numpy as np, psutil
proc = psutil.Process()
import faiss  # noqa: F401  (libraries loaded before the baseline)
from megaclass.python_backend.index.routed_index import RoutedIndex
gc.collect(); base = proc.memory_info().rss
t = time.perf_counter(); index = RoutedIndex.load(sys.argv[1]); load_s = time.perf_counter() - t
q = np.random.default_rng(1).standard_normal((256, index.dim)).astype(np.float32)
q /= np.linalg.norm(q, axis=1, keepdims=True)
index.search(q[:8], top_k=5)
t = time.perf_counter(); index.search(q, top_k=5); search_s = time.perf_counter() - t
gc.collect(); rss = proc.memory_info().rss
import ctypes; ctypes.CDLL("libc.so.6").malloc_trim(0); live = proc.memory_info().rss
print(json.dumps({"rss_delta": rss - base, "rss_live_delta": live - base, "load_s": load_s, "qps_1thread": len(q) / search_s,
                  "memory_bytes": index.memory_bytes(), "num_entries": index.num_entries}))
"""


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def measure(classes: int, dim: int, storage: str, work: Path, label_len: int = 12) -> dict:
    """Build, save and reload one index in a fresh process; returns what it cost."""
    from megaclass.export.config import IndexConfig
    from megaclass.python_backend.index.routed_index import RoutedIndex

    ids = np.arange(classes, dtype=np.int64)
    labels = {int(c): f"c{int(c):0{label_len - 1}d}" for c in ids}
    t = time.perf_counter()
    index = RoutedIndex.build(unit_vectors(classes, dim), ids, labels, IndexConfig(storage=storage, threads=1))
    build_s = time.perf_counter() - t
    directory = work / f"{storage}-{classes}"
    index.save(directory)
    del index
    disk = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    env = {"OMP_NUM_THREADS": "1"}
    import os

    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(directory)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"classes": classes, "dim": dim, "storage": storage, "build_s": build_s, "disk_bytes": disk, **row}


def per_class(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Bytes per class (slope between the smallest and largest size) per storage form."""
    out = {}
    for storage in sorted({r["storage"] for r in rows}, key=STORAGES.index):
        rs = sorted((r for r in rows if r["storage"] == storage), key=lambda r: r["classes"])
        lo, hi = rs[0], rs[-1]
        dn = max(hi["classes"] - lo["classes"], 1)
        account = {k: (hi["memory_bytes"][k] - lo["memory_bytes"][k]) / dn for k in hi["memory_bytes"]}
        out[storage] = {
            "rss_bytes_per_class": (hi["rss_delta"] - lo["rss_delta"]) / dn,
            "rss_live_bytes_per_class": (hi["rss_live_delta"] - lo["rss_live_delta"]) / dn,
            "disk_bytes_per_class": (hi["disk_bytes"] - lo["disk_bytes"]) / dn,
            **{f"{k}_bytes_per_class": v for k, v in account.items()},
            "load_s_per_million": (hi["load_s"] - lo["load_s"]) / dn * 1e6,
            "qps_1thread_at_largest": hi["qps_1thread"],
        }
    return out


def sized_repository(root: Path, classes: int, storage: str = "flat", image_size: int = 32, seed: int = 0) -> Path:
    """A model repository of the demo's shape at another scale, for throughput runs.

    The demo's encoder architecture (GlyphEncoder, 32x32 input, 128-d), untrained (throughput
    does not depend on the weights), exported to ONNX, and a routed index over `classes` random
    unit prototypes, with the default serving settings. Returns the repository directory.
    """
    import torch

    from megaclass.export.config import ExportConfig, IndexConfig, ServingConfig, TrainConfig
    from megaclass.export.convert.onnx_export import export_onnx
    from megaclass.export.repository.generate import ModelShapes, build_repository
    from megaclass.python_backend.index.routed_index import RoutedIndex
    from megaclass.python_backend.serving.encoder_model import build_encoder

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    train = TrainConfig()
    model = build_encoder(train, image_size).eval()
    onnx_path = root / "encoder.onnx"
    export_onnx(model, onnx_path, ExportConfig(), image_size=image_size)
    ids = np.arange(classes, dtype=np.int64)
    index = RoutedIndex.build(
        unit_vectors(classes, train.embedding_dim, seed),
        ids,
        {int(c): f"class-{int(c)}" for c in ids},
        IndexConfig(storage=storage),
    )
    index.save(root / "index")
    repo = root / "repo"
    build_repository(
        repo, onnx_path, root / "index", ModelShapes(image_size, train.embedding_dim), ServingConfig(), ExportConfig()
    )
    return repo


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", default="100000,300000", help="two or more sizes, comma-separated")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--storage", default=",".join(STORAGES))
    p.add_argument("--out", default=None, help="write the measurements as JSON")
    p.add_argument(
        "--make-repository",
        default=None,
        metavar="DIR",
        help="instead: write a demo-shaped repository with the first --classes size and --storage into DIR",
    )
    args = p.parse_args(argv)
    if args.make_repository:
        repo = sized_repository(Path(args.make_repository), int(args.classes.split(",")[0]), args.storage.split(",")[0])
        print(repo)
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="megaclass-capacity-") as tmp:
        for storage in args.storage.split(","):
            for n in (int(c) for c in args.classes.split(",")):
                row = measure(n, args.dim, storage, Path(tmp))
                rows.append(row)
                print(
                    f"{storage:>5} {n:>9} classes: RSS +{row['rss_delta'] / 2**20:8.1f} MiB, disk {row['disk_bytes'] / 2**20:8.1f} MiB, "
                    f"load {row['load_s']:.2f} s, build {row['build_s']:.1f} s, {row['qps_1thread']:.0f} queries/s (1 thread)",
                    file=sys.stderr,
                )
    result = {"rows": rows, "per_class": per_class(rows)}
    print(json.dumps(result["per_class"], indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
