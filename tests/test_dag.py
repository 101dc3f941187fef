"""pipeline.yaml: validation, dependency order, outputs handed downstream, caching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nbdeploy.errors import PipelineSpecError
from nbdeploy.pipeline.dag import load_pipeline, topological_order

PREPARE = [
    ("rows: int = 3  # rows to write\ndata_path: str = 'data.csv'", ["parameters"]),
    "import nbdeploy\n"
    "with open(data_path, 'w') as f:\n"
    "    f.write('\\n'.join(str(i) for i in range(rows)))\n"
    "nbdeploy.log_metric('rows', rows)",
]
TRAIN = [
    ("data_path: str = ''\nscale: float = 1.0", ["parameters"]),
    "import nbdeploy\n"
    "values = [int(v) for v in open(data_path).read().split()]\n"
    "nbdeploy.log_metric('total', sum(values) * scale)",
]
REPORT = [
    ("title: str = 'report'", ["parameters"]),
    "import nbdeploy\nnbdeploy.log_metric('independent', 1)",
]


def write_pipeline(folder: Path, make_notebook, spec: dict) -> Path:
    make_notebook("prepare.ipynb", PREPARE, folder=folder)
    make_notebook("train.ipynb", TRAIN, folder=folder)
    make_notebook("report.ipynb", REPORT, folder=folder)
    path = folder / "pipeline.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


SPEC = {
    "steps": [
        {
            "name": "prepare",
            "notebook": "prepare.ipynb",
            "parameters": {"rows": 4},
            "outputs": {"data_path": "out/data.csv"},
        },
        {
            "name": "train",
            "notebook": "train.ipynb",
            "needs": ["prepare"],
            "parameters": {"scale": 2},
        },
        {"name": "report", "notebook": "report.ipynb"},
    ]
}


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([{"name": "a"}], "`notebook`"),
        (
            [{"name": "a", "notebook": "x.ipynb"}, {"name": "a", "notebook": "y.ipynb"}],
            "repeated: a",
        ),
        ([{"name": "a", "notebook": "x.ipynb", "needs": ["zz"]}], "unknown steps: zz"),
        (
            [
                {"name": "a", "notebook": "x.ipynb", "needs": ["b"]},
                {"name": "b", "notebook": "y.ipynb", "needs": ["a"]},
            ],
            "cycle: a -> b -> a",
        ),
        ([{"name": "a", "notebook": "../outside.ipynb"}], "outside the pipeline's directory"),
        (
            [{"name": "a", "notebook": "x.ipynb", "outputs": {"f": "/etc/passwd"}}],
            "outside the pipeline's directory",
        ),
        ([{"name": "a", "notebook": "x.ipynb", "retries": 3}], "unknown field(s) retries"),
    ],
)
def test_malformed_pipelines_are_rejected_with_the_step_named(tmp_path, steps, message):
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps({"steps": steps}))
    with pytest.raises(PipelineSpecError) as caught:
        load_pipeline(path)
    assert message in str(caught.value)
    assert "pipeline.yaml" in str(caught.value)


def test_order_puts_needs_first(tmp_path, make_notebook):
    pipeline = load_pipeline(write_pipeline(tmp_path, make_notebook, SPEC))
    order = [step.name for step in topological_order(pipeline)]
    assert order.index("prepare") < order.index("train")


@pytest.mark.integration
@pytest.mark.usefixtures("python_kernel")
def test_pipeline_hands_outputs_downstream_and_caches_unchanged_steps(tmp_path, make_notebook, cli):
    path = write_pipeline(tmp_path / "project", make_notebook, SPEC)
    first = cli("run", str(path), "--parallel", "2", "--no-mlflow", "--json")
    assert first.code == 0, first
    steps = {s["step"]: s for s in first.json["steps"]}
    assert {name: s["status"] for name, s in steps.items()} == {
        "prepare": "succeeded",
        "train": "succeeded",
        "report": "succeeded",
    }
    data = tmp_path / "project" / "out" / "data.csv"
    assert data.read_text() == "0\n1\n2\n3"
    assert steps["train"]["run"]["parameters"]["data_path"] == str(data)
    assert steps["train"]["run"]["metrics"] == {"total": 12.0}  # (0+1+2+3) * 2

    second = cli("run", str(path), "--no-mlflow", "--json")
    assert second.code == 0, second
    assert [s["status"] for s in second.json["steps"]] == ["cached", "cached", "cached"]
    assert second.json["steps"][1]["run"]["id"] == steps["train"]["run"]["id"]

    changed = cli("run", str(path), "-p", "scale", "3", "--no-mlflow", "--json")
    assert [s["status"] for s in changed.json["steps"]] == ["cached", "succeeded", "cached"]
    assert changed.json["steps"][1]["run"]["metrics"] == {"total": 18.0}

    data.write_text("5")  # an output changed behind the pipeline's back
    rerun = cli("run", str(path), "--no-mlflow", "--json")
    assert [s["status"] for s in rerun.json["steps"]] == ["succeeded", "cached", "cached"]

    forced = cli("run", str(path), "--force", "--no-mlflow")
    assert forced.code == 0
    assert forced.out.count("succeeded") == 3 and "cached" not in forced.out


@pytest.mark.integration
@pytest.mark.usefixtures("python_kernel")
def test_failed_step_skips_its_dependents_but_not_the_others(tmp_path, make_notebook, cli):
    spec = json.loads(json.dumps(SPEC))
    spec["steps"][0]["parameters"]["rows"] = "many"  # wrong type: caught before any kernel
    path = write_pipeline(tmp_path, make_notebook, spec)
    early = cli("run", str(path), "--no-mlflow")
    assert early.code == 2
    assert "step 'prepare'" in early.err and "expects int, got 'many' (str)" in early.err

    make_notebook("prepare.ipynb", [PREPARE[0], "raise OSError('disk full')"], folder=tmp_path)
    spec["steps"][0]["parameters"]["rows"] = 2
    path.write_text(json.dumps(spec))
    report = tmp_path / "junit.xml"
    result = cli("run", str(path), "--no-mlflow", "--junit", str(report), "--json")
    assert result.code == 1
    statuses = {s["step"]: s["status"] for s in result.json["steps"]}
    assert statuses == {"prepare": "failed", "train": "skipped", "report": "succeeded"}
    xml = report.read_text()
    assert 'failures="1"' in xml and 'skipped="1"' in xml and "OSError: disk full" in xml


@pytest.mark.integration
@pytest.mark.usefixtures("python_kernel")
def test_step_that_does_not_write_its_declared_output_fails(tmp_path, make_notebook, cli):
    spec = {
        "steps": [
            {"name": "prepare", "notebook": "prepare.ipynb", "outputs": {"missing": "nothing.csv"}}
        ]
    }
    path = write_pipeline(tmp_path, make_notebook, spec)
    result = cli("run", str(path), "--no-mlflow")
    assert result.code == 1
    assert "finished without writing its declared outputs: missing" in result.out
