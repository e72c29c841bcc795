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

SOURCE_DIR = Path(__file__).parent / "native"
# -ffp-contract=off: no fused multiply-adds the source did not ask for, so that the portable and the
# native build compute the same look-up tables. -march=native: the kernel is built where it runs.
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno", "-ffp-contract=off")
NATIVE_FLAGS = ("-march=native",)
_LOCK = threading.Lock()
_LOADED: dict[tuple[str, bool], ctypes.CDLL] = {}


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


def flags(portable: bool = False) -> tuple[str, ...]:
    """Compiler flags: tuned for this CPU, or `portable` (the compiler's baseline instruction set)."""
    return FLAGS if portable else FLAGS + NATIVE_FLAGS


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


def library_path(name: str, portable: bool = False) -> Path:
    """Path of the built library of `native/<name>.cpp` (built or not), named by source, flags and CPU."""
    source = SOURCE_DIR / f"{name}.cpp"
    key_parts = source.read_bytes() + " ".join(flags(portable)).encode() + (b"" if portable else _cpu_identity())
    kind = "portable" if portable else "native"
    return cache_dir() / f"lib{name}-{kind}-{hashlib.sha256(key_parts).hexdigest()[:16]}.so"


def build(name: str, portable: bool = False) -> Path:
    """Compile `native/<name>.cpp` unless its cached library exists; returns the library's path."""
    target = library_path(name, portable)
    if target.exists():
        return target
    cxx = compiler()
    if cxx is None:
        raise NativeUnavailable("no C++ compiler found (set CXX or install g++) to build the native kernels")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        try:
            proc = subprocess.run(
                [cxx, *flags(portable), "-o", tmp, str(SOURCE_DIR / f"{name}.cpp")],
                capture_output=True,
                text=True,
                timeout=300,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise NativeUnavailable(f"cannot run the C++ compiler {cxx!r}: {e}") from e
        if proc.returncode != 0:
            raise NativeUnavailable(f"building {name}.cpp with {cxx} failed:\n{proc.stderr[-4000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load(name: str, portable: bool = False) -> ctypes.CDLL:
    """The loaded library of `native/<name>.cpp`, built first if needed (once per process and kind)."""
    with _LOCK:
        lib = _LOADED.get((name, portable))
        if lib is None:
            path = build(name, portable)
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as e:
                raise NativeUnavailable(f"cannot load {path}: {e}") from e
            _LOADED[(name, portable)] = lib
        return lib
