"""Integration: single notebook runs through the real CLI and real kernels."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
import pytest

from nbdeploy.store import StateStore
from nbdeploy.store.runs import RunStore

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("python_kernel")]

TYPED_PARAMETERS = """\
count: int = 1  # how many
rate: float = 0.5  # a rate
flag: bool = False  # a switch
sizes: list[int] = [1]  # sizes
options: dict = {}  # options
day: date = None  # a day
label: str = "x"  # free text
maybe: int | None = None  # optional
"""

REPORT_TYPES = """\
import nbdeploy
for name in ["count", "rate", "flag", "sizes", "options", "day", "label", "maybe"]:
    value = globals()[name]
    nbdeploy.log_param(name, [type(value).__name__, repr(value)])
"""


def store_runs(home: Path) -> list:
    return RunStore(StateStore(home / "state.db")).recent()


def test_typed_parameters_are_injected_with_their_types(make_notebook, cli, home):
    nb = make_notebook(
        "typed.ipynb",
        ["from datetime import date", (TYPED_PARAMETERS, ["parameters"]), REPORT_TYPES],
    )
    hostile = "a\"b'c\\n\nimport os; os.system('echo pwned') #"
    result = cli(
        "run",
        str(nb),
        "--no-mlflow",
        "--json",
        "-p",
        "count",
        "7",
        "-p",
        "rate",
        "2",
        "-p",
        "flag",
        "yes",
        "-p",
        "sizes",
        "3,4",
        "-p",
        "options",
        '{"k": [1, 2]}',
        "-p",
        "day",
        "2024-02-29",
        "-p",
        "label",
        hostile,
        "-p",
        "maybe",
        "None",
    )
    assert result.code == 0, result
    logged = result.json["logged_params"]
    assert logged["count"] == ["int", "7"]
    assert logged["rate"] == ["float", "2.0"]
    assert logged["flag"] == ["bool", "True"]
    assert logged["sizes"] == ["list", "[3, 4]"]
    assert logged["options"] == ["dict", "{'k': [1, 2]}"]
    assert logged["day"] == ["date", "datetime.date(2024, 2, 29)"]
    assert logged["label"] == ["str", repr(hostile)]
    assert logged["maybe"] == ["NoneType", "None"]
    output = nbformat.read(result.json["output_path"], as_version=4)
    injected = [c for c in output.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1
    assert output.cells.index(injected[0]) == 2  # right after the parameters cell
    assert "pwned" not in "".join(
        o.get("text", "") for c in output.cells for o in c.get("outputs", [])
    )


def test_wrong_type_fails_before_any_kernel_with_a_clear_message(make_notebook, cli, home):
    nb = make_notebook(
        "typed.ipynb", [("count: int = 1  # how many", ["parameters"]), "print(count)"]
    )
    result = cli("run", str(nb), "-p", "count", "many")
    assert result.code == 2
    assert "parameter 'count' of typed.ipynb expects int, got many" in result.err
    assert "Traceback" not in result.err + result.out
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


def test_unknown_parameter_lists_the_known_ones(make_notebook, cli):
    nb = make_notebook("typed.ipynb", [("count: int = 1\nrate: float = 0.1", ["parameters"])])
    result = cli("run", str(nb), "-p", "cuont", "3")
    assert result.code == 2
    assert "unknown parameter 'cuont'" in result.err
    assert "count (int), rate (float)" in result.err
    assert "did you mean 'count'" in result.err


def test_skip_tag_leaves_cells_out_and_marks_them(make_notebook, cli):
    nb = make_notebook(
        "skip.ipynb",
        [
            "x = 1",
            ("raise RuntimeError('exploration only')", ["nbdeploy:skip"]),
            "import nbdeploy; nbdeploy.log_metric('x', x)",
        ],
    )
    result = cli("run", str(nb), "--no-mlflow", "--json")
    assert result.code == 0, result
    assert result.json["metrics"] == {"x": 1.0}
    output = nbformat.read(result.json["output_path"], as_version=4)
    skipped = output.cells[1]
    assert skipped.metadata["nbdeploy"]["skipped"] is True
    assert skipped.execution_count is None
    assert "skipped" in skipped.outputs[0]["text"]


def test_failing_cell_names_cell_line_and_exception_and_keeps_the_output(make_notebook, cli, home):
    nb = make_notebook(
        "fails.ipynb",
        [
            ("md", "# title"),
            "value = 41",
            "print('before')\nraise ValueError(f'bad value {value}')",
            "print('never')",
        ],
    )
    result = cli("run", str(nb), "--no-mlflow")
    assert result.code == 1
    assert "fails.ipynb, cell 3 (print('before')): ValueError: bad value 41" in result.out
    assert "Traceback" not in result.err
    [record] = store_runs(home)
    assert record.status == "failed"
    assert record.error["cell"] == 3 and record.error["ename"] == "ValueError"
    output = nbformat.read(record.output_path, as_version=4)
    errors = [o for o in output.cells[2].outputs if o.output_type == "error"]
    assert errors and errors[0].evalue == "bad value 41"
    assert output.cells[3].outputs == []


def test_timeout_stops_the_run_and_says_so(make_notebook, cli, home):
    nb = make_notebook("slow.ipynb", ["x = 1", "import time\ntime.sleep(60)"])
    started = time.monotonic()
    result = cli("run", str(nb), "--timeout", "3", "--no-mlflow")
    assert result.code == 1
    assert "slow.ipynb, cell 2 (import time): timed out after 3 s" in result.out
    assert time.monotonic() - started < 45
    [record] = store_runs(home)
    assert record.error["kind"] == "timeout"
    output = nbformat.read(record.output_path, as_version=4)
    assert any(o.get("ename") == "TimeoutError" for o in output.cells[1].outputs)


def test_unknown_kernel_lists_available_kernels(make_notebook, cli, home):
    nb = make_notebook("k.ipynb", ["x = 1"])
    result = cli("run", str(nb), "--kernel", "no-such-kernel")
    assert result.code == 2
    assert "kernel 'no-such-kernel' is not installed" in result.err
    assert "python3" in result.err
    assert not (home / "state.db").exists() or store_runs(home) == []


def test_missing_notebook_kernel_falls_back_with_a_notice(make_notebook, cli):
    nb = make_notebook(
        "other.ipynb", ["import nbdeploy; nbdeploy.log_metric('ok', 1)"], kernel="julia-9.9"
    )
    result = cli("run", str(nb), "--no-mlflow")
    assert result.code == 0, result
    assert "kernel 'julia-9.9' from other.ipynb is not installed; using 'python3'" in result.err


def test_metrics_params_artifacts_recorded_and_listed(make_notebook, cli, tmp_path):
    nb = make_notebook(
        "logs.ipynb",
        [
            ("alpha: float = 0.1", ["parameters"]),
            "import nbdeploy\n"
            "nbdeploy.log_metric('loss', 0.9, step=0)\n"
            "nbdeploy.log_metric('loss', 0.4, step=1)\n"
            "nbdeploy.log_param('rows', 120)\n"
            "open('report.txt', 'w').write('hello')\n"
            "nbdeploy.log_artifact('report.txt')",
        ],
    )
    result = cli("run", str(nb), "-p", "alpha", "0.3", "--no-mlflow", "--json")
    assert result.code == 0, result
    run = result.json
    assert run["metrics"] == {"loss": 0.4}
    assert run["logged_params"] == {"rows": 120}
    assert run["parameters"] == {"alpha": 0.3}
    [artifact] = run["artifacts"]
    assert Path(artifact).read_text() == "hello"
    listing = cli("runs")
    assert run["id"] in listing.out and "loss=0.4" in listing.out
    shown = cli("runs", run["id"][:15], "--json")
    assert shown.json["id"] == run["id"]
    assert cli("runs", "does-not-exist").code == 2


def test_run_is_recorded_in_mlflow(make_notebook, cli, home):
    from mlflow.tracking import MlflowClient

    nb = make_notebook(
        "tracked.ipynb",
        [
            ("depth: int = 3  # tree depth", ["parameters"]),
            "import nbdeploy\nnbdeploy.log_metric('accuracy', 0.75)",
        ],
    )
    result = cli("run", str(nb), "-p", "depth", "5", "--json")
    assert result.code == 0, result
    mlflow_id = result.json["mlflow_run_id"]
    assert mlflow_id
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    run = client.get_run(mlflow_id)
    assert run.data.params["depth"] == "5"
    assert run.data.metrics["accuracy"] == 0.75
    assert run.data.tags["nbdeploy.run_id"] == result.json["id"]
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "tracked"
    artifacts = [a.path for a in client.list_artifacts(mlflow_id, "notebook")]
    assert artifacts == ["notebook/tracked.ipynb"]
    assert (home / "mlartifacts").is_dir()  # not ./mlruns in the working directory


def test_log_output_streams_cell_output(make_notebook, cli):
    nb = make_notebook("talk.ipynb", ["print('hello from', 'the kernel')"])
    quiet = cli("run", str(nb), "--no-mlflow")
    assert "hello from the kernel" not in quiet.out + quiet.err
    loud = cli("run", str(nb), "--no-mlflow", "--log-output")
    assert "hello from the kernel" in loud.out


def test_junit_report_for_a_single_failed_run(make_notebook, cli, tmp_path):
    import xml.etree.ElementTree as ET

    nb = make_notebook("bad.ipynb", ["1/0"])
    report = tmp_path / "report.xml"
    result = cli("run", str(nb), "--no-mlflow", "--junit", str(report))
    assert result.code == 1
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite.get("tests") == "1" and suite.get("failures") == "1"
    failure = suite.find("testcase/failure")
    assert "cell 1 (1/0): ZeroDivisionError: division by zero" in failure.get("message")


def test_params_command_lists_types_defaults_and_help(make_notebook, cli):
    nb = make_notebook(
        "p.ipynb", [("n_estimators: int = 100  # trees in the forest\nname = 'rf'", ["parameters"])]
    )
    result = cli("params", str(nb), "--json")
    assert result.code == 0
    assert result.json == [
        {"name": "n_estimators", "type": "int", "default": 100, "help": "trees in the forest"},
        {"name": "name", "type": "str", "default": "rf", "help": ""},
    ]
    text = cli("params", str(nb)).out
    assert "n_estimators  int" in text


def test_log_functions_outside_a_run_print_a_notice(capsys):
    import nbdeploy
    from nbdeploy.pipeline import context

    context._notice_shown = False
    nbdeploy.log_metric("accuracy", 0.9)
    nbdeploy.log_param("a", 1)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not running under `nbdeploy run`" in err


def test_cli_help_is_fast_and_imports_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys, nbdeploy.cli as c\n"
        "heavy = ('papermill', 'mlflow', 'bentoml', 'sklearn', 'nbformat')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out.replace("'", '"')) == []
