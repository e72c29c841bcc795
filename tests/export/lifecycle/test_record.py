"""What the hand-run commands record: an index build run, a publish registered with the serving alias."""

from __future__ import annotations

import numpy as np

from megaclass.export.config import IndexConfig, load_config
from megaclass.export.lifecycle import tracking
from megaclass.export.lifecycle.lineage import lineage
from megaclass.export.lifecycle.record import data_fingerprint, record_index, record_publish
from megaclass.python_backend.index.routed_index import RoutedIndex
from megaclass.python_backend.serving.retriever_service import index_fingerprint


def test_index_build_and_publish_runs_and_the_lineage_of_a_hand_published_version(tmp_path):
    cfg = load_config(None, {"work_dir": str(tmp_path / "work")})
    x = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    index = RoutedIndex.build(x, np.arange(30), {i: f"c{i}" for i in range(30)}, IndexConfig(nlist=3))
    index.save(tmp_path / "index", extra_manifest={"encoder_sha256": "ab" * 32})
    record_index(cfg, "index build", tmp_path / "index", {"index.nlist": 3}, {"classes": 30})
    record_publish(cfg, tmp_path / "repo", {"retriever": 4}, tmp_path / "index")
    (build,) = tracking.find_runs(cfg.tracking, cfg.work_dir, "tags.stage = 'index build'")
    assert build.data.params["index.nlist"] == "3" and build.data.metrics["classes"] == 30
    version = f"4:{index_fingerprint(RoutedIndex.load(tmp_path / 'index').manifest)}"
    chain = dict(lineage(cfg.tracking, cfg.work_dir, version))
    assert version in chain["published version"] and "alias: serving" in chain["published version"]
    assert "published by hand" in chain["gate"] and "abababab" in chain["encoder"]


def test_the_data_fingerprint_follows_the_catalogue_file(tmp_path):
    from megaclass.export.data.data_sources import DataSpec

    cfg = load_config(None)
    path = tmp_path / "c.csv"
    path.write_text("class_id,label,embedding\n1,a,0 1\n")
    first = data_fingerprint(DataSpec(kind="catalog", catalog=str(path)), cfg)
    path.write_text("class_id,label,embedding\n1,a,0 2\n")
    assert data_fingerprint(DataSpec(kind="catalog", catalog=str(path)), cfg) != first
    assert data_fingerprint(DataSpec(kind="glyphs"), cfg) == data_fingerprint(DataSpec(kind="glyphs"), cfg)
