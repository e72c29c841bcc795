"""The routed index: class prototypes searched by inner product after cluster-first routing.

Public surface: `RoutedIndex` (build, search, add / remove, save / load), its `IndexConfig`, the
`SearchResult` it answers with, and `build`, `tune`, `search` over files (`P.npy`, `L.txt`, `Q.npy`:
file_ops.py, behind `megaclass index build|tune|search`).

All but IndexConfig are imported on first use, so that reading the configuration (the offline
pipeline's `MegaclassConfig` holds one) does not load FAISS.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from megaclass.python_backend.index.config import IndexConfig

if TYPE_CHECKING:
    from megaclass.python_backend.index.file_ops import build_index as build
    from megaclass.python_backend.index.file_ops import search_index as search
    from megaclass.python_backend.index.file_ops import tune_index as tune
    from megaclass.python_backend.index.result import SearchResult
    from megaclass.python_backend.index.routed_index import RoutedIndex

__all__ = ["IndexConfig", "RoutedIndex", "SearchResult", "build", "search", "tune"]

_LAZY = {  # public name: (module, name there)
    "RoutedIndex": ("routed_index", "RoutedIndex"),
    "SearchResult": ("result", "SearchResult"),
    "build": ("file_ops", "build_index"),
    "tune": ("file_ops", "tune_index"),
    "search": ("file_ops", "search_index"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    globals()[name] = value
    return value
