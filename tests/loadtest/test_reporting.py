"""The shared report pieces: docs sections and Markdown tables."""

from __future__ import annotations

from megaclass.loadtest.reporting import markdown_table, update_doc_section


def test_doc_section_is_replaced_and_others_are_kept(tmp_path):
    doc = tmp_path / "docs" / "benchmarks.md"
    update_doc_section(doc, "mine", "## Mine\nv1")
    doc.write_text(doc.read_text() + "\n## Someone else's\nkeep me\n")
    update_doc_section(doc, "mine", "## Mine\nv2")
    update_doc_section(doc, "other", "## Other\nx")
    text = doc.read_text()
    assert text.startswith("# Benchmarks") and "v2" in text and "v1" not in text
    assert "keep me" in text and text.count("megaclass:mine:begin") == 1 and "## Other" in text


def test_markdown_table_aligns_a_label_then_numbers_unless_told():
    lines = markdown_table(["name", "n", "note"], [["a", "1", "x"], ["b", "2", "y"]]).splitlines()
    assert lines == ["| name | n | note |", "| --- | ---: | ---: |", "| a | 1 | x |", "| b | 2 | y |"]
    assert markdown_table(["name", "n", "note"], [], align="rrl").splitlines()[1] == "| ---: | ---: | --- |"


def test_the_machine_description_names_the_schedulers_autogroup_where_the_kernel_has_it():
    """How servers in their own session share the cores with the load generator depends on it."""
    from pathlib import Path

    from megaclass.loadtest.reporting import machine_description

    text = machine_description()
    knob = Path("/proc/sys/kernel/sched_autogroup_enabled")
    if knob.exists():
        state = "on" if knob.read_text().strip() == "1" else "off"
        assert text.endswith(f"sched autogroup {state}")
    else:
        assert "autogroup" not in text
    assert "CPU cores" in text and "load average at start" in text
