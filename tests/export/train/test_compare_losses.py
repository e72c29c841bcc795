"""The loss comparison: a tiny synthetic run of two methods, the table, and the doc update."""

from __future__ import annotations

from megaclass.export.config import load_config
from megaclass.export.data.data_sources import DataSpec
from megaclass.export.train.compare_losses import BEGIN, END, METHODS, compare_losses, markdown_table, update_doc
from megaclass.export.train.losses import LOSSES


def test_methods_are_registered_losses():
    assert {m[2]["loss"] for m in METHODS} <= set(LOSSES)
    assert {"contrastive", "triplet", "cosface", "softmax"} <= {m[2]["loss"] for m in METHODS}


def test_compare_two_methods_tiny(tmp_path):
    cfg = load_config(
        None,
        {
            "work_dir": str(tmp_path),
            "train": {"embedding_dim": 16, "width": 4, "epochs": 1, "batch_size": 64, "threads": 1},
        },
    )
    spec = DataSpec(kind="synthetic", synthetic_classes=200, eval_classes=100, held_out_classes=20)
    methods = tuple(m for m in METHODS if m[1] in ("triplet-semihard", "softmax"))
    rows = compare_losses(cfg, spec, tmp_path / "cmp", minutes_per_method=0.5, methods=methods, progress=False)
    assert [r["loss"] for r in rows] == ["triplet", "softmax"]
    assert (tmp_path / "cmp" / "softmax" / "compare_row.json").exists()
    table = markdown_table(rows, "megaclass train --compare")
    lines = table.splitlines()
    assert lines[2].startswith("| triplet, semi-hard mining |")
    assert "cannot answer" in lines[3]
    doc = tmp_path / "training.md"
    doc.write_text("# Training\n\nintro\n")
    update_doc(doc, table)
    update_doc(doc, table.replace("triplet, semi", "TRIPLET, semi"))  # replaced in place, not appended
    text = doc.read_text()
    assert (
        text.count(BEGIN) == 1 and text.count(END) == 1 and "TRIPLET" in text and text.startswith("# Training\n\nintro")
    )
