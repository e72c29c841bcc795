"""Glyph data set: characters rendered from the installed fonts.

Class = Unicode code point; sample = one font's rendering of it, uint8 `[S, S]`, glyph white
on black (the convention of `preprocess.py`). A (font, code point) pair is a sample only when
the code point is in the font's cmap (and not mapped to glyph 0), the rendering is not empty
and differs from that font's rendering of a surely-unmapped code point (its fallback box).
Rendering runs in worker processes and is cached as one `.npz` keyed by the configuration and
the font files (path, size, mtime).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import multiprocessing.pool
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ImageFont
from tqdm import tqdm

from megaclass.export.config import GlyphDataConfig, config_hash, replace
from megaclass.export.data.fonts import (
    allowed_codepoints,
    fallback_rendering,
    find_fonts,
    font_codepoints,
    font_files,
    load_font,
    render_char,
)

RENDER_VERSION = 1  # bump when the rendering rule (fonts.render_char) changes, so old caches are not reused
CHUNK = 1000  # code points per rendering task

# Script groups for balanced subsets: (group, first, last).
SCRIPT_BLOCKS: tuple[tuple[str, int, int], ...] = (
    ("latin", 0x0000, 0x036F),
    ("greek", 0x0370, 0x03FF),
    ("cyrillic", 0x0400, 0x052F),
    ("hebrew", 0x0590, 0x05FF),
    ("arabic", 0x0600, 0x077F),
    ("hangul", 0x1100, 0x11FF),
    ("latin", 0x1E00, 0x1EFF),
    ("greek", 0x1F00, 0x1FFF),
    ("symbols", 0x2000, 0x2BFF),
    ("latin", 0x2C60, 0x2C7F),
    ("cyrillic", 0x2DE0, 0x2DFF),
    ("cjk", 0x2E80, 0x2FDF),
    ("symbols", 0x3000, 0x303F),
    ("kana", 0x3040, 0x30FF),
    ("hangul", 0x3130, 0x318F),
    ("kana", 0x31F0, 0x31FF),
    ("cjk", 0x3400, 0x4DBF),
    ("cjk", 0x4E00, 0x9FFF),
    ("cyrillic", 0xA640, 0xA69F),
    ("latin", 0xA720, 0xA7FF),
    ("hangul", 0xAC00, 0xD7AF),
    ("cjk", 0xF900, 0xFAFF),
    ("arabic", 0xFB50, 0xFDFF),
    ("arabic", 0xFE70, 0xFEFF),
    ("symbols", 0xFF00, 0xFFEF),
)
# Groups served first, up to half of `max_classes`; the other groups share the rest.
PRIMARY_SCRIPTS = ("latin", "greek", "cyrillic", "symbols")


@dataclass
class GlyphDataset:
    """Rendered glyphs: one row per (font, code point) sample."""

    images: np.ndarray  # uint8 [N, S, S]
    class_index: np.ndarray  # int64 [N], index into codepoints
    font_index: np.ndarray  # int32 [N], index into fonts
    codepoints: np.ndarray  # int64 [C] (class id = code point)
    fonts: list[str]  # "path" or "path#face" for .ttc faces

    def __len__(self) -> int:
        return len(self.images)

    def labels(self) -> list[str]:
        """The character of each class, e.g. "A", "中"."""
        return [chr(int(c)) for c in self.codepoints]

    def subset(self, mask: np.ndarray) -> GlyphDataset:
        """Rows selected by a boolean mask or an index array; classes and fonts unchanged."""
        return GlyphDataset(
            images=self.images[mask],
            class_index=self.class_index[mask],
            font_index=self.font_index[mask],
            codepoints=self.codepoints,
            fonts=self.fonts,
        )


@dataclass
class GlyphSplits:
    """Training rows and the two evaluation sets."""

    train: GlyphDataset  # training rows (train fonts, trained classes)
    held_out_fonts: GlyphDataset  # queries: trained classes rendered in the held-out fonts
    held_out_classes: GlyphDataset  # all rows of classes never trained on (for enrolment)
    held_out_font_names: list[str]


# ---------------------------------------------------------------------------------------------
# Rendering in worker processes

_WORKER_FONTS: dict[str, tuple[ImageFont.FreeTypeFont, np.ndarray | None]] = {}


def _render_task(
    task: tuple[int, str, np.ndarray, GlyphDataConfig],
) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Render a chunk of one font's code points; keep the non-empty ones unlike the fallback.

    Returns (font index, code points tried, code points kept, images).
    """
    font_idx, spec, cps, cfg = task
    key = f"{spec}|{config_hash(cfg)}"
    if key not in _WORKER_FONTS:
        font = load_font(spec, cfg)
        _WORKER_FONTS[key] = (font, fallback_rendering(spec, font, cfg))
    font, fallback = _WORKER_FONTS[key]
    kept, images = [], []
    for cp in cps:
        img = render_char(font, chr(int(cp)), cfg)
        if img is None or (fallback is not None and np.array_equal(img, fallback)):
            continue
        kept.append(cp)
        images.append(img)
    S = cfg.image_size
    out = np.stack(images) if images else np.zeros((0, S, S), np.uint8)
    return font_idx, len(cps), np.array(kept, dtype=np.int64), out


def _scan_task(task: tuple[str, np.ndarray]) -> np.ndarray | None:
    """font_codepoints, or None (with a warning) for a font that fails to open."""
    spec, allowed = task
    try:
        return font_codepoints(spec, allowed)
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"skipping font {spec}: {e}", stacklevel=2)
        return None


def _assemble(
    chunks: list[tuple[int, int, np.ndarray, np.ndarray]], image_size: int, dedupe: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rendered chunks -> (code point, font index, image) rows sorted by (code point, font).

    With `dedupe`, a row byte-identical to an earlier font's row of the same code point is dropped.
    """
    if not chunks:
        return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros((0, image_size, image_size), np.uint8)
    cps = np.concatenate([c[2] for c in chunks])
    fis = np.concatenate([np.full(len(c[2]), c[0], np.int32) for c in chunks])
    imgs = np.concatenate([c[3] for c in chunks])
    order = np.lexsort((fis, cps))
    cps, fis, imgs = cps[order], fis[order], imgs[order]
    if dedupe and len(cps):
        seen: set[tuple[int, bytes]] = set()
        keep = np.zeros(len(cps), bool)
        for i in range(len(cps)):
            k = (int(cps[i]), hashlib.blake2b(imgs[i].tobytes(), digest_size=16).digest())
            if k not in seen:
                seen.add(k)
                keep[i] = True
        cps, fis, imgs = cps[keep], fis[keep], imgs[keep]
    return cps, fis, imgs


# ---------------------------------------------------------------------------------------------
# Balanced subsets


def script_of(cp: int) -> str:
    """Script group of a code point (see SCRIPT_BLOCKS), "other" outside them."""
    for name, lo, hi in SCRIPT_BLOCKS:
        if lo <= cp <= hi:
            return name
    return "other"


def fair_shares(sizes: dict[str, int], budget: int) -> dict[str, int]:
    """Split `budget` over groups as evenly as their sizes allow (water-filling, max-min fair)."""
    out = dict.fromkeys(sizes, 0)
    left = min(budget, sum(sizes.values()))
    open_groups = sorted(g for g, n in sizes.items() if n > 0)
    while left > 0 and open_groups:
        each = max(1, left // len(open_groups))
        for g in list(open_groups):
            take = min(each, sizes[g] - out[g], left)
            out[g] += take
            left -= take
            if out[g] == sizes[g]:
                open_groups.remove(g)
            if left == 0:
                break
    return out


def balanced_shares(sizes: dict[str, int], budget: int) -> dict[str, int]:
    """Per-script class counts for a subset of `budget` classes.

    PRIMARY_SCRIPTS (Latin, Greek, Cyrillic, symbols) get up to half of the budget, the other
    scripts (CJK, Hangul, kana, ...) share the rest, each group split evenly as far as the
    group sizes allow; what one side cannot use goes to the other.
    """
    primary = {g: n for g, n in sizes.items() if g in PRIMARY_SCRIPTS}
    rest = {g: n for g, n in sizes.items() if g not in PRIMARY_SCRIPTS}
    p = fair_shares(primary, min(sum(primary.values()), budget // 2))
    r = fair_shares(rest, budget - sum(p.values()))
    p = fair_shares(primary, budget - sum(r.values()))
    return {**p, **r}


def _script_permutations(cps: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Code points grouped by script, each group in a seeded random order."""
    rng = np.random.default_rng(seed)
    scripts = np.array([script_of(int(c)) for c in cps])
    return {g: rng.permutation(cps[scripts == g]) for g in sorted(set(scripts.tolist()))}


# ---------------------------------------------------------------------------------------------
# The data set


def cache_key(cfg: GlyphDataConfig) -> str:
    """Key of the rendered set: the config (less `workers`) and the font files' path, size, mtime."""
    return config_hash(replace(cfg, workers=0), font_files(cfg.font_dirs), RENDER_VERSION)


def _save(path: Path, ds: GlyphDataset) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        images=ds.images,
        class_index=ds.class_index,
        font_index=ds.font_index,
        codepoints=ds.codepoints,
        fonts=np.array(ds.fonts, dtype=str),
    )
    os.replace(tmp, path)


def _load(path: Path) -> GlyphDataset:
    with np.load(path, allow_pickle=False) as z:
        return GlyphDataset(
            images=z["images"],
            class_index=z["class_index"],
            font_index=z["font_index"],
            codepoints=z["codepoints"],
            fonts=z["fonts"].tolist(),
        )


def render_glyph_dataset(cfg: GlyphDataConfig, cache_dir: Path, progress: bool = True) -> GlyphDataset:
    """Render (or load from `cache_dir`) the glyph data set described by `cfg`.

    Classes are the allowed code points of `cfg.ranges` with at least `min_fonts_per_class`
    distinct renderings. With `max_classes`, a seeded subset balanced across scripts (see
    `balanced_shares`); only as many classes as that needs are rendered.
    """
    path = Path(cache_dir) / f"glyphs-{cache_key(cfg)}.npz"
    if path.exists():
        return _load(path)
    start = time.perf_counter()
    fonts = find_fonts(cfg.font_dirs)
    allowed = allowed_codepoints(cfg.ranges)
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    pool = ctx.Pool(cfg.workers) if cfg.workers > 1 else None
    try:
        scans = list((pool.map if pool else map)(_scan_task, [(spec, allowed) for spec in fonts]))
        cover = {fi: cps for fi, cps in enumerate(scans) if cps is not None and len(cps)}
        counts = np.zeros(len(allowed), np.int64)
        for cps in cover.values():
            counts[np.searchsorted(allowed, cps)] += 1
        candidates = allowed[counts >= cfg.min_fonts_per_class]
        with tqdm(total=0, desc="render glyphs", unit="glyph", disable=not progress) as bar:
            cps, fis, imgs = _render_selection(candidates, cover, fonts, cfg, pool, bar)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    codepoints, class_index = np.unique(cps, return_inverse=True)
    ds = GlyphDataset(
        images=imgs,
        class_index=class_index.astype(np.int64),
        font_index=fis.astype(np.int32),
        codepoints=codepoints.astype(np.int64),
        fonts=fonts,
    )
    _save(path, ds)
    if progress:
        print(
            f"glyphs: {len(ds.codepoints)} classes, {len(ds)} samples from {len(fonts)} fonts "
            f"in {time.perf_counter() - start:.1f} s -> {path}"
        )
    return ds


def _render_selection(
    candidates: np.ndarray,
    cover: dict[int, np.ndarray],
    fonts: list[str],
    cfg: GlyphDataConfig,
    pool: multiprocessing.pool.Pool | None,
    bar: tqdm,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render candidate classes in rounds until the (balanced) selection is complete.

    Without `max_classes` one round renders every candidate. With it, each script's candidates
    are rendered in seeded order until the script has as many surviving classes as its share;
    shares are computed from each script's estimated usable classes (its survival rate so far
    times its candidates), so a script whose first batch has no survivors gets no share.
    """
    perms = _script_permutations(candidates, cfg.seed)
    done = dict.fromkeys(perms, 0)  # candidates of each script rendered so far (a prefix of perms)
    survivors: dict[str, list[int]] = {g: [] for g in perms}
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    want = {g: len(p) for g, p in perms.items()}
    while True:
        # A script's usable classes, estimated from its survival rate so far (1 before any render).
        rate = {g: len(survivors[g]) / done[g] if done[g] else 1.0 for g in perms}
        if cfg.max_classes is not None:
            sizes = {g: len(survivors[g]) + int(rate[g] * (len(p) - done[g])) for g, p in perms.items()}
            want = balanced_shares(sizes, cfg.max_classes)
        todo = {}
        for g, p in perms.items():
            need = want[g] - len(survivors[g])
            if need > 0 and done[g] < len(p):
                n = int(np.ceil(need / max(rate[g], 0.05) * 1.1)) + 16
                todo[g] = p[done[g] : done[g] + n]
                done[g] += len(todo[g])
        if not todo:
            break
        new = np.sort(np.concatenate(list(todo.values())))
        pairs = {fi: cps[np.isin(cps, new)] for fi, cps in cover.items()}
        pairs = {fi: cps for fi, cps in pairs.items() if len(cps)}
        tasks = [(fi, fonts[fi], c[i : i + CHUNK], cfg) for fi, c in pairs.items() for i in range(0, len(c), CHUNK)]
        bar.total += sum(len(t[2]) for t in tasks)
        bar.refresh()
        chunks = []
        for result in pool.imap_unordered(_render_task, tasks) if pool else map(_render_task, tasks):
            chunks.append(result)
            bar.update(result[1])
        cps, fis, imgs = _assemble(chunks, cfg.image_size, cfg.dedupe)
        uniq, n_fonts = np.unique(cps, return_counts=True)
        ok = set(uniq[n_fonts >= cfg.min_fonts_per_class].tolist())
        for g, p in todo.items():
            survivors[g].extend(int(c) for c in p if int(c) in ok)
        rows.append((cps, fis, imgs))
    selected = np.array(sorted(c for g in perms for c in survivors[g][: want[g]]), dtype=np.int64)
    cps = np.concatenate([r[0] for r in rows]) if rows else np.zeros(0, np.int64)
    fis = np.concatenate([r[1] for r in rows]) if rows else np.zeros(0, np.int32)
    S = cfg.image_size
    imgs = np.concatenate([r[2] for r in rows]) if rows else np.zeros((0, S, S), np.uint8)
    keep = np.isin(cps, selected)
    cps, fis, imgs = cps[keep], fis[keep], imgs[keep]
    order = np.lexsort((fis, cps))
    return cps[order], fis[order], imgs[order]


# ---------------------------------------------------------------------------------------------
# Splits


def choose_held_out_fonts(ds: GlyphDataset, rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of `n` fonts drawn (seeded) among the 4n fonts covering the most classes in `rows`.

    Font families are not considered: a held-out face may have siblings (other weights, TTC
    faces) in training; byte-identical renderings were already dropped by `dedupe`.
    """
    if n <= 0:
        return np.zeros(0, np.int64)
    pairs = np.unique(np.stack([ds.font_index[rows], ds.class_index[rows]]), axis=1)
    coverage = np.bincount(pairs[0], minlength=len(ds.fonts))
    used = np.flatnonzero(coverage)
    if n >= len(used):
        raise ValueError(f"held_out_fonts={n} leaves no training font ({len(used)} fonts have samples)")
    ranked = used[np.lexsort((used, -coverage[used]))]
    rng = np.random.default_rng([seed, 2])
    return np.sort(rng.choice(ranked[: 4 * n], size=n, replace=False))


def split_glyphs(ds: GlyphDataset, cfg: GlyphDataConfig) -> GlyphSplits:
    """Split into training rows, held-out-font queries and held-out classes (all seeded by cfg.seed).

    Held-out classes: a fraction `held_out_class_fraction` of the classes; all their rows (every
    font) go to `held_out_classes`, none to train. Held-out fonts: see `choose_held_out_fonts`;
    their rows of the other classes are the queries, kept only for classes that still have a
    training row in another font.
    """
    C = len(ds.codepoints)
    n_hc = int(round(cfg.held_out_class_fraction * C))
    held_class = np.zeros(C, bool)
    held_class[np.random.default_rng([cfg.seed, 1]).permutation(C)[:n_hc]] = True
    row_hc = held_class[ds.class_index]
    held_fonts = choose_held_out_fonts(ds, ~row_hc, cfg.held_out_fonts, cfg.seed)
    row_hf = np.isin(ds.font_index, held_fonts)
    train = ~row_hc & ~row_hf
    trained = np.zeros(C, bool)
    trained[ds.class_index[train]] = True
    queries = row_hf & ~row_hc & trained[ds.class_index]
    return GlyphSplits(
        train=ds.subset(train),
        held_out_fonts=ds.subset(queries),
        held_out_classes=ds.subset(row_hc),
        held_out_font_names=[ds.fonts[i] for i in held_fonts],
    )
