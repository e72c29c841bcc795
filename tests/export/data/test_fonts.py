"""Installed fonts: discovery, the code points they cover, and the one rendering rule."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from megaclass.export.config import GlyphDataConfig
from megaclass.export.data import fonts as F

DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
WQY = Path("/usr/share/fonts/truetype/wqy")

pytestmark = pytest.mark.skipif(not DEJAVU.is_dir(), reason="DejaVu fonts are not installed")


def test_whitespace_and_controls_are_not_classes() -> None:
    allowed = F.allowed_codepoints(((0x1F, 0x22), (0xA0, 0xA1), (0x2028, 0x2029), (0xE000, 0xE001)))
    assert allowed.tolist() == [0x21, 0x22, 0xA1]
    assert F.render_char(F.load_font(str(DEJAVU / "DejaVuSans.ttf"), GlyphDataConfig()), " ", GlyphDataConfig()) is None


def test_find_fonts_skips_broken_files_and_names_ttc_faces(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    shutil.copy(DEJAVU / "DejaVuSans.ttf", tmp_path / "sub" / "DejaVuSans.ttf")
    (tmp_path / "broken.ttf").write_bytes(b"not a font")
    os.symlink(tmp_path / "sub" / "DejaVuSans.ttf", tmp_path / "link.ttf")  # same file twice
    with pytest.warns(UserWarning, match="broken.ttf"):
        fonts = F.find_fonts([tmp_path])
    assert len(fonts) == 1  # the symlinked copy is listed once
    if WQY.is_dir():
        ttc = [f for f in F.find_fonts([WQY]) if ".ttc#" in f]
        assert ttc and all(F.split_spec(f)[1] == int(f.rsplit("#", 1)[1]) for f in ttc)


def test_same_scaling_rule_keeps_relative_size_and_position() -> None:
    cfg = GlyphDataConfig()
    for name in ("DejaVuSans.ttf", "DejaVuSerif-Bold.ttf"):
        font = F.load_font(str(DEJAVU / name), cfg)
        small, big = (F.render_char(font, c, cfg) for c in "oO")
        comma, quote = (F.render_char(font, c, cfg) for c in ",'")
        height = [np.ptp(np.flatnonzero(im.max(1) > 0)) for im in (small, big)]
        assert height[0] < 0.85 * height[1]  # "o" stays smaller than "O"
        rows = [np.flatnonzero(im.max(1) > 0).mean() for im in (comma, quote)]
        assert rows[0] > rows[1] + 8  # the comma sits low, the apostrophe high
        assert small.dtype == np.uint8 and small.shape == (32, 32) and small[0, 0] == 0


CJK_FONT_DIRS = [
    Path(p)
    for p in (
        "/usr/share/fonts/opentype/noto",
        "/usr/share/fonts/truetype/arphic",
        "/usr/share/fonts/truetype/wqy",
        "/usr/share/fonts/opentype/ipafont-gothic",
        "/usr/share/fonts/opentype/ipafont-mincho",
    )
    if Path(p).is_dir()
]


@pytest.mark.skipif(len(CJK_FONT_DIRS) < 3, reason="Debian's CJK font packages are not installed")
def test_cjk_fonts_give_20000_classes() -> None:
    """With the CJK packages, 20,000+ code points are real glyphs (in the cmap, not glyph 0) of enough fonts.

    Counted from the cmaps, without rendering; the full render of the default config (23,324
    classes on the development machine) only drops fallback boxes, empty bitmaps and duplicates.
    """
    cfg = GlyphDataConfig()
    allowed = F.allowed_codepoints(cfg.ranges)
    counts = np.zeros(len(allowed), np.int64)
    for spec in F.find_fonts(cfg.font_dirs):
        counts[np.searchsorted(allowed, F.font_codepoints(spec, allowed))] += 1
    assert int(np.sum(counts >= cfg.min_fonts_per_class)) >= 20_000
