"""Reading the project's small comma-separated text files (tuple files, taxonomies): one shared line reader."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def csv_lines(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line number, stripped text, comma-separated fields) of each line that is not blank or a # comment."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            text = line.strip()
            if text and not text.startswith("#"):
                yield n, text, [x.strip() for x in text.split(",")]
