"""Hierarchy metrics on a small tree worked out by hand; the file format's errors; the plot."""

from __future__ import annotations

import numpy as np
import pytest

from megaclass.export.evaluate.taxonomy import (
    TaxonomyError,
    cluster_taxonomy,
    group_precision,
    mistake_severity,
    plot_severity,
    read_taxonomy,
    routing_groups,
    taxonomy_groups,
)
from megaclass.python_backend.index.config import IndexConfig

# animal ─┬─ mammal ─┬─ 1 (cat)      object ── 4 (vase)
#         │          └─ 2 (dog)
#         └─ bird ───── 3 (crow)
TREE = "class,parent\n# a comment\nmammal,animal\nbird,animal\n1,mammal\n2,mammal\n3,bird\n4,object\n"


@pytest.fixture
def tax(tmp_path):
    (tmp_path / "tax.csv").write_text(TREE)
    return read_taxonomy(tmp_path / "tax.csv")


def test_paths_and_distances(tax):
    assert tax.path("1") == ["animal", "mammal", "1"] and tax.path("4") == ["object", "4"]
    assert [tax.distance("1", x) for x in "1234"] == [0, 2, 4, 5]
    assert tax.ancestor("4", 3) == "4" and tax.ancestor("3", 2) == "bird"


def test_severity_by_hand(tax):
    true = np.array([1, 1, 1, 1, 3])
    pred = np.array([1, 2, 3, 4, 3])
    s = mistake_severity(true, pred, tax)
    assert s["mistakes"] == 3
    assert s["severity_histogram"] == {"2": 1, "4": 1, "5": 1}
    assert s["mean_mistake_distance"] == pytest.approx(11 / 3)
    assert s["precision_at_1_by_level"] == pytest.approx({"1": 0.8, "2": 0.6, "3": 0.4})
    assert s["same_parent_share"] == pytest.approx(1 / 3)


def test_group_precision_by_branch(tax):
    groups = group_precision(np.array([1, 2, 3, 4]), np.array([1, 1, 3, 4]), tax, level=2)
    assert groups == {"mammal": (0.5, 2), "bird": (1.0, 1), "4": (1.0, 1)}


def test_cluster_fallback_is_two_levels():
    tax = cluster_taxonomy({10: 0, 11: 0, 12: 1})
    s = mistake_severity(np.array([10, 10, 12]), np.array([11, 12, 12]), tax)
    assert s["severity_histogram"] == {"2": 1, "4": 1}
    assert s["same_parent_share"] == 0.5
    assert s["precision_at_1_by_level"] == pytest.approx({"1": 2 / 3, "2": 1 / 3})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a,b,c\n", r"tax\.csv:1: expected 'class,parent', got 3 fields"),
        ("1,x\n1,y\n", r"tax\.csv:2: '1' already has parent 'x' \(line 1\)"),
        ("x,x\n", r"tax\.csv:1: 'x' is its own parent"),
        ("a,b\nb,a\n", r"cycle in the taxonomy"),
        ("# only a comment\n", r"no class,parent lines"),
    ],
)
def test_bad_files(tmp_path, text, match):
    (tmp_path / "tax.csv").write_text(text)
    with pytest.raises(TaxonomyError, match=match):
        read_taxonomy(tmp_path / "tax.csv")


def test_plot_writes_a_png(tmp_path, tax):
    s = mistake_severity(np.array([1, 1, 3]), np.array([2, 4, 3]), tax)
    png = plot_severity(s, group_precision(np.array([1, 1, 3]), np.array([2, 4, 3]), tax), tmp_path / "p.png", "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_groups_at_a_level_for_routing(tax):
    names = [["cat", "1"], ["2"], ["3"], ["vase", "4"], ["unknown", "99"], ["mammal"]]
    groups, group_names = taxonomy_groups(tax, names, 1)
    assert [group_names[g] if g >= 0 else None for g in groups] == ["animal"] * 3 + ["object", None, "animal"]
    groups, group_names = taxonomy_groups(tax, names, 2)  # 4 is shallower than level 2: its own group
    assert [group_names[g] if g >= 0 else None for g in groups] == ["mammal", "mammal", "bird", "4", None, "mammal"]
    with pytest.raises(ValueError, match="level must be >= 1"):
        taxonomy_groups(tax, names, 0)


def test_routing_groups_match_label_then_id_and_record_the_source(tmp_path):
    (tmp_path / "tax.csv").write_text("cat,mammal\n2,mammal\n3,bird\nmammal,animal\nbird,animal\n")
    cfg = IndexConfig(taxonomy=str(tmp_path / "tax.csv"), taxonomy_level=2)
    ids = np.array([1, 1, 2, 3, 7])
    groups, record = routing_groups(cfg, ids, {1: "cat", 2: "dog", 3: "crow", 7: "vase"})
    assert groups.tolist() == [0, 0, 0, 1, -1]  # cat by label, 2 and 3 by id, vase in no node
    assert record == {"source": "taxonomy", "taxonomy": cfg.taxonomy, "level": 2, "groups": 2,
                      "classes_without_node": 1}  # fmt: skip
    assert routing_groups(IndexConfig(), ids, {}) == (None, {"source": "kmeans"})
    with pytest.raises(ValueError, match="none of the 2 classes is a node"):
        routing_groups(cfg, np.array([7, 8]), {7: "vase", 8: "cup"})
