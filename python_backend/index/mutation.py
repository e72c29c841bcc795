"""Changing a built index: add and remove prototypes without re-clustering, re-train the router after
drift, drop removed rows. Functions over a RoutedIndex that its methods call under its write lock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

import faiss
import numpy as np

from megaclass.python_backend.index import storage as storage_mod
from megaclass.python_backend.index.layout import assign_new, route_rows, train_codec
from megaclass.python_backend.index.result import labels_for
from megaclass.python_backend.index.validation import check_prototypes

if TYPE_CHECKING:
    from megaclass.python_backend.index.routed_index import RoutedIndex


def add(index: RoutedIndex, prototypes: np.ndarray, class_ids: np.ndarray, labels: Mapping[int, str] | None) -> None:
    """Store more prototypes (new classes or more prototypes of known ones) in their nearest clusters.

    New class ids need a label in `labels`; a known class keeps its label (a different one is refused).
    """
    xb, ids = check_prototypes(prototypes, class_ids, index.dim)
    labels = labels or {}
    with index._lock.write():
        new = np.setdiff1d(np.unique(ids), index._classes)
        known = np.intersect1d(np.unique(ids), index._classes)
        changed = [int(c) for c in known if int(c) in labels and labels[int(c)] != index.label_of(c)[()]]
        if changed:
            raise ValueError(f"class(es) {changed[:5]} already have a different label")
        new_labels = labels_for(new, labels)
        first = len(index._vectors)
        rows = np.arange(first, first + len(xb))
        lists, spill_rows, spill_lists = assign_new(xb, index.centroids, index.cfg)
        entry_row = np.concatenate([rows, rows[spill_rows]])
        entry_list = np.concatenate([lists, spill_lists])
        index._vectors = np.concatenate([index._vectors, xb])
        index._row_class = np.concatenate([index._row_class, ids])
        index._entry_row = np.concatenate([index._entry_row, entry_row])
        index._entry_list = np.concatenate([index._entry_list, entry_list])
        allc = np.concatenate([index._classes, new])
        alll = np.concatenate([index._labels, new_labels])
        order = np.argsort(allc, kind="stable")
        index._classes, index._labels = allc[order], alll[order]
        if index._faiss is not None:  # the FAISS lists take the new entries in place
            ivf, _ = index._faiss
            storage_mod.faiss_add(ivf, index.cfg.storage, index.codec, index._vectors[entry_row], entry_row, entry_list)
            index._refresh(ivf)
        else:
            index._refresh()


def remove(index: RoutedIndex, class_ids: np.ndarray) -> int:
    """Drop every prototype of the given classes; returns how many prototypes were removed."""
    ids = np.unique(np.asarray(class_ids, dtype=np.int64))
    with index._lock.write():
        dead_rows = np.flatnonzero(np.isin(index._row_class, ids))
        if len(dead_rows) == 0:
            return 0
        index._row_class = index._row_class.copy()
        index._row_class[dead_rows] = -1
        keep = index._row_class[index._entry_row] >= 0
        index._entry_row, index._entry_list = index._entry_row[keep], index._entry_list[keep]
        alive = ~np.isin(index._classes, ids)
        index._classes, index._labels = index._classes[alive], index._labels[alive]
        if index._faiss is not None:  # the FAISS lists drop the entries in place
            ivf, _ = index._faiss
            ivf.remove_ids(faiss.IDSelectorBatch(dead_rows.astype(np.int64)))
            index._refresh(ivf)
        else:
            index._refresh()
        return int(len(dead_rows))


def rebuild_router(index: RoutedIndex, progress: bool = False) -> None:
    """Re-cluster all live prototypes and re-train the codec (after drift: `needs_rebuild`).

    An index routed by groups (a taxonomy level) keeps them: each row's group is its primary cluster
    (added rows: the nearest one), the centroids are re-computed, clusters left empty are dropped."""
    with index._lock.write():
        compact(index)
        source = index.manifest.get("router", {}).get("source", "kmeans")
        groups = None
        if source == "groups":
            rows, first = np.unique(index._entry_row, return_index=True)  # a row's first entry is its primary
            groups = np.full(len(index._vectors), -1, dtype=np.int64)
            groups[rows] = index._entry_list[first]
        nlist = min(index.nlist, len(index._vectors))
        route = route_rows(index._vectors, nlist, index.cfg, progress, groups)
        index.centroids, index._entry_row, index._entry_list = route
        index.nlist = len(index.centroids)
        index.cfg = dataclasses.replace(index.cfg, nlist=index.nlist)
        index.codec = train_codec(index._vectors, index.cfg, index.centroids, index._entry_row, index._entry_list)
        index._refresh()
        index.manifest["router"] = {"mean_residual": index.mean_residual(), "source": source}


def compact(index: RoutedIndex) -> bool:
    """Drop removed rows and renumber the rest; True if rows were renumbered (refresh needed).

    The caller holds the write lock."""
    live = index._row_class >= 0
    if live.all():
        return False
    new_id = np.cumsum(live) - 1
    index._vectors = index._vectors[live]
    index._row_class = index._row_class[live]
    index._entry_row = new_id[index._entry_row]
    return True
