"""The one definition of the refresh pipeline's steps, read by the local runner (`refresh.py`), the
Airflow DAG generator (`airflow_dag.py`) and the Kubeflow pipeline compiler (`kfp_pipeline.py`).

Every step is `megaclass refresh ... --step NAME` (it runs the steps before it first, skipping
the finished ones), so an orchestrator's task is one command in the project's image or venv.
The `gate` step decides; `publish` runs only when it passed (an orchestrator's branch / condition).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """One step: its name (the task id), what it does, and how often an orchestrator retries it."""

    name: str
    summary: str
    retries: int = 2


STEPS: tuple[Step, ...] = (
    Step("diff", "compare the catalogue with the serving index: classes added, removed, with changed samples"),
    Step("retrain", "warm-start retraining of the encoder when a retrain rule fires (else the serving encoder)"),
    Step("index", "enrol new and changed classes, remove gone ones; rebuild when the encoder changed"),
    Step("tune", "rebuild the router and tune nprobe when needs_rebuild says so (else skipped)"),
    Step("evaluate", "candidate and serving version on the same held-out queries"),
    Step("gate", "publish only when no metric falls below the serving version's by more than its margin", 0),
    Step("publish", "publish the candidate as the next version and load it (zero downtime); register it"),
)
STEP_NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)
GATE, PUBLISH = "gate", "publish"
KEEP_SERVING = "keep_serving"  # the orchestrators' task for a refused candidate (nothing to do)
REFUSED = 3  # exit status of `megaclass refresh` when the gate refused the candidate (the old version serves)


def steps_until(name: str) -> tuple[Step, ...]:
    """The steps up to and including `name`, in order."""
    if name not in STEP_NAMES:
        raise ValueError(f"unknown step {name!r}; steps: {', '.join(STEP_NAMES)}")
    return STEPS[: STEP_NAMES.index(name) + 1]


def step_command(megaclass: str, args: list[str], step: str) -> list[str]:
    """The command line of one step: `megaclass refresh ARGS --step STEP`."""
    return [megaclass, "refresh", *args, "--step", step]
