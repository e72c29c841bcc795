"""Data sources: the glyph set's enrolment rows (training fonts) and queries (held-out fonts)."""

from __future__ import annotations

import numpy as np

from megaclass.export.config import GlyphDataConfig
from megaclass.export.data.data_sources import enrolment_rows
from megaclass.export.data.glyphs import GlyphDataset, split_glyphs


def test_enrolment_rows_are_training_fonts_and_queries_held_out_fonts() -> None:
    ds = GlyphDataset(
        images=np.zeros((6, 4, 4), np.uint8),
        class_index=np.array([0, 0, 0, 1, 1, 1]),
        font_index=np.array([0, 1, 2, 0, 1, 2], np.int32),
        codepoints=np.array([0x41, 0x42]),
        fonts=["f0", "f1", "f2"],
    )
    splits = split_glyphs(ds, GlyphDataConfig(held_out_fonts=1, held_out_class_fraction=0.0))
    rows = enrolment_rows(ds, splits)
    held = np.isin(ds.font_index, [ds.fonts.index(f) for f in splits.held_out_font_names])
    assert held.sum() == 2
    assert np.array_equal(rows["query"], held) and np.array_equal(rows["enrol"], ~held)
