"""What changed between a catalogue and the index that serves: classes added, removed, with changed samples.

A class's fingerprint is a hash of its enrolment samples (the bytes of its image files, or its
embeddings); the published index stores the fingerprints it was built from in its manifest
(`catalog_classes`), so the next refresh sees which kept classes got new samples. An index
published without them (built by hand) reports no changed classes.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from megaclass.export.data.catalog import Catalog


def class_fingerprints(cat: Catalog) -> dict[int, str]:
    """{class id: hash of its split=train samples, in file order}."""
    rows = cat.rows("train")
    digests: dict[int, hashlib._Hash] = {}
    for r in rows:
        c = int(cat.class_ids[r])
        h = digests.setdefault(c, hashlib.sha256())
        if cat.paths is not None:
            h.update(hashlib.sha256(cat.paths[r].read_bytes()).digest())
        else:
            h.update(np.ascontiguousarray(cat.embeddings[r]).tobytes())
    return {c: h.hexdigest()[:16] for c, h in digests.items()}


def catalog_fingerprint(cat: Catalog) -> str:
    """One hash of the whole catalogue: every class's samples, labels and the query rows."""
    h = hashlib.sha256()
    for c, fp in sorted(class_fingerprints(cat).items()):
        h.update(f"{c}:{fp}:{cat.labels.get(c, '')};".encode())
    for r in cat.rows("query"):
        h.update(f"q{int(cat.class_ids[r])}".encode())
        h.update(cat.paths[r].read_bytes() if cat.paths is not None else cat.embeddings[r].tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class CatalogDiff:
    added: list[int]
    removed: list[int]
    changed: list[int]  # kept classes whose samples changed (re-enrolled)
    kept: int
    catalog_classes: int

    @property
    def new_class_share(self) -> float:
        return len(self.added) / max(self.catalog_classes, 1)

    @property
    def unchanged(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{len(self.added)} classes added, {len(self.removed)} removed, {len(self.changed)} with changed samples, "
            f"{self.kept} kept ({self.catalog_classes} in the catalogue)"
        )


def diff_catalog(cat: Catalog, serving_classes: np.ndarray, serving_fingerprints: dict[str, str]) -> CatalogDiff:
    """Classes of `cat` (split=train) against the serving index's classes and stored fingerprints."""
    fps = class_fingerprints(cat)
    want, have = set(fps), {int(c) for c in np.asarray(serving_classes).tolist()}
    kept = want & have
    changed = sorted(c for c in kept if str(c) in serving_fingerprints and serving_fingerprints[str(c)] != fps[c])
    return CatalogDiff(sorted(want - have), sorted(have - want), changed, len(kept), len(want))
