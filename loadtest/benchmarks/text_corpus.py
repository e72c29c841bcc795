"""Sentences from Debian's documentation packages: the text behind the benchmark's 384-d set.

Deterministic: files are read in sorted order, paragraphs split into sentences by one regular
expression, filtered (5-60 words, mostly letters, English, capitalised, ending in punctuation) and
de-duplicated keeping the first occurrence. HTML trees (Sphinx, DocBook) give the text of their
<p> elements; man pages a crude troff-to-text. Nothing is installed: packages are fetched with
`apt-get download` and unpacked with `dpkg -x` into a cache folder.
"""

from __future__ import annotations

import gzip
import re
import subprocess
import unicodedata
from collections.abc import Callable, Iterable
from html.parser import HTMLParser
from pathlib import Path

MIN_WORDS, MAX_WORDS = 5, 60
_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z\"'(\[])")
_WS = re.compile(r"\s+")
_ABBREV_END = re.compile(r"\b(e\.g|i\.e|etc|vs|cf|Dr|Mr|Mrs|No|Fig|approx)\.$", re.I)
_TROFF_ESC = re.compile(r"\\f(\[[^\]]*\]|\(..|.)|\\\*(\(..|\[[^\]]*\]|.)|\\\((..)|\\\[[^\]]*\]|\\[&|^%:]|\\s[-+]?\d")
_FONT_MACRO = re.compile(r"[.'](B|I|BR|IR|RB|RI|BI|IB|SM)\s+(.*)")


def _read(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8", errors="replace")


class _Paragraphs(HTMLParser):
    """The text of each outermost <p> element, without <pre>, <script> and <style> inside it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._buf: list[str] = []
        self._depth = 0
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("pre", "script", "style"):
            self._skip += 1
        elif tag == "p":
            self._depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("pre", "script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag == "p" and self._depth:
            self._depth -= 1
            if not self._depth:
                self.paragraphs.append("".join(self._buf))
                self._buf = []

    def handle_data(self, data: str) -> None:
        if self._depth and not self._skip:
            self._buf.append(data)


def html_paragraphs(text: str) -> list[str]:
    parser = _Paragraphs()
    parser.feed(text)
    parser.close()
    return parser.paragraphs


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of one paragraph (NFKC, whitespace collapsed; "e.g." and the like do not end one)."""
    text = _WS.sub(" ", unicodedata.normalize("NFKC", paragraph)).strip()
    out, cur = [], ""
    for piece in _SPLIT.split(text) if text else []:
        cur = f"{cur} {piece}".strip() if cur else piece
        if not _ABBREV_END.search(cur):
            out.append(cur)
            cur = ""
    return out + ([cur] if cur else [])


def reasonable(sentence: str) -> bool:
    """5-60 words, at least 60 % letters, at most 5 % non-ASCII, capitalised, ending in .!?:"""
    words = sentence.split()
    if not (MIN_WORDS <= len(words) <= MAX_WORDS):
        return False
    if sum(c.isalpha() for c in sentence) < 0.6 * len(sentence.replace(" ", "")):
        return False
    if sum(not c.isascii() for c in sentence) > 0.05 * len(sentence):
        return False
    return sentence[0].isupper() and sentence[-1] in ".!?:"


def html_tree(root: Path) -> list[str]:
    """Paragraphs of every HTML page under `root`, in sorted path order (indexes and sources skipped)."""
    pages = sorted(p for p in root.rglob("*") if p.name.endswith((".html", ".html.gz")))
    paragraphs: list[str] = []
    for page in pages:
        if not ({"_static", "_sources", "translations"} & set(page.parts) or "genindex" in page.name):
            paragraphs += html_paragraphs(_read(page))
    return paragraphs


def _troff_paragraphs(text: str) -> list[str]:
    paragraphs, cur = [], []
    for line in text.splitlines():
        if line.startswith(('.\\"', "'\\\"")):
            continue
        if line.startswith((".", "'")):
            font = _FONT_MACRO.match(line)
            if font:
                cur.append(font.group(2).replace('"', ""))
            elif cur:
                paragraphs.append(" ".join(cur))
                cur = []
            continue
        cur.append(line)
    paragraphs += [" ".join(cur)] if cur else []
    return [_TROFF_ESC.sub("", p.replace("\\-", "-").replace("\\e", "\\")) for p in paragraphs]


def man_pages(root: Path) -> list[str]:
    """Paragraphs of every gzipped man page under `root` (a crude troff-to-text), sorted by path."""
    paragraphs: list[str] = []
    for page in sorted(root.rglob("*.gz")):
        if "/man/" in str(page):
            paragraphs += _troff_paragraphs(_read(page))
    return paragraphs


def sentences(paragraphs: Iterable[str]) -> list[str]:
    """Split, filter and de-duplicate (case-insensitively), keeping the first occurrence's order."""
    seen: set[str] = set()
    out = []
    for paragraph in paragraphs:
        for s in split_sentences(paragraph):
            if reasonable(s) and s.casefold() not in seen:
                seen.add(s.casefold())
                out.append(s)
    return out


# (package, folder inside it, extractor): the order is part of the data set's definition.
SOURCES: tuple[tuple[str, str, Callable[[Path], list[str]]], ...] = (
    ("linux-doc-6.1", "usr/share/doc/linux-doc-6.1/html", html_tree),
    ("python3.11-doc", "usr/share/doc/python3.11/html", html_tree),
    ("postgresql-doc-15", "usr/share/doc/postgresql-doc-15/html", html_tree),
    ("manpages", "usr/share/man", man_pages),
    ("manpages-dev", "usr/share/man", man_pages),
)


def unpack_package(package: str, cache: Path) -> tuple[Path, str]:
    """`apt-get download` the package into `cache/debs` and `dpkg -x` it: (its root, its version)."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if not sorted(debs.glob(f"{package}_*.deb")):
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True, capture_output=True)
    deb = sorted(debs.glob(f"{package}_*.deb"))[-1]
    version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True, text=True)
    root = cache / "unpacked" / deb.stem
    if not (root / ".done").exists():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        (root / ".done").touch()
    return root, version.stdout.strip()
