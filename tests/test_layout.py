"""The layout holds: dependencies point one way, modules stay small, a regular install is complete,
and docs/architecture.md names only what exists.

Layers, lowest first: `python_backend` (serving) <- `export` (offline) <- `clients` (the client
library) <- `loadtest` <- `clients.cli` (the `megaclass` command, the only code that may import
`loadtest`). A module imports from its own layer or below, at module level or inside a function.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from .conftest import ROOT, import_from_install, regular_install

FOLDERS = ("python_backend", "export", "clients", "loadtest")  # the code folders, as `megaclass.<folder>`
LAYERS = {"python_backend": 0, "export": 1, "clients": 2, "loadtest": 3, "clients.cli": 4}
MAX_MODULE_LINES = 500
MAX_INDEX_MODULE_LINES = 400  # python_backend/index: the product's core, kept in smaller pieces
MAX_FUNCTION_LINES = 80


@cache
def modules() -> dict[str, Path]:
    """Every source module, `megaclass.<dotted path>` -> file (packages by their `__init__.py`)."""
    out = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(("megaclass", *parts)).removesuffix(".__init__")] = path
    return out


def is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def imported(name: str) -> Iterator[tuple[int, str]]:
    """(line, module) for every `megaclass` module that `name` imports, anywhere in its file."""
    for node in ast.walk(ast.parse(modules()[name].read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from its package
                package = name if is_package(name) else name.rpartition(".")[0]
                package = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{package}.{base}".rstrip(".")
            # `from pkg import sub` imports the module pkg.sub where there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules() else base for a in node.names]
        else:
            continue
        for target in dict.fromkeys(targets):
            if target.startswith("megaclass."):
                yield node.lineno, target


def internal_imports() -> Iterator[tuple[str, int, str]]:
    """(module, line, module it imports) over the whole tree, for modules that exist."""
    for src in modules():
        for line, tgt in imported(src):
            if tgt in modules():
                yield src, line, tgt


def layer(name: str) -> int:
    parts = name.split(".")[1:]
    return LAYERS["clients.cli"] if parts[:2] == ["clients", "cli"] else LAYERS[parts[0]]


def folder(name: str) -> str:
    """The folder a module's file lies in, e.g. `export/data`."""
    return modules()[name].parent.relative_to(ROOT).as_posix()


def where(name: str, line: int) -> str:
    return f"{modules()[name].relative_to(ROOT)}:{line}"


def test_every_module_parses_and_the_folders_are_there():
    assert {name.split(".")[1] for name in modules()} == set(FOLDERS)
    assert all(name.split(".")[1] in FOLDERS for name in modules())


def test_every_import_names_a_module():
    """Function-level imports too, which importing every module does not run."""
    unknown = [
        f"{where(src, line)} imports {tgt}" for src in modules() for line, tgt in imported(src) if tgt not in modules()
    ]
    assert not unknown, "\n".join(unknown)


def test_imports_point_down_the_layers():
    upward = [f"{where(src, line)} imports {tgt}" for src, line, tgt in internal_imports() if layer(tgt) > layer(src)]
    assert not upward, (
        "imports against the layers (python_backend <- export <- clients <- loadtest <- clients.cli):\n"
        + "\n".join(upward)
    )


def test_the_serving_library_does_not_import_the_triton_models():
    """python_backend/models/*/model.py are thin Triton models over the library; never the other way."""
    wrong = [
        f"{where(src, line)} imports {tgt}"
        for src, line, tgt in internal_imports()
        if src.startswith("megaclass.python_backend.") and not src.startswith("megaclass.python_backend.models")
        if tgt.startswith("megaclass.python_backend.models")
    ]
    assert not wrong, "\n".join(wrong)


def folder_graph() -> dict[str, dict[str, str]]:
    """folder -> {folder it imports: one import that does it}. A folder and its own subfolders are one
    package, so imports between them (a package's __init__ re-exporting, a subpackage using its
    parent's config) are not edges; siblings and unrelated folders are."""
    graph: dict[str, dict[str, str]] = {}
    for src, line, tgt in internal_imports():
        a, b = folder(src), folder(tgt)
        if a == b or b.startswith(a + "/") or a.startswith(b + "/"):
            continue
        graph.setdefault(a, {}).setdefault(b, f"{where(src, line)} imports {tgt}")
    return graph


def cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one folder (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_folders():
    graph = folder_graph()
    found = cycles(graph)
    lines = [
        f"{' <-> '.join(c)}: " + "; ".join(graph[a][b] for a in c for b in c if b in graph.get(a, {})) for c in found
    ]
    assert not found, "import cycles between folders:\n" + "\n".join(lines)


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}, "d": {"a": ""}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b": ""}, "b": {}}) == []


def test_modules_and_functions_stay_small():
    """No module over 500 lines (the index package: 400), no function over 80 (tests and C++ apart)."""
    too_long = []
    for name, path in modules().items():
        text = path.read_text()
        limit = MAX_INDEX_MODULE_LINES if name.startswith("megaclass.python_backend.index") else MAX_MODULE_LINES
        if len(text.splitlines()) > limit:
            too_long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines (at most {limit})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{where(name, node.lineno)} {node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)


# --- a regular (non-editable) install ------------------------------------------------------------------
def package_data() -> list[Path]:
    """The non-Python files the package needs: the Triton model files, the native kernel, TOML settings."""
    files = sorted((ROOT / "python_backend" / "models").glob("*/model.py"))
    for name in FOLDERS:
        files += sorted(p for p in (ROOT / name).rglob("*") if p.suffix in (".cpp", ".toml"))
    return files


def test_a_regular_install_has_every_module_and_its_data(tmp_path):
    """`pip install .` (not editable) into a folder, then every module imported from there alone."""
    site = regular_install(FOLDERS, tmp_path)
    data = package_data()
    assert {p.suffix for p in data} == {".py", ".cpp", ".toml"}
    missing = [str(p.relative_to(ROOT)) for p in data if not (site / "megaclass" / p.relative_to(ROOT)).is_file()]
    assert not missing, f"package data missing from the install: {missing}"
    names = [n for n in modules() if not n.startswith("megaclass.python_backend.models.")]  # Triton's, not ours
    failed = import_from_install(site, names)
    assert not failed, "\n".join(f"{k}: {v}" for k, v in failed.items())


# --- docs/architecture.md ------------------------------------------------------------------------------
def test_architecture_doc_names_only_what_exists():
    """Every `folder/path` and `megaclass.dotted.name` in docs/architecture.md exists."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = []
    for path in sorted(
        set(
            re.findall(
                r"\b((?:python_backend|export|clients|loadtest|model_repository|docker|tests|docs)/[\w./*-]*)", text
            )
        )
    ):
        path = path.rstrip(".")
        if not (list(ROOT.glob(path.rstrip("/"))) if "*" in path else (ROOT / path).exists()):
            missing.append(path)
    for dotted in sorted(set(re.findall(r"\bmegaclass(?:\.\w+)+", text))):
        if dotted not in modules():
            parent, _, attr = dotted.rpartition(".")
            defined = parent in modules() and re.search(
                rf"^(class|def) {attr}\b|^{attr}\b.*=|import .*\b{attr}\b", modules()[parent].read_text(), re.M
            )
            if not defined:
                missing.append(dotted)
    assert not missing, f"docs/architecture.md names what does not exist: {missing}"


def test_architecture_doc_table_names_types_of_its_folder():
    """In the folder table, every name of the third column is defined in a module of that folder."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("## Folders", 1)[1].split("\n## ", 1)[0]
    wrong = []
    for row in table.splitlines():
        cells = row.split(" | ")
        if not row.startswith("| `") or len(cells) != 3:
            continue
        where_ = ROOT / re.search(r"`([^`]+)`", cells[0]).group(1)
        sources = "\n".join(p.read_text() for p in where_.rglob("*.py"))
        for name in re.findall(r"`(\w+)`", cells[2]):
            if not re.search(rf"^\s*(class|def) {name}\b|^{name}\b\s*[:=]", sources, re.M):
                wrong.append(f"{name} (in {where_.relative_to(ROOT)})")
    assert not wrong, f"docs/architecture.md names what its folder does not define: {wrong}"
