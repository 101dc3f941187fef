"""Integration: single notebook runs through the real CLI and real kernels."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
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
    language = output.metadata["language_info"]  # asked of the kernel after the last cell
    assert language["name"] == "python" and language["version"] == platform.python_version()
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
    assert output.metadata["language_info"]["name"] == "python"
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
    assert not (nb.parent / "mlruns").exists()


def test_a_users_sqlite_store_keeps_artifacts_out_of_the_working_folder(
    make_notebook, cli, home, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    database = tmp_path / "store" / "user.db"
    database.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    nb = make_notebook(
        "shared.ipynb",
        ["open('plot.txt', 'w').write('x')\nimport nbdeploy\nnbdeploy.log_artifact('plot.txt')"],
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = cli("run", str(nb), "--json", cwd=elsewhere)
    assert result.code == 0, result
    client = MlflowClient(tracking_uri=f"sqlite:///{database}")
    run = client.get_run(result.json["mlflow_run_id"])
    assert [a.path for a in client.list_artifacts(run.info.run_id, "artifacts")] == [
        "artifacts/plot.txt"
    ]
    location = client.get_experiment(run.info.experiment_id).artifact_location
    assert location == (home / "mlartifacts" / "shared").as_uri()
    assert run.info.artifact_uri.startswith(location)
    assert [p.name for p in (home / "mlartifacts" / "shared").rglob("*.txt")] == ["plot.txt"]
    for folder in (elsewhere, nb.parent, database.parent):
        assert not (folder / "mlruns").exists(), folder


def test_a_relative_mlflow_uri_means_the_folder_it_was_given_in(tmp_path, monkeypatch):
    from nbdeploy import config

    monkeypatch.chdir(tmp_path)
    for given, expected in [
        ("sqlite:///mlflow.db", f"sqlite:///{tmp_path / 'mlflow.db'}"),
        ("./mlruns", (tmp_path / "mlruns").as_uri()),
        ("file:mlruns", (tmp_path / "mlruns").as_uri()),
        ("sqlite:////srv/mlflow.db", "sqlite:////srv/mlflow.db"),
        ("http://mlflow:5000", "http://mlflow:5000"),
        ("databricks", "databricks"),
    ]:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", given)
        assert config.mlflow_tracking_uri() == expected, given


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
    # a quiet note on stdout (stderr shows as an error in JupyterLab), once
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.count("\n") == 1 and "not running under `nbdeploy run`" in captured.out


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


def test_path_and_typed_dict_key_parameters_arrive_with_their_types(make_notebook, cli, tmp_path):
    nb = make_notebook(
        "paths.ipynb",
        [
            "from pathlib import Path\npathlib = 'a user variable'\nPathAlias = Path",
            (
                "data: Path = 'in.csv'  # input\n"
                "weights: dict[int, float] = {}  # per class\n"
                "nested: dict[str, dict[int, list[float]]] = {}\n"
                "pair_keys: dict[tuple[int, int], str] = {}",
                ["parameters"],
            ),
            "assert isinstance(data, Path), type(data)\n"
            "assert data == Path('folder/my data.csv')\n"
            "assert list(weights) == [1, 2], weights\n"
            "assert weights == {1: 0.5, 2: 2.0}\n"
            "assert list(nested['a']) == [3] and nested['a'][3] == [1.0]\n"
            "assert pair_keys == {(1, 2): 'x'}\n"
            "assert pathlib == 'a user variable' and Path is PathAlias\n"
            "import nbdeploy\n"
            "nbdeploy.log_param('is_path', isinstance(data, Path))",
        ],
    )
    result = cli(
        "run",
        str(nb),
        "--no-mlflow",
        "--json",
        "-p",
        "data",
        "folder/my data.csv",
        "-p",
        "weights",
        '{"1": 0.5, "2": 2}',
        "-p",
        "nested",
        '{"a": {"3": [1]}}',
        "-p",
        "pair_keys",
        '{"1,2": "x"}',
    )
    assert result.code == 0, result
    assert result.json["status"] == "succeeded"
    assert result.json["logged_params"] == {"is_path": True}
    assert result.json["parameters"]["data"] == "folder/my data.csv"
    assert result.json["parameters"]["weights"] == {"1": 0.5, "2": 2.0}
    output = nbformat.read(result.json["output_path"], as_version=4)
    assert output.metadata["papermill"]["parameters"]["data"] == "folder/my data.csv"


# -- runs that do not end normally ---------------------------------------------------------
SLOW_CELLS = [
    "import nbdeploy\nnbdeploy.log_metric('early', 1.0)\nprint('first cell done')",
    "import pathlib, time\npathlib.Path('second-cell-started').touch()\ntime.sleep(120)",
    "print('never')",
]


VENV_BIN = Path(sys.executable).parent


def start_cli(*args: str) -> subprocess.Popen[str]:
    """``nbdeploy ARGS`` in a session of its own (a terminal's Ctrl-C reaches the whole
    foreground process group), with SIGINT handled even if this test runner ignores it."""
    return subprocess.Popen(
        [str(VENV_BIN / "nbdeploy"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_second_cell(home: Path, notebook: Path, process: subprocess.Popen[str]) -> str:
    """The id of the run once it is recorded and its second cell is running."""
    marker = notebook.parent / "second-cell-started"  # the kernel runs in the notebook's folder
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never reached its second cell"
        time.sleep(0.1)
    [record] = store_runs(home)
    assert record.status == "running"
    return record.id


def processes_of_run(run_id: str) -> list[psutil.Process]:
    """Processes (the kernel) started for a run: their environment names it."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get("NBDEPLOY_RUN_ID") == run_id:
                found.append(process)
    return found


def mlflow_helpers(home: Path) -> list[psutil.Process]:
    """MLflow helper processes of nbdeploy commands using ``home``."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if "nbdeploy.pipeline.tracking_worker" in process.cmdline() and (
                process.environ().get("NBDEPLOY_HOME") == str(home)
            ):
                found.append(process)
    return found


def test_ctrl_c_ends_the_run_as_interrupted_and_keeps_the_partial_output(make_notebook, cli, home):
    from mlflow.tracking import MlflowClient

    nb = make_notebook("slow.ipynb", SLOW_CELLS)
    process = start_cli("run", str(nb))
    run_id = wait_for_second_cell(home, nb, process)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, (out, err)
    assert "Traceback" not in out + err
    assert err.strip().splitlines()[-1] == "nbdeploy: error: interrupted"

    [record] = store_runs(home)
    assert (record.id, record.status) == (run_id, "interrupted")
    assert record.finished_at is not None
    assert record.error["kind"] == "interrupted"
    assert record.error["message"] == (
        "slow.ipynb, cell 2 (import pathlib, time): interrupted (Ctrl-C) while this cell was "
        "running"
    )
    assert record.metrics == {"early": 1.0}  # what it logged before Ctrl-C is kept
    output = nbformat.read(record.output_path, as_version=4)  # the partial output
    assert output.cells[0].outputs[0]["text"] == "first cell done\n"
    assert [o.get("ename") for o in output.cells[1].outputs] == ["KeyboardInterrupt"]
    assert output.cells[1].metadata["papermill"]["status"] == "failed"
    assert output.cells[2].outputs == []
    shown = cli("runs", run_id, "--json")
    assert shown.code == 0 and shown.json["status"] == "interrupted"
    # The kernel does not outlive the interrupted run; the MLflow helper ignores the Ctrl-C
    # sent to the group, closes the run as KILLED (even if nbdeploy stopped waiting for it)
    # and exits.
    deadline = time.monotonic() + 90
    while processes_of_run(run_id) or mlflow_helpers(home):
        assert time.monotonic() < deadline, (processes_of_run(run_id), mlflow_helpers(home))
        time.sleep(0.2)
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    [mlflow_run] = client.search_runs(
        [client.get_experiment_by_name("slow").experiment_id],
        filter_string=f"tags.`nbdeploy.run_id` = '{run_id}'",
    )
    assert mlflow_run.info.status == "KILLED"
    assert mlflow_run.data.metrics == {"early": 1.0}
    assert record.mlflow_run_id in (None, mlflow_run.info.run_id)


def test_a_killed_run_is_shown_interrupted_not_running(make_notebook, cli, home):
    nb = make_notebook("slow.ipynb", SLOW_CELLS)
    process = start_cli("run", str(nb), "--no-mlflow")
    run_id = wait_for_second_cell(home, nb, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL

    listed = cli("runs", "--json")
    assert listed.code == 0, listed
    [run] = listed.json
    assert run["id"] == run_id
    assert run["status"] == "interrupted"
    assert "the process running it is gone" in run["error"]["message"]
    assert run["pid"] == process.pid
    assert Path(run["output_path"]).is_file()
    # Saved in the store, and shown the same way everywhere.
    [record] = store_runs(home)
    assert record.status == "interrupted"
    shown = cli("runs", run_id)
    assert "status     interrupted" in shown.out
    assert "the process running it is gone" in shown.out
    # Its kernel notices that its parent is gone and exits.
    deadline = time.monotonic() + 30
    while processes_of_run(run_id):
        assert time.monotonic() < deadline, processes_of_run(run_id)
        time.sleep(0.2)


# -- metrics that are not numbers ------------------------------------------------------------
def test_nan_and_infinite_metrics_are_recorded_as_missing_with_a_warning(make_notebook, cli, home):
    from mlflow.tracking import MlflowClient

    nb = make_notebook(
        "nan.ipynb",
        [
            "import nbdeploy\n"
            "nbdeploy.log_metric('accuracy', 0.75)\n"
            "nbdeploy.log_metric('loss', float('nan'))\n"
            "nbdeploy.log_metric('gain', float('inf'))\n"
            "nbdeploy.log_metric('drop', -float('inf'))\n"
            "nbdeploy.log_param('after', 'the cell went on')",
        ],
    )
    result = cli("run", str(nb), "--json")
    assert result.code == 0, result
    run = result.json
    assert run["status"] == "succeeded"
    assert run["metrics"] == {"accuracy": 0.75, "loss": None, "gain": None, "drop": None}
    assert run["logged_params"] == {"after": "the cell went on"}
    warnings = [line for line in result.err.splitlines() if "warning" in line]
    assert warnings == [
        f"nbdeploy: warning: nan.ipynb: metric {name!r} was logged as {value}, "
        "not a finite number: recorded as missing"
        for name, value in (("loss", "nan"), ("gain", "inf"), ("drop", "-inf"))
    ]
    shown = cli("runs", run["id"], "--json")
    assert shown.code == 0
    assert json.loads(shown.out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))[
        "metrics"
    ] == {"accuracy": 0.75, "loss": None, "gain": None, "drop": None}
    listing = cli("runs")
    assert "accuracy=0.75, drop=-, gain=-, loss=-" in listing.out
    # MLflow gets the numbers, and the run is complete there.
    mlflow_run = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}").get_run(
        run["mlflow_run_id"]
    )
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.metrics == {"accuracy": 0.75}
    # The notebook itself shows a one-line warning where the metric was logged.
    output = nbformat.read(run["output_path"], as_version=4)
    stderr = "".join(o["text"] for o in output.cells[0].outputs if o.get("name") == "stderr")
    assert stderr.splitlines() == [
        "nbdeploy: warning: metric 'loss' is nan, not a finite number: recorded as missing",
        "nbdeploy: warning: metric 'gain' is inf, not a finite number: recorded as missing",
        "nbdeploy: warning: metric 'drop' is -inf, not a finite number: recorded as missing",
    ]


def test_results_with_missing_or_malformed_metric_lines_are_read(tmp_path, monkeypatch, capsys):
    from nbdeploy.pipeline import context

    monkeypatch.setenv(context.RUN_DIR_ENV, str(tmp_path))
    context.log_metric("ok", 2)
    context.log_metric("bad", float("nan"), step=3)
    assert "metric 'bad' is nan" in capsys.readouterr().err
    with open(tmp_path / context.RESULTS_FILE, "a", encoding="utf-8") as results:
        results.write('{"kind": "metric", "name": "legacy", "value": NaN, "step": 0}\n')
        results.write('{"kind": "metric", "name": "text", "value": "abc"}\n')
        results.write('{"kind": "metric", "value": 1}\n')  # no name: skipped
        results.write('{"kind": "metric", "name": "cut", "val')  # a line cut short
    logged = context.read_results(tmp_path)
    assert logged["metrics"] == [
        ("ok", 2.0, 0),
        ("bad", None, 3),
        ("legacy", None, 0),
        ("text", None, 0),
    ]
    assert logged["missing"] == {"bad": "nan", "legacy": "nan", "text": "abc"}


def test_ctrl_c_stops_a_sweep_and_its_running_runs_end_interrupted(make_notebook, home):
    nb = make_notebook(
        "sweep.ipynb",
        [
            ("n: int = 0", ["parameters"]),
            "import pathlib, time\npathlib.Path(f'started-{n}').touch()\ntime.sleep(120)",
        ],
    )
    process = start_cli("run", str(nb), "--sweep", "n=1,2,3", "--parallel", "2", "--no-mlflow")
    deadline = time.monotonic() + 120
    while len(list(nb.parent.glob("started-*"))) < 2:  # two runs busy, one waiting
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the sweep never started two runs"
        time.sleep(0.1)
    stopped_at = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, (out, err)
    assert time.monotonic() - stopped_at < 30  # not after the runs' two minutes
    assert "Traceback" not in out + err
    records = store_runs(home)
    assert len(records) == 2  # the third run never started
    for record in records:
        assert record.status == "interrupted"
        assert record.error["message"] == (
            "sweep.ipynb, cell 2 (import pathlib, time): interrupted (Ctrl-C) while this cell "
            "was running"
        )
        assert Path(record.output_path).is_file()
    store = RunStore(StateStore(home / "state.db"))
    [group] = store.store.connection().execute("SELECT status FROM run_groups").fetchall()
    assert group["status"] == "interrupted"
    assert not list(nb.parent.glob("started-3"))


def test_mlflow_helper_closes_a_run_even_after_its_parent_is_gone(home):
    """After Ctrl-C nbdeploy waits for MLflow only briefly: the helper still creates and
    closes the run (named by its start request) once nobody reads its answers."""
    from mlflow.tracking import MlflowClient

    home.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    requests = [
        {
            "id": "r1:start",
            "op": "start",
            "uri": uri,
            "experiment": "exp",
            "artifact_location": str(home / "artifacts"),
            "run_name": "r1",
            "tags": {"nbdeploy.run_id": "r1"},
        },
        {
            "id": "r1:finish",
            "op": "finish",
            "uri": uri,
            "start_id": "r1:start",
            "status": "KILLED",
            "params": {"alpha": "0.5"},
            "metrics": [["early", 1.0, 0]],
            "artifacts": [],
        },
    ]
    helper = subprocess.Popen(
        [sys.executable, "-m", "nbdeploy.pipeline.tracking_worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert helper.stdin is not None and helper.stdout is not None
    helper.stdin.write("".join(json.dumps(request) + "\n" for request in requests))
    helper.stdin.close()
    helper.stdout.close()  # the parent is gone: nobody reads the answers
    assert helper.wait(timeout=120) == 0
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert run.info.status == "KILLED"
    assert run.data.metrics == {"early": 1.0}
    assert run.data.params == {"alpha": "0.5"}
    assert run.data.tags["nbdeploy.run_id"] == "r1"


WIDGET_RUNS = 24
RUN_MANY = """\
import sys
import nbdeploy

notebook, count = sys.argv[1], int(sys.argv[2])
for number in range(count):
    result = nbdeploy.run(notebook, mlflow=False)
    print("RUN", number, result.record.status, flush=True)
"""


def test_notebooks_with_widgets_run_to_the_end_every_time(make_notebook, home, tmp_path):
    # nbclient waits for a reply without a timeout, and zmq can lose that wait's wake-up
    # (nbclient issue 312): such a notebook hung about one run in six. Dozens of runs, each
    # with no run timeout (the path that hung), in a process the test bounds.
    cells = ["from ipywidgets import interact"]
    cells += [f"def f{i}(x):\n    return x * {i}\ninteract(f{i}, x=[1, 2, 3])" for i in range(6)]
    nb = make_notebook("interact.ipynb", cells)
    script = tmp_path / "run_many.py"
    script.write_text(RUN_MANY, encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, str(script), str(nb), str(WIDGET_RUNS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=WIDGET_RUNS * 20)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate(timeout=30)
        pytest.fail(f"a run hung: {output[-2000:]}")
    finished = [line for line in output.splitlines() if line.startswith("RUN ")]
    assert finished == [f"RUN {n} succeeded" for n in range(WIDGET_RUNS)], output[-2000:]
    last = store_runs(home)[0]
    executed = nbformat.read(last.output_path, as_version=4)
    widgets = [
        o for c in executed.cells for o in c.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]  # fmt: skip
    assert len(widgets) == 6  # every interact drew its widget


def test_a_kernel_that_stops_answering_ends_the_run_with_the_cell_named(
    make_notebook, cli, home, monkeypatch
):
    nb = make_notebook(
        "stopped.ipynb",
        ["x = 1", "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)", "print('never')"],
    )
    monkeypatch.setenv("NBDEPLOY_KERNEL_UNRESPONSIVE_S", "3")
    result = cli("run", str(nb), "--no-mlflow", timeout=120)
    assert result.code == 1, result
    assert "stopped.ipynb, cell 2 (import os, signal)" in result.out + result.err
    assert "the kernel stopped answering (no heartbeat for" in result.out + result.err
    [run] = store_runs(home)[:1]
    assert run.status == "failed"
    stopped = [
        p for p in psutil.process_iter(["cmdline", "status"])
        if "ipykernel_launcher" in " ".join(p.info["cmdline"] or [])
        and p.info["status"] == psutil.STATUS_STOPPED
    ]  # fmt: skip
    assert stopped == [], "the stopped kernel was left behind"
