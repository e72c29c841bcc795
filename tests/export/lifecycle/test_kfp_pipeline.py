"""The Kubeflow pipeline compiles from the step definition; its YAML has every step, in order, gated."""

from __future__ import annotations

import yaml

from megaclass.export.lifecycle.kfp_pipeline import PIPELINE_NAME, compile_pipeline
from megaclass.export.lifecycle.steps import STEPS


def test_the_compiled_yaml_runs_every_step_in_the_image_with_the_gate_as_a_condition(tmp_path):
    out = compile_pipeline(tmp_path / "refresh.yaml", image="registry.example/megaclass:cpu")
    spec = yaml.safe_load(out.read_text())
    assert spec["pipelineInfo"]["name"] == PIPELINE_NAME
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["image"]["defaultValue"] == "registry.example/megaclass:cpu"
    assert {"catalog", "repository", "work_dir"} <= set(params)
    executors = spec["deploymentSpec"]["executors"]
    assert set(executors) == {f"exec-refresh-{s.name}" for s in STEPS}
    for s in STEPS:
        container = executors[f"exec-refresh-{s.name}"]["container"]
        assert container["command"] == ["megaclass", "refresh"] and container["args"][-2:][0] in (
            "--step",
            "--decision-file",
        )
        assert "--step" in container["args"] and s.name in container["args"]
        assert container["image"].startswith("{{$.inputs.parameters['pipelinechannel--image']")
    tasks = spec["root"]["dag"]["tasks"]
    names = [s.name for s in STEPS if s.name != "publish"]
    for before, after in zip(names[:-1], names[1:], strict=True):
        assert tasks[f"refresh-{after}"]["dependentTasks"] == [f"refresh-{before}"]
        assert tasks[f"refresh-{after}"]["cachingOptions"] == {}  # KFP's caching off: the steps skip themselves
    condition = next(t for n, t in tasks.items() if n.startswith("condition"))
    assert condition["dependentTasks"] == ["refresh-gate"]
    assert "== 'passed'" in condition["triggerPolicy"]["condition"]
    inner = spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
    assert list(inner) == ["refresh-publish"] and inner["refresh-publish"]["retryPolicy"]["maxRetryCount"] == 2
    assert "retryPolicy" not in tasks["refresh-gate"]
    assert tasks["refresh-diff"]["retryPolicy"]["maxRetryCount"] == 2
    assert (
        compile_pipeline(tmp_path / "again.yaml", image="registry.example/megaclass:cpu").read_text() == out.read_text()
    )
