"""The refresh as a Kubeflow pipeline, compiled with the `kfp` SDK from `steps.STEPS`.

One container component per step, each running the project's image (docker/Dockerfile.cpu or
the GPU image) with `megaclass refresh ... --step NAME`; the gate writes its decision as an
output parameter and `publish` runs under `dsl.If(decision == "passed")`. The steps share the
catalogue, the repository and the work folder through a volume mounted at the same path in
every pod (the cluster's choice: a PVC, for one). KFP's own caching is off: the steps skip what
did not change themselves, and a scheduled run must look at the catalogue again.
"""

# No `from __future__ import annotations`: kfp reads the component signatures' real types.
from pathlib import Path

from megaclass.export.lifecycle.steps import GATE, PUBLISH, STEPS

PIPELINE_NAME = "megaclass-refresh"
STATIC_IMAGE = "megaclass:cpu"  # a placeholder: the pipeline's `image` parameter replaces it per task


def _component(step: str):
    """The container component of one step (named after it)."""
    from kfp import dsl

    if step == GATE:

        def fn(catalog: str, repository: str, work_dir: str, decision: dsl.OutputPath(str)):
            return dsl.ContainerSpec(
                image=STATIC_IMAGE,
                command=["megaclass", "refresh"],
                args=["--catalog", catalog, "--repository", repository, "--work-dir", work_dir, "--step", step,
                      "--decision-file", decision],
            )  # fmt: skip

    else:

        def fn(catalog: str, repository: str, work_dir: str):
            return dsl.ContainerSpec(
                image=STATIC_IMAGE,
                command=["megaclass", "refresh"],
                args=["--catalog", catalog, "--repository", repository, "--work-dir", work_dir, "--step", step],
            )

    fn.__name__ = f"refresh_{step}"
    fn.__qualname__ = fn.__name__
    fn.__doc__ = next(s.summary for s in STEPS if s.name == step)
    return dsl.container_component(fn)


def build_pipeline(catalog: str = "/data/catalog.csv", repository: str = "/models", work_dir: str = "/data/cache"):
    """The `@dsl.pipeline` function over every step in order, the gate as a condition on publish."""
    from kfp import dsl

    components = {s.name: _component(s.name) for s in STEPS}

    @dsl.pipeline(name=PIPELINE_NAME, description="refresh the serving index from a catalogue, behind a quality gate")
    def refresh_pipeline(
        image: str = STATIC_IMAGE, catalog: str = catalog, repository: str = repository, work_dir: str = work_dir
    ):
        previous = None
        gate = None
        for s in STEPS:
            if s.name == PUBLISH:
                with dsl.If(gate.outputs["decision"] == "passed", name="gate-passed"):
                    task = components[s.name](catalog=catalog, repository=repository, work_dir=work_dir)
            else:
                task = components[s.name](catalog=catalog, repository=repository, work_dir=work_dir)
            task.set_container_image(image).set_caching_options(False).set_display_name(s.name)
            if s.retries:
                task.set_retry(num_retries=s.retries)
            if previous is not None:
                task.after(previous)
            if s.name == GATE:
                gate = task
            previous = task

    return refresh_pipeline


def compile_pipeline(
    out: Path, image: str = STATIC_IMAGE, catalog: str = "/data/catalog.csv", repository: str = "/models"
) -> Path:
    """Compile the pipeline to the YAML a Kubeflow Pipelines server runs (`image` its default image)."""
    from kfp import compiler

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(catalog, repository), str(out), pipeline_parameters={"image": image})
    return out
