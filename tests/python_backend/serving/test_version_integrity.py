"""Published versions: copies, read-only, checksummed, and refused at load when changed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from megaclass.export.repository.generate import publish_version, remove_version, versions
from megaclass.python_backend.serving.version_integrity import (
    MANIFEST,
    VersionIntegrityError,
    make_writable,
    sha256_of,
    verify_version,
)


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "src").mkdir()
    model_py = tmp_path / "src" / "model.py"
    model_py.write_text("print('v1')\n")
    onnx = tmp_path / "src" / "encoder.onnx"
    onnx.write_bytes(b"graph-v1")
    index = tmp_path / "src" / "index"
    index.mkdir()
    (index / "data.npy").write_bytes(b"\x00" * 64)
    return {"model.py": model_py, "encoder.onnx": onnx, "index": index}


def test_version_files_are_copies_with_checksums_and_read_only(tmp_path, sources):
    v = publish_version(tmp_path / "m", sources)
    version_dir = tmp_path / "m" / str(v)
    recorded = verify_version(version_dir)
    assert recorded == {
        "encoder.onnx": sha256_of(sources["encoder.onnx"]),
        "index/data.npy": sha256_of(sources["index"] / "data.npy"),
        "model.py": sha256_of(sources["model.py"]),
    }
    for name in ("model.py", "encoder.onnx"):
        published = version_dir / name
        assert published.stat().st_ino != sources[name].stat().st_ino and published.stat().st_nlink == 1
        assert stat.S_IMODE(published.stat().st_mode) == 0o444
    assert stat.S_IMODE(version_dir.stat().st_mode) == 0o555
    assert stat.S_IMODE((version_dir / "index").stat().st_mode) == 0o555


def test_rewriting_or_editing_a_source_does_not_change_the_published_version(tmp_path, sources):
    v = publish_version(tmp_path / "m", sources)
    sources["encoder.onnx"].write_bytes(b"graph-v2, re-exported in place")
    sources["model.py"].write_text("print('edited in the editable install')\n")
    version_dir = tmp_path / "m" / str(v)
    assert (version_dir / "encoder.onnx").read_bytes() == b"graph-v1"
    assert (version_dir / "model.py").read_text() == "print('v1')\n"
    verify_version(version_dir)


@pytest.mark.parametrize(
    "tamper, what",
    [
        (lambda d: (d / "encoder.onnx").write_bytes(b"swapped"), "changed: encoder.onnx"),
        (lambda d: (d / "index" / "data.npy").unlink(), "missing: index/data.npy"),
        (lambda d: (d / "evil.py").write_text("import os"), "added: evil.py"),
        (lambda d: (d / MANIFEST).unlink(), f"no readable {MANIFEST}"),
    ],
)
def test_a_tampered_version_is_refused_with_the_files_named(tmp_path, sources, tamper, what):
    v = publish_version(tmp_path / "m", sources)
    version_dir = tmp_path / "m" / str(v)
    make_writable(version_dir)  # what someone with write access would do
    tamper(version_dir)
    with pytest.raises(VersionIntegrityError, match=what.replace(".", r"\.")):
        verify_version(version_dir)


def test_python_caches_do_not_count(tmp_path, sources):
    v = publish_version(tmp_path / "m", sources)
    version_dir = tmp_path / "m" / str(v)
    make_writable(version_dir)
    (version_dir / "__pycache__").mkdir()
    (version_dir / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"cache")
    verify_version(version_dir)


def test_read_only_versions_are_removed_cleanly(tmp_path, sources):
    model = tmp_path / "m"
    v = publish_version(model, sources)
    remove_version(model, v)
    assert versions(model) == [] and os.listdir(model) == []


def test_open_version_gives_config_parameters_and_a_verified_directory(tmp_path, sources):
    import json

    from megaclass.python_backend.serving.version_integrity import open_version

    v = publish_version(tmp_path / "m", sources)
    config = {"name": "m", "parameters": {"device": {"string_value": "cpu"}, "top_k": {"string_value": "5"}}}
    args = {"model_config": json.dumps(config), "model_repository": str(tmp_path / "m"), "model_version": str(v)}
    got_config, params, version_dir = open_version(args)
    assert got_config == config and params == {"device": "cpu", "top_k": "5"}
    assert version_dir == tmp_path / "m" / str(v)
    make_writable(version_dir)
    (version_dir / "encoder.onnx").write_bytes(b"graph-v2")
    with pytest.raises(VersionIntegrityError, match="encoder.onnx"):
        open_version(args)
