"""Publishing under faults: never a half-written version, a broken index refused before it is
written, a full or read-only disk met with a clear error and the serving version untouched.

The real-disk cases run where root may mount a tmpfs (the suite's repository lives on one);
the same failures are also injected at the OS-error level, so they run everywhere.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from megaclass.export.config import IndexConfig
from megaclass.export.repository.generate import RETRIEVER, versions
from megaclass.export.repository.publish import PublishError, publish_index
from megaclass.export.repository.serving_pointer import protected, serving_version
from megaclass.python_backend.index.persistence import read_manifest, verify_files

from .conftest import EMBEDDING_DIM, GoodTraffic
from .test_faults import BROKEN, served_version

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def big_index(tmp_path_factory) -> Path:
    """A valid index of the served dimension, a few MB: copying it takes a while."""
    from megaclass.python_backend.index.routed_index import RoutedIndex

    out = tmp_path_factory.mktemp("big") / "index"
    rng = np.random.default_rng(0)
    n = 60_000
    protos = rng.standard_normal((n, EMBEDDING_DIM)).astype(np.float32)
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)
    RoutedIndex.build(protos, ids, {int(i): f"class-{i}" for i in ids}, IndexConfig(nlist=16, nprobe=4)).save(out)
    return out


def _repo_copy(stack, dst: Path) -> Path:
    """A private copy of the served repository (configs and the retriever's versions)."""
    shutil.copytree(stack.repo, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _complete(version_dir: Path) -> None:
    """Raises unless `version_dir` holds a whole index: every listed file, sizes and checksums."""
    index = version_dir / "index"
    verify_files(index, read_manifest(index), [])
    assert (version_dir / "model.py").is_file()


class VersionReader(threading.Thread):
    """Polls a model directory; records any numbered version that exists but is not complete."""

    def __init__(self, model_dir: Path):
        super().__init__(daemon=True)
        self.model_dir, self.exposed, self.checks = model_dir, [], 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for v in versions(self.model_dir):
                d = self.model_dir / str(v)
                try:
                    _complete(d)
                    self.checks += 1
                except Exception as exc:
                    if d.exists():  # gone meanwhile (retired by rename) is fine; present and broken is not
                        self.exposed.append(f"{v}: {exc}")


def _patch_copies(monkeypatch, copy) -> None:
    """Route every file that `shutil.copytree` copies through `copy` (publish copies the index
    directory with copytree, whose default copy function is bound when shutil is imported)."""
    real = shutil.copytree
    monkeypatch.setattr(shutil, "copytree", lambda src, dst, **k: real(src, dst, **{**k, "copy_function": copy}))


def _slow_copies(monkeypatch, seconds: float = 0.02) -> None:
    """Make every file copy slow, so the window in which a version could be half-written is wide."""

    def slow(src, dst, *a, **k):
        time.sleep(seconds)
        return shutil.copy2(src, dst, *a, **k)

    _patch_copies(monkeypatch, slow)


def test_reader_never_sees_a_half_written_version(stack, big_index, tmp_path, monkeypatch):
    repo = _repo_copy(stack, tmp_path / "repo")
    _slow_copies(monkeypatch)
    reader = VersionReader(repo / RETRIEVER)
    reader.start()
    try:
        for _ in range(4):  # keep=2: older versions are retired while the reader reads (not the serving one)
            publish_index(repo, big_index, keep=2)
    finally:
        reader.stop.set()
        reader.join(10)
    assert reader.exposed == []
    assert reader.checks > 0
    published = versions(repo / RETRIEVER)
    assert published == sorted({*published[-2:], *protected(repo / RETRIEVER)})  # + the serving, rollback ones
    assert serving_version(repo / RETRIEVER) in published and len(published) <= 4
    assert not [name for name in _hidden(repo) if name.startswith((".staging", ".removing"))]


def test_the_reader_would_catch_a_non_atomic_publish(stack, big_index, tmp_path, monkeypatch):
    """Negative control: the same reader against a writer that copies straight into the numbered
    directory does see the half-written version, so the test above can fail."""
    repo = _repo_copy(stack, tmp_path / "repo")
    _slow_copies(monkeypatch)
    reader = VersionReader(repo / RETRIEVER)
    reader.start()
    try:
        target = repo / RETRIEVER / str(versions(repo / RETRIEVER)[-1] + 1)
        shutil.copytree(big_index, target / "index")
        shutil.copy2(repo / RETRIEVER / "1" / "model.py", target / "model.py")
        time.sleep(0.2)
    finally:
        reader.stop.set()
        reader.join(10)
    assert reader.exposed


@pytest.mark.parametrize("name", [n for n in BROKEN if n != "missing-index"])
def test_publish_refuses_a_broken_index_before_writing(stack, tmp_path, name):
    make, match = BROKEN[name]
    if name == "wrong-dimension":  # publish compares with the encoder's config, before any load
        match = r"has dimension 8 but the encoder in .* outputs 16: build the index with embeddings from this encoder"
    repo = _repo_copy(stack, tmp_path / "repo")
    before, hidden = versions(repo / RETRIEVER), _hidden(repo)
    make(stack.index_dir, tmp_path / "index")
    with pytest.raises(PublishError, match=match):
        publish_index(repo, tmp_path / "index")
    assert versions(repo / RETRIEVER) == before
    assert _hidden(repo) == hidden


# --- full or unwritable disk ---------------------------------------------------------------------------


def _enospc_after(monkeypatch, files_ok: int) -> None:
    """The disk fills up after `files_ok` files were copied (the OS error, injected)."""
    count = [0]

    def copy(src, dst, *a, **k):
        count[0] += 1
        if count[0] > files_ok:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return shutil.copy2(src, dst, *a, **k)

    _patch_copies(monkeypatch, copy)


def _hidden(repo: Path) -> set[str]:
    return {p.name for p in (repo / RETRIEVER).iterdir() if p.name.startswith(".")}


def _assert_untouched(repo: Path, before: list[int], hidden_before: set[str]) -> None:
    assert versions(repo / RETRIEVER) == before
    assert _hidden(repo) == hidden_before, "staging left behind"
    for v in before:
        _complete(repo / RETRIEVER / str(v))


def test_disk_full_mid_copy_is_a_clear_error_injected(stack, big_index, tmp_path, monkeypatch):
    repo = _repo_copy(stack, tmp_path / "repo")
    before, hidden = versions(repo / RETRIEVER), _hidden(repo)
    _enospc_after(monkeypatch, files_ok=2)
    with pytest.raises(PublishError, match=r"could not write .*retriever: \[Errno 28\] No space left on device.*"
                       r"the serving version is untouched"):  # fmt: skip
        publish_index(repo, big_index)
    _assert_untouched(repo, before, hidden)


def test_too_little_space_is_refused_before_writing_injected(stack, big_index, tmp_path, monkeypatch):
    repo = _repo_copy(stack, tmp_path / "repo")
    before, hidden = versions(repo / RETRIEVER), _hidden(repo)
    monkeypatch.setattr(
        shutil, "disk_usage", lambda p: SimpleNamespace(total=10**9, used=10**9 - 500_000, free=500_000)
    )
    with pytest.raises(PublishError, match=r"not enough disk space .* needs \d+\.\d MB, 0\.5 MB are free"):
        publish_index(repo, big_index)
    _assert_untouched(repo, before, hidden)


def test_unwritable_repository_is_a_clear_error_injected(stack, big_index, tmp_path, monkeypatch):
    repo = _repo_copy(stack, tmp_path / "repo")
    before, hidden = versions(repo / RETRIEVER), _hidden(repo)
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):
        if self.name.startswith(".staging"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(PublishError, match=r"could not write .*Permission denied.*the serving version is untouched"):
        publish_index(repo, big_index)
    _assert_untouched(repo, before, hidden)


@pytest.fixture
def real_disk(stack):
    if stack.tmpfs is None:
        pytest.skip("mounting a tmpfs needs root: the injected variants above cover these failures")
    return stack.tmpfs


def test_disk_full_while_serving(stack, real_disk, big_index, monkeypatch):
    """The live repository's disk is full: publish refuses with the numbers (and, its pre-check
    skipped, fails cleanly mid-copy with ENOSPC); the server keeps answering with its version."""
    before, served, hidden = versions(stack.repo / RETRIEVER), served_version(stack), _hidden(stack.repo)
    traffic = GoodTraffic(stack, max_s=60).start()
    filler = real_disk / "filler"
    try:
        with open(filler, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, shutil.disk_usage(real_disk).free - 2_000_000)
        with pytest.raises(PublishError, match=r"not enough disk space .* are free"):
            publish_index(stack.repo, big_index)
        _assert_untouched(stack.repo, before, hidden)
        monkeypatch.setattr("megaclass.export.repository.publish.check_free_space", lambda *a, **k: None)
        with pytest.raises(PublishError, match=r"No space left on device.*the serving version is untouched"):
            publish_index(stack.repo, big_index)
        _assert_untouched(stack.repo, before, hidden)
        assert served_version(stack) == served
        traffic.settle(after=time.monotonic())
    finally:
        filler.unlink(missing_ok=True)
        traffic.stop()
    assert traffic.errors == [], traffic.errors[:3]


def test_read_only_repository_while_serving(stack, real_disk, big_index):
    before, served, hidden = versions(stack.repo / RETRIEVER), served_version(stack), _hidden(stack.repo)
    subprocess.run(["mount", "-o", "remount,ro", str(real_disk)], check=True, timeout=30)
    try:
        with pytest.raises(
            PublishError, match=r"could not write .*Read-only file system.*the serving version is untouched"
        ):
            publish_index(stack.repo, big_index)
        assert served_version(stack) == served
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(real_disk)], check=True, timeout=30)
    _assert_untouched(stack.repo, before, hidden)
