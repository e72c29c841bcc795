"""Glyph data set: missing-glyph detection, arrays, splits, balanced subsets, cache."""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fontTools.fontBuilder import FontBuilder
from fontTools.pens.ttGlyphPen import TTGlyphPen

from megaclass.export.config import GlyphDataConfig, replace
from megaclass.export.data import fonts as F
from megaclass.export.data import glyphs as G

DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
LATIN = ((0x41, 0x5A), (0x61, 0x7A))  # A-Z, a-z

pytestmark = pytest.mark.skipif(not DEJAVU.is_dir(), reason="DejaVu fonts are not installed")


def _contour(pen: TTGlyphPen, x0: int, y0: int, x1: int, y1: int, clockwise: bool = True) -> None:
    pts = [(x0, y0), (x0, y1), (x1, y1), (x1, y0)]
    pen.moveTo(pts[0] if clockwise else pts[-1])
    for p in pts[1:] if clockwise else pts[-2::-1]:
        pen.lineTo(p)
    pen.closePath()


def make_test_font(path: Path) -> Path:
    """A hand-made TrueType font.

    cmap: A -> a filled rectangle (a real glyph), B -> an empty outline, C -> a copy of the
    .notdef box, D -> .notdef (glyph 0). E is not in the cmap. Only A may become a sample.
    """

    def box():  # a hollow rectangle, the usual .notdef
        pen = TTGlyphPen(None)
        _contour(pen, 50, 0, 550, 700)
        _contour(pen, 100, 50, 500, 650, clockwise=False)
        return pen.glyph()

    rect = TTGlyphPen(None)
    _contour(rect, 100, 0, 500, 700)
    order = [".notdef", "A", "B", "C"]
    fb = FontBuilder(1000, isTTF=True)
    fb.setupGlyphOrder(order)
    fb.setupCharacterMap({0x41: "A", 0x42: "B", 0x43: "C", 0x44: ".notdef"})
    fb.setupGlyf({".notdef": box(), "A": rect.glyph(), "B": TTGlyphPen(None).glyph(), "C": box()})
    fb.setupHorizontalMetrics({g: (600, 50) for g in order})
    fb.setupHorizontalHeader(ascent=800, descent=-200)
    fb.setupNameTable({"familyName": "MegaclassTest", "styleName": "Regular"})
    fb.setupOS2(sTypoAscender=800, usWinAscent=800, usWinDescent=200)
    fb.setupPost()
    fb.save(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_cfg() -> GlyphDataConfig:
    return GlyphDataConfig(
        font_dirs=(str(DEJAVU),),
        ranges=LATIN,
        min_fonts_per_class=3,
        held_out_fonts=2,
        held_out_class_fraction=0.2,
        workers=1,
        seed=0,
    )


@pytest.fixture(scope="module")
def tiny(tiny_cfg: GlyphDataConfig, tmp_path_factory: pytest.TempPathFactory) -> G.GlyphDataset:
    return G.render_glyph_dataset(tiny_cfg, tmp_path_factory.mktemp("cache"), progress=False)


# --- missing-glyph detection ----------------------------------------------------------------


def test_hand_made_font_only_real_glyph_is_a_sample(tmp_path: Path) -> None:
    (tmp_path / "fonts").mkdir()
    make_test_font(tmp_path / "fonts" / "test.ttf")
    spec = str(tmp_path / "fonts" / "test.ttf")
    cfg = GlyphDataConfig(font_dirs=(str(tmp_path / "fonts"),), ranges=((0x41, 0x45),), min_fonts_per_class=1)
    # cmap: D maps to glyph 0 and E is absent, so neither is a candidate.
    assert F.font_codepoints(spec, np.arange(0x41, 0x46)).tolist() == [0x41, 0x42, 0x43]
    # Rendering: B is empty, C is the fallback box, so only A survives.
    _, tried, kept, images = G._render_task((0, spec, np.array([0x41, 0x42, 0x43]), cfg))
    assert tried == 3 and kept.tolist() == [0x41]
    font = F.load_font(spec, cfg)
    assert F.render_char(font, "B", cfg) is None
    fallback = F.fallback_rendering(spec, font, cfg)
    assert fallback is not None and np.array_equal(F.render_char(font, "C", cfg), fallback)
    # A filled 400x700-unit rectangle: a solid block, centred horizontally.
    a = images[0]
    cols = np.flatnonzero(a.max(0) > 0)
    assert a.max() == 255 and abs((cols[0] + cols[-1]) / 2 - (cfg.image_size - 1) / 2) <= 0.5
    ds = G.render_glyph_dataset(cfg, tmp_path / "cache", progress=False)
    assert ds.labels() == ["A"] and len(ds) == 1


def test_code_point_absent_from_cmap_is_not_a_sample(tmp_path: Path) -> None:
    spec = str(DEJAVU / "DejaVuSans.ttf")
    assert 0x4E2D not in F.font_codepoints(spec, np.array([0x41, 0x4E2D]))  # DejaVu has no CJK
    cfg = GlyphDataConfig(font_dirs=(str(DEJAVU),), ranges=((0x41, 0x41), (0x4E2D, 0x4E2D)), min_fonts_per_class=1)
    ds = G.render_glyph_dataset(cfg, tmp_path, progress=False)
    assert ds.codepoints.tolist() == [0x41]


def test_fallback_box_of_a_real_font_is_rejected() -> None:
    spec = str(DEJAVU / "DejaVuSans.ttf")
    cfg = GlyphDataConfig()
    font = F.load_font(spec, cfg)
    pua = 0xE0A5  # private use, not in DejaVu Sans: renders as the .notdef box
    assert pua not in F.font_codepoints(spec, np.array([pua]))
    box = F.render_char(font, chr(pua), cfg)
    assert box is not None and np.array_equal(box, F.fallback_rendering(spec, font, cfg))
    _, _, kept, _ = G._render_task((0, spec, np.array([0x41, pua]), cfg))
    assert kept.tolist() == [0x41]


# --- arrays ---------------------------------------------------------------------------------


def test_dataset_arrays(tiny: G.GlyphDataset, tiny_cfg: GlyphDataConfig) -> None:
    S = tiny_cfg.image_size
    assert tiny.images.shape == (len(tiny), S, S) and tiny.images.dtype == np.uint8
    assert tiny.class_index.dtype == np.int64 and tiny.font_index.dtype == np.int32
    assert tiny.codepoints.tolist() == list(range(0x41, 0x5B)) + list(range(0x61, 0x7B))
    assert tiny.labels()[:3] == ["A", "B", "C"]
    assert np.bincount(tiny.class_index).min() >= tiny_cfg.min_fonts_per_class
    # dedupe: no two rows of a class are byte-identical
    keys = {(c, im.tobytes()) for c, im in zip(tiny.class_index, tiny.images, strict=True)}
    assert len(keys) == len(tiny)
    sub = tiny.subset(tiny.class_index == 0)
    assert len(sub) == np.sum(tiny.class_index == 0) and sub.fonts is tiny.fonts


def test_parallel_rendering_equals_serial(tmp_path: Path) -> None:
    cfg = GlyphDataConfig(font_dirs=(str(DEJAVU),), ranges=((0x41, 0x48),), workers=1)
    serial = G.render_glyph_dataset(cfg, tmp_path / "a", progress=False)
    parallel = G.render_glyph_dataset(replace(cfg, workers=2), tmp_path / "b", progress=False)
    assert np.array_equal(serial.images, parallel.images)
    assert np.array_equal(serial.font_index, parallel.font_index)


# --- cache ----------------------------------------------------------------------------------


def test_cache_hit_is_fast_and_equal(tiny: G.GlyphDataset, tiny_cfg: GlyphDataConfig, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    first = G.render_glyph_dataset(tiny_cfg, tmp_path, progress=False)
    t1 = time.perf_counter()
    second = G.render_glyph_dataset(tiny_cfg, tmp_path, progress=False)
    t2 = time.perf_counter()
    assert t2 - t1 < (t1 - t0) / 3 and t2 - t1 < 0.5
    for a, b in ((first, second), (first, tiny)):  # also equal to the module fixture's render
        assert np.array_equal(a.images, b.images) and np.array_equal(a.class_index, b.class_index)
        assert np.array_equal(a.codepoints, b.codepoints) and a.fonts == b.fonts
    assert len(list(tmp_path.glob("glyphs-*.npz"))) == 1


def test_cache_key_follows_config_and_font_files(tmp_path: Path) -> None:
    shutil.copy(DEJAVU / "DejaVuSans.ttf", tmp_path / "a.ttf")
    cfg = GlyphDataConfig(font_dirs=(str(tmp_path),))
    key = G.cache_key(cfg)
    assert G.cache_key(replace(cfg, workers=7)) == key  # workers do not change the result
    assert G.cache_key(replace(cfg, image_size=24)) != key
    st = os.stat(tmp_path / "a.ttf")
    os.utime(tmp_path / "a.ttf", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert G.cache_key(cfg) != key
    shutil.copy(DEJAVU / "DejaVuSerif.ttf", tmp_path / "b.ttf")
    assert len({key, G.cache_key(cfg)}) == 2


# --- splits ---------------------------------------------------------------------------------


def test_split_invariants(tiny: G.GlyphDataset, tiny_cfg: GlyphDataConfig) -> None:
    sp = G.split_glyphs(tiny, tiny_cfg)
    held_fonts = {tiny.fonts.index(f) for f in sp.held_out_font_names}
    assert len(held_fonts) == tiny_cfg.held_out_fonts
    train_classes = set(sp.train.class_index.tolist())
    held_classes = set(sp.held_out_classes.class_index.tolist())
    assert len(held_classes) == round(tiny_cfg.held_out_class_fraction * len(tiny.codepoints))
    assert not train_classes & held_classes  # no held-out class row in train
    assert set(sp.held_out_fonts.class_index.tolist()) <= train_classes  # queries have training rows
    assert not held_fonts & set(sp.train.font_index.tolist())  # held-out fonts not in train
    assert set(sp.held_out_fonts.font_index.tolist()) <= held_fonts
    # held-out classes keep every row, in every font
    assert len(sp.held_out_classes) == np.isin(tiny.class_index, list(held_classes)).sum()
    assert len(sp.train) + len(sp.held_out_fonts) + len(sp.held_out_classes) <= len(tiny)
    # held-out fonts are among the 4n fonts covering the most classes
    coverage = np.bincount(tiny.font_index, minlength=len(tiny.fonts))
    assert all(coverage[f] >= np.sort(coverage)[-4 * tiny_cfg.held_out_fonts] for f in held_fonts)


def test_split_is_deterministic_by_seed(tiny: G.GlyphDataset, tiny_cfg: GlyphDataConfig) -> None:
    a, b = G.split_glyphs(tiny, tiny_cfg), G.split_glyphs(tiny, tiny_cfg)
    assert a.held_out_font_names == b.held_out_font_names
    assert np.array_equal(a.held_out_classes.class_index, b.held_out_classes.class_index)
    others = [G.split_glyphs(tiny, replace(tiny_cfg, seed=s)) for s in range(1, 4)]
    assert any(
        set(o.held_out_classes.class_index.tolist()) != set(a.held_out_classes.class_index.tolist()) for o in others
    )


def test_split_drops_queries_without_training_rows() -> None:
    # Class 0 exists only in fonts 0 and 1; class 1 in fonts 0, 1 and 2.
    ds = G.GlyphDataset(
        images=np.zeros((5, 4, 4), np.uint8),
        class_index=np.array([0, 0, 1, 1, 1]),
        font_index=np.array([0, 1, 0, 1, 2], np.int32),
        codepoints=np.array([0x41, 0x42]),
        fonts=["f0", "f1", "f2"],
    )
    sp = G.split_glyphs(ds, GlyphDataConfig(held_out_fonts=2, held_out_class_fraction=0.0))
    assert sp.held_out_font_names == ["f0", "f1"]  # the two fonts covering the most classes
    assert sp.train.class_index.tolist() == [1] and sp.train.font_index.tolist() == [2]
    assert sp.held_out_fonts.class_index.tolist() == [1, 1]  # class 0 has no training row left
    with pytest.raises(ValueError, match="no training font"):
        G.split_glyphs(ds, GlyphDataConfig(held_out_fonts=3))


# --- balanced subsets -----------------------------------------------------------------------


def test_fair_and_balanced_shares_by_hand() -> None:
    assert G.fair_shares({"a": 1, "b": 10, "c": 10}, 11) == {"a": 1, "b": 5, "c": 5}
    assert G.fair_shares({"a": 1, "b": 2}, 10) == {"a": 1, "b": 2}
    # primary scripts get up to half, the small groups are filled, CJK gets the rest
    assert G.balanced_shares({"latin": 100, "greek": 10, "cjk": 1000, "kana": 5}, 40) == {
        "latin": 10,
        "greek": 10,
        "cjk": 15,
        "kana": 5,
    }
    assert G.balanced_shares({"latin": 100, "cjk": 3}, 40) == {"latin": 37, "cjk": 3}
    assert G.balanced_shares({"latin": 5, "cjk": 1000}, 40) == {"latin": 5, "cjk": 35}
    assert G.script_of(ord("中")) == "cjk" and G.script_of(ord("Ж")) == "cyrillic" and G.script_of(0x2192) == "symbols"


def test_max_classes_subset_is_balanced_and_seeded(tmp_path: Path) -> None:
    ranges = ((0x41, 0x5A), (0x391, 0x3A9), (0x410, 0x42F), (0x5D0, 0x5EA))  # Latin, Greek, Cyrillic, Hebrew
    cfg = GlyphDataConfig(font_dirs=(str(DEJAVU),), ranges=ranges, max_classes=30, workers=1)
    a = G.render_glyph_dataset(cfg, tmp_path, progress=False)
    b = G.render_glyph_dataset(replace(cfg, workers=2), tmp_path / "b", progress=False)
    c = G.render_glyph_dataset(replace(cfg, seed=1), tmp_path, progress=False)
    full = G.render_glyph_dataset(replace(cfg, max_classes=None), tmp_path, progress=False)
    assert len(a.codepoints) == 30 and np.array_equal(a.codepoints, b.codepoints)
    assert set(a.codepoints.tolist()) != set(c.codepoints.tolist())
    assert set(a.codepoints.tolist()) <= set(full.codepoints.tolist())
    sizes = Counter(G.script_of(int(cp)) for cp in full.codepoints)
    got = Counter(G.script_of(int(cp)) for cp in a.codepoints)
    assert dict(got) == {g: n for g, n in G.balanced_shares(dict(sizes), 30).items() if n}
    # rows of a class are the same as in the full set (the subset only drops classes)
    cls = a.codepoints[0]
    rows_a = a.images[a.codepoints[a.class_index] == cls]
    rows_full = full.images[full.codepoints[full.class_index] == cls]
    assert np.array_equal(rows_a, rows_full)


# --- progress ---------------------------------------------------------------------------------


def test_rendering_shows_a_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = GlyphDataConfig(font_dirs=(str(DEJAVU),), ranges=((0x41, 0x43),), workers=1)
    G.render_glyph_dataset(cfg, tmp_path, progress=True)
    captured = capsys.readouterr()
    assert "render glyphs" in captured.err  # the tqdm bar, on stderr
    assert "glyphs: 3 classes" in captured.out
    G.render_glyph_dataset(cfg, tmp_path / "quiet", progress=False)
    assert capsys.readouterr() == ("", "")
