"""The one step definition."""

from __future__ import annotations

import pytest

from megaclass.export.lifecycle.refresh_steps import STEP_FUNCTIONS
from megaclass.export.lifecycle.steps import GATE, PUBLISH, STEP_NAMES, step_command, steps_until


def test_every_step_has_its_function_and_the_gate_comes_right_before_publish():
    assert list(STEP_FUNCTIONS) == list(STEP_NAMES)
    assert STEP_NAMES[-2:] == (GATE, PUBLISH)


def test_steps_until_and_the_command():
    assert [s.name for s in steps_until("index")] == ["diff", "retrain", "index"]
    with pytest.raises(ValueError, match="unknown step"):
        steps_until("deploy")
    assert step_command("megaclass", ["--catalog", "c"], "tune") == [
        "megaclass",
        "refresh",
        "--catalog",
        "c",
        "--step",
        "tune",
    ]
