"""What every load-test, benchmark and scale-out report is made of: Markdown/HTML blocks, tables,
plots, a section of a docs file, result rows as CSV, and the machine in words.

A report is a list of blocks (headings, paragraphs, tables, images) rendered twice, as Markdown
and as standalone HTML, so the two never disagree. A docs file (docs/benchmarks.md, ...) holds
one section per command between markers, so that each command rewrites only its own.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import html
import math
import os
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# --- blocks and their two renderings ---------------------------------------------------------


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    align: str = ""  # "l" / "r" per column (see markdown_table)


@dataclass(frozen=True)
class Figure:
    path: str  # relative to the report
    caption: str


Block = Heading | Paragraph | Table | Figure


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A Markdown table, one line per row (no trailing newline).

    `align` gives each column "l" (left) or "r" (right); columns it does not reach: the first
    left, the others right (a label, then numbers).
    """
    spec = align + "".join("l" if i == 0 else "r" for i in range(len(align), len(header)))
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---:" if a == "r" else "---" for a in spec) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def to_markdown(blocks: Sequence[Block]) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Paragraph):
            out.append(b.text)
        elif isinstance(b, Table):
            out.append(markdown_table(b.header, b.rows, b.align))
        elif isinstance(b, Figure):
            out.append(f"![{b.caption}]({b.path})")
        out.append("")
    return "\n".join(out)


def _inline_html(text: str) -> str:
    """Escape, then the little Markdown the paragraphs use: **bold**, `code`."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def to_html(blocks: Sequence[Block], title: str) -> str:
    body = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            body.append(f"<p>{_inline_html(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Figure):
            cap = html.escape(b.caption)
            body.append(f'<figure><img src="{html.escape(b.path)}" alt="{cap}"><figcaption>{cap}</figcaption></figure>')
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}figcaption{color:#555}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def format_ms(x: float) -> str:
    """Milliseconds for a table: one decimal below 10, none above, a dash for NaN."""
    return "–" if math.isnan(x) else f"{x:.1f}" if x < 10 else f"{x:.0f}"


# --- docs sections ----------------------------------------------------------------------------


def update_doc_section(doc: Path, key: str, markdown: str, title: str = "# Benchmarks") -> None:
    """Replace (or append) the section between `<!-- megaclass:key:begin/end -->` markers in `doc`;
    the rest of the file, other people's sections included, is left as it is."""
    begin, end = f"<!-- megaclass:{key}:begin -->", f"<!-- megaclass:{key}:end -->"
    section = f"{begin}\n{markdown.rstrip()}\n{end}\n"
    text = doc.read_text() if doc.exists() else f"{title}\n\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def copy_into_docs(image: Path, doc: Path, name: str | None = None) -> str:
    """Copy a plot into the `img/` folder beside `doc`; returns its path relative to `doc`."""
    target = doc.parent / "img" / (name or Path(image).name)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(Path(image).read_bytes())
    return f"img/{target.name}"


# --- plots and rows -----------------------------------------------------------------------------


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_csv(rows: Sequence[Any], path: Path) -> None:
    """Dataclass rows as CSV: a header of the field names, then one line per row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if rows:
            w.writerow([f.name for f in dataclasses.fields(rows[0])])
        w.writerows(dataclasses.astuple(r) for r in rows)


# --- the machine ------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or the platform's word for it."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return model


def machine_description() -> str:
    """Cores, CPU, Python and the load average now: the machine a load test ran on."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPU cores ({cpu_model()}), Python {platform.python_version()}, load average at start {load}"
        + _autogroup()
    )


def _autogroup() -> str:
    """The kernel's scheduler autogroup (each session one scheduling group), which decides how servers
    in their own session share the cores with a load generator: ', sched autogroup on/off' or ''."""
    try:
        on = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return ""
    return f", sched autogroup {'on' if on else 'off'}"


def hardware_description() -> str:
    """CPU model, cores and memory of this machine, in words: the machine a search benchmark ran on."""
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except OSError:
        mem = float("nan")
    return f"{cpu_model()}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()}"
