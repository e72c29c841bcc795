"""The generated Airflow DAG, executed for real (`airflow dags test` in .venv-airflow) on the tiny data set."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from megaclass.export.lifecycle.airflow_dag import DAG_ID, airflow_bin, render_dag, run_dag_test, write_dag
from megaclass.export.lifecycle.steps import KEEP_SERVING, STEP_NAMES
from megaclass.export.repository.generate import versions
from megaclass.export.repository.tiny import build_tiny_repository, write_tiny_catalog
from megaclass.python_backend.serving.config import ServingConfig

MEGACLASS = Path(sys.executable).parent / "megaclass"


def test_the_dag_file_has_one_task_per_step_and_the_gate_as_a_branch():
    text = render_dag(["--catalog", "c.csv"], "/x/megaclass", schedule="@hourly")
    ast.parse(text)  # valid Python, without importing Airflow
    assert [m for m in re.findall(r'^\s+"(\w+)",\n\s+"', text, re.M)] == list(STEP_NAMES)
    assert "BranchPythonOperator(task_id=name, python_callable=gate_branch" in text
    assert f'EmptyOperator(task_id="{KEEP_SERVING}"' in text
    assert 'schedule="@hourly"' in text and '"retries": 2' in text
    assert "import megaclass" not in text  # runs in .venv-airflow, which cannot import the project


@pytest.mark.slow
def test_the_dag_runs_in_airflow_and_publishes_the_refresh(tmp_path):
    airflow = airflow_bin()
    if not airflow.exists():
        pytest.skip(f"{airflow} is missing: run `make setup` (scripts/setup.sh builds .venv-airflow)")
    repo, _, _ = build_tiny_repository(tmp_path, ServingConfig())
    catalog = write_tiny_catalog(tmp_path / "catalog", 44, drop=(1000, 1001))
    args = ["--catalog", str(catalog), "--repository", str(repo), "--work-dir", str(tmp_path / "work")]
    dag = write_dag(tmp_path / "dags" / f"{DAG_ID}.py", args, megaclass=str(MEGACLASS), retry_delay_s=1)
    rc, log = run_dag_test(dag, airflow, tmp_path / "airflow")
    assert rc == 0, log[-5000:]
    assert re.search(r"DagRun Finished: dag_id=megaclass_refresh.*state=success", log), log[-3000:]
    assert versions(repo / "retriever") == [1, 2]  # the publish task ran: the refreshed index is version 2
    assert (tmp_path / "work" / "mlflow" / "mlflow.db").exists()
