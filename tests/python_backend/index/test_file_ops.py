"""The file-based functions behind `megaclass index build|tune|search` (file_ops.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from megaclass.python_backend.index.config import IndexConfig
from megaclass.python_backend.index.file_ops import build_index, search_index, tune_index
from megaclass.python_backend.index.routed_index import RoutedIndex
from megaclass.python_backend.index.tuning import search_recall_at_k


def test_build_tune_search_from_files(files: dict, tmp_path: Path) -> None:
    d = files["dir"]
    out = tmp_path / "index"
    index = build_index(d / "P.npy", d / "L.txt", out, IndexConfig(nlist=30, kmeans_iters=8, spill=1))
    assert index.num_classes == 1000 and index.num_prototypes == 3000
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["labels"].endswith("L.txt")

    result = tune_index(out, d / "Q.npy", target_recall=0.9, top_k=5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["nprobe"] == result.nprobe and manifest["tuning"]["reached"]
    assert manifest["params"]["probe_margin"] == result.probe_margin
    loaded = RoutedIndex.load(out)  # checksums still hold after the manifest rewrite
    assert loaded.cfg.nprobe == result.nprobe and loaded.cfg.probe_margin == result.probe_margin

    npz = search_index(out, d / "Q.npy", tmp_path / "r.npz", top_k=4)
    with np.load(npz, allow_pickle=False) as r:
        assert r["class_ids"].shape == r["scores"].shape == r["labels"].shape == (200, 4)
        assert r["labels"].dtype.kind == "U" and r["labels"][0, 0].startswith("label ")
        exact = loaded.exact_search(files["xq"], 4)
        assert search_recall_at_k(r["class_ids"], exact.class_ids) >= 0.9


def test_bad_files_are_refused(files: dict, tmp_path: Path) -> None:
    d = files["dir"]
    (tmp_path / "short.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="2 labels for 3000"):
        build_index(d / "P.npy", tmp_path / "short.txt", tmp_path / "x")
    np.save(tmp_path / "one_d.npy", np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="2-D"):
        build_index(tmp_path / "one_d.npy", d / "L.txt", tmp_path / "y")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="junk.npy"):
        build_index(tmp_path / "junk.npy", d / "L.txt", tmp_path / "z")


def test_full_search_space_chooses_a_form_and_rewrites_the_index_in_it(files: dict, tmp_path: Path) -> None:
    """--search-space full tunes every form on the same router; the saved index is in the winning form."""
    d = files["dir"]
    out = tmp_path / "index"
    build_index(d / "P.npy", d / "L.txt", out, IndexConfig(nlist=30, kmeans_iters=8, backend="faiss", storage="flat"))
    result = tune_index(out, d / "Q.npy", target_recall=0.9, top_k=5, search_space="full", budget_s=600)
    tuning = json.loads((out / "manifest.json").read_text())["tuning"]
    assert tuning["search_space"] == "full" and tuning["forms"][0]["form"] == "faiss/flat"
    assert {f["form"] for f in tuning["forms"]} >= {"faiss/flat", "faiss/pq", "faiss/sq8"}
    winner = max((f for f in tuning["forms"] if f["reached"]), key=lambda f: f["qps"])
    assert tuning["form"] == winner["form"] and result.reached
    loaded = RoutedIndex.load(out)  # the rewritten folder verifies, in the chosen form, with the chosen settings
    form = f"{loaded.cfg.backend}/{loaded.cfg.storage}" + ("-residual" if loaded.cfg.pq_residual else "")
    assert form == tuning["form"] and loaded.cfg.nprobe == result.nprobe
    assert not list(tmp_path.glob("index.*"))  # no side folders left


def test_full_search_space_with_no_budget_keeps_the_built_form(files: dict, tmp_path: Path) -> None:
    d = files["dir"]
    out = tmp_path / "index"
    build_index(d / "P.npy", d / "L.txt", out, IndexConfig(nlist=30, kmeans_iters=8, backend="faiss", storage="sq8"))
    tune_index(out, d / "Q.npy", target_recall=0.9, top_k=5, search_space="full", budget_s=0)
    tuning = json.loads((out / "manifest.json").read_text())["tuning"]
    assert tuning["form"] == "faiss/sq8" and all(f.get("skipped") for f in tuning["forms"][1:])
    assert RoutedIndex.load(out).cfg.storage == "sq8"
