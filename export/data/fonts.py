"""Installed fonts: finding them, the code points they really cover, and rendering one character.

A font is named by a spec: "path", or "path#face" for a face of a .ttc collection. Every font is
rendered by the same rule (`render_char`), so glyphs keep their relative size and position.
"""

from __future__ import annotations

import os
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from fontTools.ttLib import TTCollection, TTFont
from PIL import Image, ImageDraw, ImageFont

from megaclass.export.config import GlyphDataConfig

FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
BASELINE = 0.8  # baseline position inside the em square, from its top
MIN_INK = 32  # a rendering whose brightest pixel is below this counts as empty
# Unicode categories that never become classes: controls, format, surrogates, private use,
# unassigned, separators (whitespace).
EXCLUDED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
# Code points tried, in order, for a font's fallback (.notdef) rendering.
UNMAPPED_PROBES = (0x10FFFD, 0xFFFFD, 0x10FFFC, 0xE000, 0xF8FF)


def font_files(font_dirs: Iterable[str | Path]) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of every font file under `font_dirs`, sorted by path.

    A file reached through several paths (symlinks) is listed once, under its first path.
    """
    paths = sorted(
        os.path.join(root, name)
        for d in font_dirs
        for root, _, names in os.walk(d)
        for name in names
        if name.lower().endswith(FONT_SUFFIXES)
    )
    seen: set[str] = set()
    out = []
    for path in paths:
        real = os.path.realpath(path)
        if real in seen or not os.path.isfile(real):
            continue
        seen.add(real)
        st = os.stat(real)
        out.append((path, st.st_size, st.st_mtime_ns))
    return out


def split_spec(spec: str) -> tuple[str, int]:
    """ "path#face" -> (path, face); "path" -> (path, 0)."""
    path, sep, face = spec.rpartition("#")
    if sep and face.isdigit() and path.lower().endswith(".ttc"):
        return path, int(face)
    return spec, 0


def find_fonts(font_dirs: Iterable[str | Path]) -> list[str]:
    """Every usable font face under `font_dirs` (recursive): "path", or "path#face" for .ttc faces.

    A file or face that fontTools or FreeType cannot open, or that has no cmap table, is
    skipped with a warning.
    """
    specs = []
    for path, _, _ in font_files(font_dirs):
        try:
            if path.lower().endswith(".ttc"):
                n_faces = len(TTCollection(path, lazy=True).fonts)
                candidates = [f"{path}#{i}" for i in range(n_faces)]
            else:
                candidates = [path]
        except Exception as e:  # noqa: BLE001 - any unreadable file is skipped
            warnings.warn(f"skipping font {path}: {e}", stacklevel=2)
            continue
        for spec in candidates:
            try:
                file, face = split_spec(spec)
                if "cmap" not in TTFont(file, fontNumber=face, lazy=True):
                    raise ValueError("no cmap table")
                ImageFont.truetype(file, 16, index=face)
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"skipping font {spec}: {e}", stacklevel=2)
                continue
            specs.append(spec)
    return specs


def allowed_codepoints(ranges: Sequence[tuple[int, int]]) -> np.ndarray:
    """Code points in the inclusive `ranges`, minus whitespace, controls, unassigned and private use."""
    cps = sorted({cp for lo, hi in ranges for cp in range(lo, hi + 1)})
    return np.array(
        [cp for cp in cps if unicodedata.category(chr(cp)) not in EXCLUDED_CATEGORIES and not chr(cp).isspace()],
        dtype=np.int64,
    )


def font_codepoints(spec: str, allowed: np.ndarray) -> np.ndarray:
    """The `allowed` code points in the font's cmap that map to a real glyph (not glyph 0)."""
    file, face = split_spec(spec)
    font = TTFont(file, fontNumber=face, lazy=True)
    cmap = font.getBestCmap() or {}
    notdef = font.getGlyphOrder()[0]
    mapped = np.array(sorted(cp for cp, name in cmap.items() if name != notdef), dtype=np.int64)
    return mapped[np.isin(mapped, allowed)]


# ---------------------------------------------------------------------------------------------
# Rendering


def load_font(spec: str, cfg: GlyphDataConfig) -> ImageFont.FreeTypeFont:
    """The font at the rendering size: the em square is `em_fraction` of the (supersampled) image."""
    file, face = split_spec(spec)
    em_px = cfg.em_fraction * cfg.image_size * cfg.supersample
    return ImageFont.truetype(file, em_px, index=face, layout_engine=ImageFont.Layout.BASIC)


def render_char(font: ImageFont.FreeTypeFont, ch: str, cfg: GlyphDataConfig) -> np.ndarray | None:
    """Render one character, uint8 `[S, S]` white on black; None when the bitmap is empty.

    Same rule for every font: em square at `em_fraction` of the image, baseline at BASELINE of
    the em square, ink centred horizontally; a glyph that would not fit is shrunk and centred.
    """
    S, ss = cfg.image_size, cfg.supersample
    F = S * ss
    x0, y0, x1, y1 = font.getbbox(ch, anchor="ls")
    if x1 <= x0 or y1 <= y0:
        return None
    canvas = Image.new("L", (x1 - x0, y1 - y0))
    ImageDraw.Draw(canvas).text((-x0, -y0), ch, font=font, fill=255, anchor="ls")
    box = canvas.getbbox()
    if box is None:
        return None
    ink = canvas.crop(box)
    w, h = ink.size
    if h > F or w > F:
        s = min(F / h, F / w)
        w, h = max(1, min(F, round(w * s))), max(1, min(F, round(h * s)))
        ink = ink.resize((w, h), Image.Resampling.BOX)
        top = (F - h) // 2
    else:
        em_px = cfg.em_fraction * F
        baseline = round((F - em_px) / 2 + BASELINE * em_px)
        top = min(max(baseline + y0 + box[1], 0), F - h)
    frame = Image.new("L", (F, F))
    frame.paste(ink, ((F - w) // 2, top))
    img = np.asarray(frame.reduce(ss) if ss > 1 else frame)
    return img if img.max() >= MIN_INK else None


def fallback_rendering(spec: str, font: ImageFont.FreeTypeFont, cfg: GlyphDataConfig) -> np.ndarray | None:
    """The font's rendering of a code point it surely lacks (its .notdef / fallback box)."""
    file, face = split_spec(spec)
    cmap = TTFont(file, fontNumber=face, lazy=True).getBestCmap() or {}
    probe = next((cp for cp in UNMAPPED_PROBES if cp not in cmap), None)
    return None if probe is None else render_char(font, chr(probe), cfg)
