"""Catalogue against the serving index: added, removed and changed classes."""

from __future__ import annotations

import numpy as np

from megaclass.export.data.catalog import read_catalog, write_catalog_csv
from megaclass.export.lifecycle.catalog_diff import catalog_fingerprint, class_fingerprints, diff_catalog


def _catalog(path, ids, shift=None):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(ids), 4)).astype(np.float32)
    if shift is not None:
        emb[np.isin(ids, shift)] += 1
    return read_catalog(write_catalog_csv(path, np.array(ids), [f"c{c}" for c in ids], embeddings=emb))


def test_added_removed_and_changed_classes(tmp_path):
    old = _catalog(tmp_path / "old.csv", [1, 1, 2, 3])
    new = _catalog(tmp_path / "new.csv", [1, 1, 2, 4], shift=[2])
    stored = {str(c): fp for c, fp in class_fingerprints(old).items()}
    d = diff_catalog(new, np.array([1, 2, 3]), stored)
    assert (d.added, d.removed, d.changed, d.kept, d.catalog_classes) == ([4], [3], [2], 2, 3)
    assert d.new_class_share == 1 / 3 and not d.unchanged and "1 classes added" in d.summary()
    assert diff_catalog(new, np.array([1, 2, 3]), {}).changed == []  # no stored fingerprints: none known changed


def test_fingerprint_follows_the_content(tmp_path):
    a, b = _catalog(tmp_path / "a.csv", [1, 2]), _catalog(tmp_path / "b.csv", [1, 2])
    assert catalog_fingerprint(a) == catalog_fingerprint(b)
    assert catalog_fingerprint(a) != catalog_fingerprint(_catalog(tmp_path / "c.csv", [1, 2], shift=[1]))
