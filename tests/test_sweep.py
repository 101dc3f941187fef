"""Integration: sweeps over a grid of parameters, in parallel, with one failing combination."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from nbdeploy.errors import ParameterError
from nbdeploy.pipeline.sweep import grid, parse_sweep_option, sweep_output_name

NOTEBOOK = [
    ("x: int = 1  # first axis\nmode: str = 'a'  # second axis\nbase: float = 0.0", ["parameters"]),
    "import nbdeploy\n"
    "if x == 2 and mode == 'b':\n"
    "    raise RuntimeError('combination x=2, mode=b is broken')\n"
    "nbdeploy.log_metric('score', base + x * 10 + (1 if mode == 'b' else 0))",
]


def test_grid_is_the_cartesian_product_in_a_stable_order():
    assert grid({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
        {"a": 2, "b": "x"},
        {"a": 2, "b": "y"},
    ]


def test_sweep_option_forms():
    assert parse_sweep_option("n=1,2, 3") == ("n", ["1", "2", "3"], True)
    assert parse_sweep_option("sizes=[[1, 2], [3]]") == ("sizes", [[1, 2], [3]], False)
    with pytest.raises(ParameterError, match="NAME=V1,V2"):
        parse_sweep_option("n")
    with pytest.raises(ParameterError, match="not a JSON list"):
        parse_sweep_option("n=[1,")


def test_output_names_are_safe_and_unique():
    name = sweep_output_name("train", 2, {"path": "../../etc/passwd", "n": 3})
    assert "/" not in name and name.startswith("train-03-") and name.endswith(".ipynb")


@pytest.mark.integration
@pytest.mark.usefixtures("python_kernel")
def test_sweep_runs_every_combination_and_survives_a_failure(make_notebook, cli, tmp_path):
    nb = make_notebook("sweep.ipynb", NOTEBOOK)
    out_dir = tmp_path / "out"
    report = tmp_path / "junit.xml"
    result = cli(
        "run",
        str(nb),
        "--sweep",
        "x=1,2",
        "--sweep",
        "mode=a,b",
        "-p",
        "base",
        "0.5",
        "--parallel",
        "2",
        "--no-mlflow",
        "--output-dir",
        str(out_dir),
        "--junit",
        str(report),
        "--json",
    )
    assert result.code == 1, result
    summary = result.json
    assert (
        summary["kind"] == "sweep" and summary["failed"] == 1 and summary["swept"] == ["x", "mode"]
    )
    runs = summary["runs"]
    assert [(r["parameters"]["x"], r["parameters"]["mode"], r["status"]) for r in runs] == [
        (1, "a", "succeeded"),
        (1, "b", "succeeded"),
        (2, "a", "succeeded"),
        (2, "b", "failed"),
    ]
    assert [r["metrics"].get("score") for r in runs] == [10.5, 11.5, 20.5, None]
    assert all(r["parameters"]["base"] == 0.5 for r in runs)
    assert "combination x=2, mode=b is broken" in runs[3]["message"]
    assert len({r["group_id"] for r in runs}) == 1
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "sweep-01-x=1-mode=a.ipynb",
        "sweep-02-x=1-mode=b.ipynb",
        "sweep-03-x=2-mode=a.ipynb",
        "sweep-04-x=2-mode=b.ipynb",
    ]
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite.get("tests") == "4" and suite.get("failures") == "1"
    [failure] = suite.findall("testcase/failure")
    assert "RuntimeError: combination x=2, mode=b is broken" in failure.get("message")


@pytest.mark.integration
@pytest.mark.usefixtures("python_kernel")
def test_sweep_table_in_text_mode_and_bad_value_before_any_kernel(make_notebook, cli, home):
    nb = make_notebook("sweep.ipynb", NOTEBOOK)
    ok = cli("run", str(nb), "--sweep", "x=3,4", "--no-mlflow")
    assert ok.code == 0, ok
    header = ok.out.splitlines()[0].split()
    assert header[:4] == ["#", "x", "status", "time"] and "score" in header
    assert "2 of 2 runs succeeded" in ok.out
    bad = cli("run", str(nb), "--sweep", "x=1,two,3", "--no-mlflow")
    assert bad.code == 2
    assert "parameter 'x' of sweep.ipynb expects int, got two" in bad.err
