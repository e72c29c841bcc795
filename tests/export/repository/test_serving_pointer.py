"""The serving pointer: publishing does not move it, promote and rollback do, pruning keeps it."""

from __future__ import annotations

from pathlib import Path

import pytest

from megaclass.export.repository.generate import (
    ModelShapes,
    parse_config,
    publish_version,
    retriever_config,
    versions,
    write_config,
)
from megaclass.export.repository.serving_pointer import (
    PointerError,
    promote,
    prune,
    rollback_pointer,
    rollback_target,
    serving_version,
)
from megaclass.python_backend.serving.config import ServingConfig
from megaclass.python_backend.serving.version_integrity import make_writable


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "retriever"
    write_config(d, retriever_config(ServingConfig(), ModelShapes(image_size=8, embedding_dim=4)))
    return d


def _publish(model_dir: Path, text: str, keep: int | None = None) -> int:
    src = model_dir.parent / "a.txt"
    src.write_text(text)
    return publish_version(model_dir, {"a.txt": src}, keep=keep)


def test_publishing_does_not_move_the_pointer_promote_does(model_dir):
    promote(model_dir, _publish(model_dir, "1"))
    _publish(model_dir, "2")
    assert serving_version(model_dir) == 1
    policy = parse_config((model_dir / "config.pbtxt").read_text()).version_policy
    assert list(policy.specific.versions) == [1] and policy.WhichOneof("policy_choice") == "specific"
    assert promote(model_dir, 2) == 1
    assert serving_version(model_dir) == 2 and rollback_target(model_dir) == 1


def test_rollback_returns_to_what_served_before_not_to_the_next_number(model_dir):
    for text in "123":
        _publish(model_dir, text)
    promote(model_dir, 1)
    promote(model_dir, 3)  # 2 was published but never served
    assert rollback_pointer(model_dir) == (3, 1)
    assert serving_version(model_dir) == 1 and versions(model_dir) == [1, 2, 3]  # nothing deleted


def test_pruning_keeps_the_serving_and_rollback_versions(model_dir):
    promote(model_dir, _publish(model_dir, "1"))
    promote(model_dir, _publish(model_dir, "2"))  # serving 2, rollback target 1
    for text in "345":
        _publish(model_dir, text, keep=2)  # published, not promoted
    assert versions(model_dir) == [1, 2, 4, 5]
    assert serving_version(model_dir) == 2 and rollback_target(model_dir) == 1
    assert prune(model_dir, 1) == [4]


def test_promote_refuses_a_missing_or_tampered_version(model_dir):
    v = _publish(model_dir, "1")
    with pytest.raises(PointerError, match="no version 7"):
        promote(model_dir, 7)
    make_writable(model_dir / str(v))
    (model_dir / str(v) / "a.txt").write_text("changed")
    with pytest.raises(PointerError, match="modified after it was published"):
        promote(model_dir, v)


def test_nothing_to_roll_back_to(model_dir):
    promote(model_dir, _publish(model_dir, "1"))
    with pytest.raises(PointerError, match="no earlier version"):
        rollback_pointer(model_dir)
