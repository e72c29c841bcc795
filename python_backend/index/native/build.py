"""Compiles and loads the project's C++ kernels (python_backend/native/*.cpp) on first use.

A kernel is one C++ file with a plain C ABI, loaded with ctypes: no Python headers, no build step at
install time. The shared library is cached under `$MEGACLASS_NATIVE_DIR` (default
`~/.cache/megaclass/native`), named by the hash of its source and flags, so an edited source is rebuilt
and several processes (Triton model instances) share one build; a build is written aside and renamed,
so a concurrent loader never sees half a file. Beside each library a record (`<library>.json`) holds
the full SHA-256 of the source and the compiler flags it was built with; a cached library is used only
when that record matches this source and these flags (a library copied in, a stale or half-cleaned
cache, a file-name collision are rebuilt). The images build the kernels at image build time
(`python -m megaclass.python_backend.index.native.build`), so serving never compiles. Without a C++ compiler `NativeUnavailable` says so: an
index configured for the native backend then refuses to load with that message, and the other
backends work as before.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
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


def build_record(name: str, target: str = "native", source_dir: Path | None = None) -> dict[str, str]:
    """What a library of `<source_dir>/<name>.cpp` must have been built from: source SHA-256, flags, CPU."""
    source = Path(source_dir or SOURCE_DIR) / f"{name}.cpp"
    cpu = hashlib.sha256(_cpu_identity()).hexdigest() if target == "native" else ""
    return {
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "flags": " ".join(flags(target)),
        "cpu": cpu,
    }


def library_path(name: str, target: str = "native", source_dir: Path | None = None) -> Path:
    """Path of the built library of `native/<name>.cpp` (built or not), named by source, flags and CPU."""
    key = json.dumps(build_record(name, target, source_dir), sort_keys=True).encode()
    return cache_dir() / f"lib{name}-{target}-{hashlib.sha256(key).hexdigest()[:16]}.so"


def _record_path(library: Path) -> Path:
    return library.with_name(library.name + ".json")


def cached(name: str, target: str = "native", source_dir: Path | None = None) -> Path | None:
    """The cached library, only when its recorded source hash and flags match this source and these flags."""
    path = library_path(name, target, source_dir)
    try:
        recorded = json.loads(_record_path(path).read_text())
    except (OSError, ValueError):
        return None
    return path if path.exists() and recorded == build_record(name, target, source_dir) else None


def build(name: str, target: str = "native", source_dir: Path | None = None) -> Path:
    """Compile `<source_dir>/<name>.cpp` (default: this folder) for `target` unless a matching cached
    library exists (`cached`); returns the library's path."""
    source_dir = Path(source_dir or SOURCE_DIR)
    if (hit := cached(name, target, source_dir)) is not None:
        return hit
    path = library_path(name, target, source_dir)
    cxx = compiler()
    if cxx is None:
        raise NativeUnavailable("no C++ compiler found (set CXX or install g++) to build the native kernels")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            proc = subprocess.run(
                [cxx, *flags(target), "-o", tmp, str(source_dir / f"{name}.cpp")],
                capture_output=True,
                text=True,
                timeout=300,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise NativeUnavailable(f"cannot run the C++ compiler {cxx!r}: {e}") from e
        if proc.returncode != 0:
            raise NativeUnavailable(f"building {name}.cpp with {cxx} failed:\n{proc.stderr[-4000:]}")
        os.replace(tmp, path)
        record = _record_path(path).with_suffix(f".{os.getpid()}.tmp")
        record.write_text(json.dumps(build_record(name, target, source_dir), sort_keys=True))
        os.replace(record, _record_path(path))
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


def main() -> None:
    """Build every kernel of this folder for this machine (the images run this at build time)."""
    for source in sorted(SOURCE_DIR.glob("*.cpp")):
        print(f"built {build(source.stem)}")


if __name__ == "__main__":
    main()
