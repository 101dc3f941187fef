"""The example notebooks a new user runs first (and `make demo` runs) keep working."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "example_notebooks"
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("python_kernel")]


def test_example_pipeline_runs_end_to_end_and_is_tracked(tmp_path, cli):
    from mlflow.tracking import MlflowClient

    project = tmp_path / "examples"
    shutil.copytree(EXAMPLES, project, ignore=shutil.ignore_patterns("data"))
    result = cli("run", str(project / "pipeline.yaml"), "--json")
    assert result.code == 0, result
    steps = {s["step"]: s["run"] for s in result.json["steps"]}
    assert steps["prepare"]["metrics"]["rows"] == 2000
    assert 0.6 < steps["train"]["metrics"]["accuracy"] <= 1.0
    assert (project / "data" / "train.csv").exists()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'nbdeploy-home' / 'mlflow.db'}")
    assert client.get_run(steps["train"]["mlflow_run_id"]).data.params["n_estimators"] == "100"


def test_example_notebook_parameters(cli):
    result = cli("params", str(EXAMPLES / "train.ipynb"), "--json")
    names = {p["name"]: p["type"] for p in result.json}
    assert names == {
        "n_estimators": "int",
        "max_depth": "int",
        "test_size": "float",
        "data_path": "str",
        "seed": "int",
    }
