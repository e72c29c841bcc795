"""Sentence extraction for the text set, on hand-written HTML and troff."""

from __future__ import annotations

import gzip
from pathlib import Path

from megaclass.loadtest.benchmarks.text_corpus import html_tree, man_pages, reasonable, sentences, split_sentences


def test_split_keeps_abbreviations_inside_a_sentence() -> None:
    text = "Use a tool, e.g. Make or Ninja, to build it. Then run the  tests!  Done."
    assert split_sentences(text) == ["Use a tool, e.g. Make or Ninja, to build it.", "Then run the tests!", "Done."]


def test_filter_rejects_short_code_and_non_english_sentences() -> None:
    assert reasonable("The server answers every request in order.")
    assert not reasonable("Too short here.")
    assert not reasonable("x = f(a, b) + g(c) * 42 / 7 - 3 == 0 and {} [] ().")
    assert not reasonable("这是一个很长的中文句子，它不应该被保留在英文语料中。 More words here to pass.")
    assert not reasonable("lowercase start is not a sentence we keep here.")


def test_html_paragraphs_skip_code_and_indexes_and_dedupe(tmp_path: Path) -> None:
    page = (
        "<html><body><p>The index routes each query to a few clusters. <pre>code()</pre>It scans them.</p>"
        "<script>var x = 1;</script><p>The index routes each query to a few clusters.</p></body></html>"
    )
    (tmp_path / "a.html").write_text(page)
    (tmp_path / "genindex.html").write_text("<p>An index page that must not be read at all.</p>")
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "b.html").write_text("<p>A static page that must not be read at all.</p>")
    assert sentences(html_tree(tmp_path)) == ["The index routes each query to a few clusters."]


def test_man_pages_keep_font_macro_text_and_drop_escapes(tmp_path: Path) -> None:
    troff = ".TH LS 1\n.SH NAME\nThe\n.B ls\ncommand lists \\fIevery\\fR file in a directory.\n.PP\nSecond one.\n"
    folder = tmp_path / "usr" / "share" / "man" / "man1"
    folder.mkdir(parents=True)
    (folder / "ls.1.gz").write_bytes(gzip.compress(troff.encode()))
    assert sentences(man_pages(tmp_path)) == ["The ls command lists every file in a directory."]
