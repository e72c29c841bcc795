"""Helpers for every test folder: a regular (non-editable) install of the package, and importing
modules from it alone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

IMPORT_EACH = """
import importlib, json, sys, warnings
site, names = sys.argv[1], json.loads(sys.stdin.read())
warnings.simplefilter("ignore")
failed = {}
for name in names:
    try:
        module = importlib.import_module(name)
        if not module.__file__.startswith(site):
            failed[name] = f"imported from {module.__file__}, not the installed copy"
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(failed))
"""


def regular_install(folders: Sequence[str], work: Path) -> Path:
    """`pip install .` (not editable) of a source tree holding only `folders` (and the packaging
    files), into `work/site`, which is returned; `python_backend` alone is what the images install."""
    src, site = work / "src", work / "site"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in folders:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet", "--target"]
    subprocess.run([*pip, str(site), str(src)], check=True, cwd=work, capture_output=True, timeout=300)
    return site


def import_from_install(site: Path, names: Sequence[str]) -> dict[str, str]:
    """Import each module in a fresh interpreter that sees `site` and this environment's packages,
    but neither the source tree (cwd, PYTHONPATH) nor the editable install's .pth hook (-I -S).
    Returns {module: why it failed}."""
    packages = list(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
    code = f"import sys; sys.path[:0] = [{str(site)!r}]; sys.path += {packages!r}\n" + IMPORT_EACH
    child = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(site)],
        input=json.dumps(list(names)),
        capture_output=True,
        text=True,
        cwd=site.parent,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])
