"""``nbdeploy ci init`` writes a valid GitHub Actions workflow; targets are validated."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from nbdeploy.ci import write_github_workflow
from nbdeploy.errors import NbdeployError

EXAMPLES = Path(__file__).resolve().parent.parent / "example_notebooks"


def test_ci_init_finds_pipelines_and_writes_a_workflow(tmp_path, cli):
    shutil.copytree(EXAMPLES, tmp_path / "example_notebooks", ignore=shutil.ignore_patterns("data"))
    (tmp_path / "requirements.txt").write_text("scikit-learn\n")
    result = cli("ci", "init", cwd=tmp_path)
    assert result.code == 0, result
    workflow = yaml.safe_load((tmp_path / ".github/workflows/nbdeploy.yml").read_text())
    steps = workflow["jobs"]["pipelines"]["steps"]
    commands = "\n".join(step.get("run", "") for step in steps)
    assert "pip install -r requirements.txt" in commands
    assert "nbdeploy run example_notebooks/pipeline.yaml" in commands
    assert "--junit nbdeploy-output/example_notebooks-pipeline.xml" in commands
    assert steps[-1]["if"] == "always()"
    again = cli("ci", "init", cwd=tmp_path)
    assert again.code == 2 and "exists already" in again.err


@pytest.mark.parametrize(
    "target", ["evil${{ github.token }}.ipynb", "a;rm -rf ~.ipynb", "x'y.ipynb"]
)
def test_ci_init_refuses_targets_that_could_inject(tmp_path, target):
    (tmp_path / target).write_text("{}")
    with pytest.raises(NbdeployError, match="may only contain"):
        write_github_workflow(tmp_path / "wf.yml", targets=[target], root=tmp_path)


def test_ci_init_refuses_targets_outside_the_project(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "outside.ipynb").write_text("{}")
    with pytest.raises(NbdeployError, match="outside the project"):
        write_github_workflow(project / "wf.yml", targets=["../outside.ipynb"], root=project)
