"""Compiles and loads the project's C++ kernels (python_backend/native/*.cpp) on first use.

A kernel is one C++ file with a plain C ABI, loaded with ctypes: no Python headers, no build step at
install time. The shared library is cached under `$MEGACLASS_NATIVE_DIR` (default
`~/.cache/megaclass/native`), named by the hash of its source and flags, so an edited source is rebuilt
and several processes (Triton model instances) share one build; a build is written aside and renamed,
so a concurrent loader never sees half a file. Without a C++ compiler `NativeUnavailable` says so: an
index configured for the native backend then refuses to load with that message, and the other
backends work as before.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

SOURCE_DIR = Path(__file__).parent
# -ffp-contract=off: no fused multiply-adds the source did not ask for, so that every target computes
# the same look-up tables.
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno", "-ffp-contract=off")
# Instruction sets: "native", the machine the kernel is built on (what serving uses); "portable", the
# compiler's baseline (the plain loops); "avx2", AVX2 without AVX-512 (tests the AVX2 paths on a machine
# that would otherwise take the AVX-512 ones).
TARGETS = {"native": ("-march=native",), "portable": (), "avx2": ("-mavx2", "-mfma")}
_LOCK = threading.Lock()
_LOADED: dict[tuple[str, str], ctypes.CDLL] = {}


class NativeUnavailable(RuntimeError):
    """The kernel cannot be built or loaded here (no compiler, build error, unloadable library)."""


def cache_dir() -> Path:
    """Where built kernels are kept: $MEGACLASS_NATIVE_DIR or ~/.cache/megaclass/native."""
    env = os.environ.get("MEGACLASS_NATIVE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "megaclass" / "native"


def compiler() -> str | None:
    """The C++ compiler to use: $CXX, else g++ or c++ on the PATH (None when there is none)."""
    cxx = os.environ.get("CXX")
    if cxx:
        return cxx
    return shutil.which("g++") or shutil.which("c++")


def flags(target: str = "native") -> tuple[str, ...]:
    """Compiler flags for `target` (see TARGETS)."""
    if target not in TARGETS:
        raise ValueError(f"unknown build target {target!r} (one of {', '.join(TARGETS)})")
    return FLAGS + TARGETS[target]


def _cpu_identity() -> bytes:
    """What -march=native depends on: the machine type and the CPU's model and feature flags."""
    ident = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags", "Features", "CPU part")):
                ident += line
                if line.startswith(("flags", "Features")):
                    break
    except OSError:
        ident += platform.processor()
    return ident.encode()


def library_path(name: str, target: str = "native") -> Path:
    """Path of the built library of `native/<name>.cpp` (built or not), named by source, flags and CPU."""
    source = SOURCE_DIR / f"{name}.cpp"
    key_parts = (
        source.read_bytes() + " ".join(flags(target)).encode() + (_cpu_identity() if target == "native" else b"")
    )
    return cache_dir() / f"lib{name}-{target}-{hashlib.sha256(key_parts).hexdigest()[:16]}.so"


def build(name: str, target: str = "native") -> Path:
    """Compile `native/<name>.cpp` for `target` unless its cached library exists; returns the library's path."""
    path = library_path(name, target)
    if path.exists():
        return path
    cxx = compiler()
    if cxx is None:
        raise NativeUnavailable("no C++ compiler found (set CXX or install g++) to build the native kernels")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            proc = subprocess.run(
                [cxx, *flags(target), "-o", tmp, str(SOURCE_DIR / f"{name}.cpp")],
                capture_output=True,
                text=True,
                timeout=300,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise NativeUnavailable(f"cannot run the C++ compiler {cxx!r}: {e}") from e
        if proc.returncode != 0:
            raise NativeUnavailable(f"building {name}.cpp with {cxx} failed:\n{proc.stderr[-4000:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load(name: str, target: str = "native") -> ctypes.CDLL:
    """The loaded library of `native/<name>.cpp` for `target`, built first if needed (once per process)."""
    with _LOCK:
        lib = _LOADED.get((name, target))
        if lib is None:
            path = build(name, target)
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as e:
                raise NativeUnavailable(f"cannot load {path}: {e}") from e
            _LOADED[(name, target)] = lib
        return lib
