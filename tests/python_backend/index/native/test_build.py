"""Building and loading the C++ kernels (python_backend/index/native/build.py)."""

from __future__ import annotations

import ctypes

import pytest

from megaclass.python_backend.index.native import build as native_build


def test_builds_once_per_source_flags_and_target(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MEGACLASS_NATIVE_DIR", str(tmp_path))
    native = native_build.build("pq4_search")
    portable = native_build.build("pq4_search", "portable")
    assert native != portable and native.parent == tmp_path and native.exists() and portable.exists()
    assert "-march=native" not in native_build.flags("portable")
    with pytest.raises(ValueError, match="unknown build target"):
        native_build.flags("sse9")
    stamp = native.stat().st_mtime_ns
    assert native_build.build("pq4_search") == native and native.stat().st_mtime_ns == stamp  # cached
    lib = ctypes.CDLL(str(portable))
    assert lib.mc_pq4_simd() == 0
    assert not list(tmp_path.glob("*.tmp"))  # built aside, then renamed


def test_a_missing_compiler_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MEGACLASS_NATIVE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(native_build.NativeUnavailable, match="no-such-compiler"):
        native_build.build("pq4_search")
    monkeypatch.delenv("CXX")
    monkeypatch.setattr(native_build.shutil, "which", lambda name: None)
    with pytest.raises(native_build.NativeUnavailable, match="no C\\+\\+ compiler"):
        native_build.build("pq4_search")


def test_a_failing_build_reports_the_compiler_output(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MEGACLASS_NATIVE_DIR", str(tmp_path / "cache"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "broken.cpp").write_text("this is not C++\n")
    monkeypatch.setattr(native_build, "SOURCE_DIR", tmp_path / "src")
    with pytest.raises(native_build.NativeUnavailable, match="broken.cpp"):
        native_build.build("broken")
    assert not list((tmp_path / "cache").glob("*"))  # nothing half-written left behind


def test_a_cached_library_is_used_only_when_its_record_matches(tmp_path, monkeypatch) -> None:
    """A library in the cache whose recorded source hash or flags differ (or that has no record) is rebuilt."""
    import json

    monkeypatch.setenv("MEGACLASS_NATIVE_DIR", str(tmp_path))
    path = native_build.build("pq4_search", "portable")
    record = json.loads(path.with_name(path.name + ".json").read_text())
    assert record == native_build.build_record("pq4_search", "portable")
    assert len(record["source_sha256"]) == 64 and "-O3" in record["flags"]
    assert native_build.cached("pq4_search", "portable") == path
    for stale in ({**record, "source_sha256": "0" * 64}, {**record, "flags": "-O0"}, None):
        sidecar = path.with_name(path.name + ".json")
        if stale is None:
            sidecar.unlink()
        else:
            sidecar.write_text(json.dumps(stale))
        path.write_bytes(b"not the library built from this source")
        assert native_build.cached("pq4_search", "portable") is None
        assert native_build.build("pq4_search", "portable") == path
    assert ctypes.CDLL(str(path)).mc_pq4_simd() == 0  # rebuilt, loadable
