"""``--executor dask``: sweeps and pipeline steps as tasks of a real Dask cluster.

The integration tests run the ``nbdeploy`` command against a ``distributed.LocalCluster``
it starts itself (2 worker processes), or against a cluster of ``dask scheduler`` and
``dask worker`` processes started here in another working directory (so a notebook that
finds its data file next to it proves the file travelled with the task). Dask is a required
component: missing, these tests skip on a developer machine and fail in CI.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest
from conftest import require_component
from test_dag import PREPARE, TRAIN  # the pipeline test_dag runs locally

from nbdeploy.errors import NbdeployError, PipelineSpecError
from nbdeploy.pipeline import executors
from nbdeploy.pipeline.dag import load_pipeline
from nbdeploy.pipeline.executors import (
    ExecutorError,
    ExecutorSpec,
    parse_executor_field,
    resolve_executor,
    start_executor,
)
from nbdeploy.store import StateStore
from nbdeploy.store.runs import RunStore

VENV_BIN = Path(sys.executable).parent

SWEEP_NOTEBOOK = [
    ("x: int = 1  # first axis\nmode: str = 'a'  # second axis", ["parameters"]),
    "import os, pathlib\n"
    "import nbdeploy\n"
    "values = [int(v) for v in pathlib.Path('data/values.txt').read_text().split()]\n"
    "if x == 2 and mode == 'b':\n"
    "    raise RuntimeError('combination x=2, mode=b is broken')\n"
    "nbdeploy.log_metric('score', sum(values) * x + (1 if mode == 'b' else 0))\n"
    "nbdeploy.log_param('where', os.getcwd())\n"
    "nbdeploy.log_param('sibling_travelled', os.path.exists('notes.txt'))\n"
    "pathlib.Path(f'report-{x}-{mode}.txt').write_text(f'report {x} {mode}')\n"
    "nbdeploy.log_artifact(f'report-{x}-{mode}.txt')\n"
    "print('score logged for', x, mode)",
]


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dask_available() -> None:
    require_component(
        "Dask (distributed)", executors.dask_installed(), "pip install 'dask[distributed]'"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def end(process: subprocess.Popen[Any]) -> None:
    """Terminate a process started here, and kill it if it does not go."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def dask_cluster(dask_available: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A scheduler and 2 worker processes (``dask worker``), started in a folder of their
    own: the address of the scheduler."""
    elsewhere = tmp_path_factory.mktemp("dask-workers-cwd")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NBDEPLOY_", "DASK_"))}
    env["NBDEPLOY_HOME"] = str(elsewhere / "worker-home")
    address = f"tcp://127.0.0.1:{free_port()}"
    log = open(elsewhere / "cluster.log", "ab")  # noqa: SIM115 (held by the processes)
    started: list[subprocess.Popen[bytes]] = []
    try:
        started.append(
            subprocess.Popen(
                [
                    *(str(VENV_BIN / "dask"), "scheduler", "--host", "127.0.0.1"),
                    *("--port", address.rsplit(":", 1)[1], "--no-dashboard"),
                ],
                cwd=elsewhere,
                env=env,
                stdout=log,
                stderr=log,
            )
        )
        started.append(
            subprocess.Popen(
                [
                    *(str(VENV_BIN / "dask"), "worker", address, "--nworkers", "2"),
                    *("--nthreads", "1", "--no-dashboard"),
                    *("--local-directory", str(elsewhere / "scratch")),
                ],
                cwd=elsewhere,
                env=env,
                stdout=log,
                stderr=log,
            )
        )
        waiting = (
            "from distributed import Client\n"
            f"with Client({address!r}, timeout=60) as client:\n"
            "    client.wait_for_workers(2, timeout=120)\n"
        )
        subprocess.run([sys.executable, "-c", waiting], check=True, timeout=180, env=env)
        yield address
    finally:
        for process in reversed(started):
            end(process)
        log.close()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> Any:
    from conftest import CliResult

    completed = subprocess.run(
        [str(VENV_BIN / "nbdeploy"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


def sweep_folder(make_notebook: Any, folder: Path) -> Path:
    notebook = make_notebook("sweep.ipynb", SWEEP_NOTEBOOK, folder=folder)
    (folder / "data").mkdir()
    (folder / "data" / "values.txt").write_text("1 2 3\n")
    (folder / "notes.txt").write_text("a file next to the notebook\n")
    return notebook


def cell_outputs(path: str) -> list[list[tuple[str, str]]]:
    """What each cell of an output notebook shows (stream text, error name and value)."""
    notebook = nbformat.read(path, as_version=4)
    shown = []
    for cell in notebook.cells:
        outputs = []
        for output in cell.get("outputs", []):
            if output["output_type"] == "stream":
                outputs.append((output["name"], output["text"]))
            elif output["output_type"] == "error":
                outputs.append((output["ename"], output["evalue"]))
        shown.append(outputs)
    return shown


def nbdeploy_processes(home: Path) -> list[psutil.Process]:
    """Processes started for runs in ``home`` (the CLI's Dask workers inherit its
    environment; kernels and the MLflow helper too)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get("NBDEPLOY_HOME") == str(home):
                found.append(process)
    return found


# -- choosing an executor ----------------------------------------------------------------
def test_executor_resolution_and_pipeline_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(executors.SCHEDULER_ENV, raising=False)
    assert resolve_executor(None, None) == ExecutorSpec("local")
    assert resolve_executor("dask", None) == ExecutorSpec("dask", None)
    assert resolve_executor(None, "tcp://h:8786") == ExecutorSpec("dask", "tcp://h:8786")
    pipeline_spec = ExecutorSpec("dask", "tcp://from-yaml:8786")
    assert resolve_executor(None, None, pipeline_spec) == pipeline_spec
    assert resolve_executor("local", None, pipeline_spec) == ExecutorSpec("local")
    assert resolve_executor(None, "tcp://cli:1", pipeline_spec).scheduler == "tcp://cli:1"
    monkeypatch.setenv(executors.SCHEDULER_ENV, "tcp://from-env:8786")
    assert resolve_executor("dask", None) == ExecutorSpec("dask", "tcp://from-env:8786")
    assert resolve_executor(None, None) == ExecutorSpec("local")  # the env var only addresses
    with pytest.raises(ExecutorError, match="applies to the dask executor"):
        resolve_executor("local", "tcp://h:8786")
    with pytest.raises(ExecutorError, match="unknown executor 'spark'"):
        resolve_executor("spark", None)

    assert parse_executor_field("dask", "p.yaml") == ExecutorSpec("dask")
    assert parse_executor_field(
        {"kind": "dask", "scheduler": "tcp://h:8786"}, "p.yaml"
    ) == ExecutorSpec("dask", "tcp://h:8786")
    for raw, message in [
        ("spark", "`executor` kind must be one of local, dask, got 'spark'"),
        ({"kind": "dask", "workers": 3}, "unknown field(s) workers in `executor`"),
        ({"kind": "dask", "scheduler": 8786}, "`executor.scheduler` must be an address"),
        ({"kind": "local", "scheduler": "tcp://h:1"}, "`executor.scheduler` applies to kind"),
        (["dask"], "`executor` must be local, dask or a mapping"),
    ]:
        with pytest.raises(PipelineSpecError, match=r"p\.yaml: ") as caught:
            parse_executor_field(raw, "p.yaml")
        assert message in str(caught.value)


def test_pipeline_yaml_executor_and_inputs_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    step = {"name": "a", "notebook": "a.ipynb"}
    path.write_text(json.dumps({"executor": {"kind": "ray"}, "steps": [step]}))
    with pytest.raises(PipelineSpecError, match=r"pipeline\.yaml: `executor` kind must be"):
        load_pipeline(path)
    path.write_text(json.dumps({"steps": [{**step, "inputs": [{"f": 1}]}]}))
    with pytest.raises(PipelineSpecError, match="step 1 \\('a'\\): `inputs` must be a list"):
        load_pipeline(path)
    path.write_text(json.dumps({"steps": [{**step, "inputs": ["../secrets"]}]}))
    with pytest.raises(PipelineSpecError, match="outside the pipeline's directory"):
        load_pipeline(path)
    path.write_text(
        json.dumps(
            {"executor": "dask", "steps": [{**step, "inputs": "raw"}]}  # one path: a list of one
        )
    )
    pipeline = load_pipeline(path)
    assert pipeline.executor == ExecutorSpec("dask")
    assert pipeline.steps[0].inputs == [tmp_path / "raw"]


def test_missing_dask_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executors, "dask_installed", lambda: False)
    with pytest.raises(ExecutorError) as caught:
        start_executor(ExecutorSpec("dask"))
    assert "pip install 'dask[distributed]'" in str(caught.value)
    assert isinstance(caught.value, NbdeployError)


def test_cli_and_magic_do_not_import_dask() -> None:
    code = (
        "import sys\n"
        "import nbdeploy.cli, nbdeploy.magics, nbdeploy.api\n"
        "import nbdeploy.pipeline.sweep, nbdeploy.pipeline.dag, nbdeploy.pipeline.executors\n"
        "import nbdeploy.pipeline.dask_worker\n"
        "nbdeploy.cli._parser().parse_args(['run', 'x.ipynb', '--executor', 'dask'])\n"
        "print([m for m in ('dask', 'distributed') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.integration
@pytest.mark.usefixtures("python_kernel")
def test_input_option_needs_the_dask_executor(make_notebook: Any, cli: Any) -> None:
    notebook = make_notebook("one.ipynb", ["print(1)"])
    result = cli("run", str(notebook), "--input", "data.csv", "--no-mlflow")
    assert result.code == 2
    assert "--input names the files that travel to Dask workers" in result.err


# -- sweeps --------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.usefixtures("python_kernel", "dask_available")
def test_dask_sweep_records_what_the_local_sweep_records(
    make_notebook: Any, cli: Any, home: Path, tmp_path: Path
) -> None:
    """A LocalCluster of 2 worker processes: the same records, metrics, failure, artifacts
    and output notebooks as the local --parallel sweep, and the runs in MLflow."""
    from mlflow.tracking import MlflowClient

    notebook = sweep_folder(make_notebook, tmp_path / "project")
    grid = ["--sweep", "x=1,2", "--sweep", "mode=a,b", "--parallel", "2", "--json"]
    local = cli("run", str(notebook), *grid, "--no-mlflow", "--output-dir", str(tmp_path / "l"))
    dask = cli(
        "run", str(notebook), *grid, "--executor", "dask", "--output-dir", str(tmp_path / "d")
    )
    assert local.code == 1 and dask.code == 1, (local, dask)
    assert "Traceback" not in dask.err
    local_runs, dask_runs = local.json["runs"], dask.json["runs"]
    assert [r["status"] for r in dask_runs] == ["succeeded", "succeeded", "succeeded", "failed"]
    for ours, theirs in zip(dask_runs, local_runs, strict=True):
        assert ours["parameters"] == theirs["parameters"]
        assert ours["status"] == theirs["status"]
        assert ours["metrics"] == theirs["metrics"]
        assert ours["message"] == theirs["message"]
        assert ours["error"] == theirs["error"]
        assert {k: v for k, v in ours["logged_params"].items() if k != "where"} == {
            k: v for k, v in theirs["logged_params"].items() if k != "where"
        }
        assert [Path(a).read_text() for a in ours["artifacts"]] == [
            Path(a).read_text() for a in theirs["artifacts"]
        ]
        assert Path(ours["output_path"]).name == Path(theirs["output_path"]).name
        assert cell_outputs(ours["output_path"]) == cell_outputs(theirs["output_path"])
    assert [r["metrics"].get("score") for r in dask_runs] == [6.0, 7.0, 12.0, None]
    assert dask_runs[3]["error"]["cell"] == 2
    assert dask_runs[3]["message"] == (
        "sweep.ipynb, cell 2 (import os, pathlib): RuntimeError: combination x=2, mode=b is broken"
    )
    # The kernels ran in the workers' folders, not in the notebook's, yet found its files.
    for run in dask_runs[:3]:
        where = Path(run["logged_params"]["where"])
        assert where != notebook.parent and notebook.parent not in where.parents
        assert run["logged_params"]["sibling_travelled"] is True
        assert Path(run["artifacts"][0]).is_relative_to(home / "runs" / run["id"])
    # Recorded in the store like local runs, as one sweep group, and in MLflow.
    records = {r.id: r for r in RunStore(StateStore(home / "state.db")).recent()}
    assert {r["id"] for r in dask_runs} <= set(records)
    assert len({r["group_id"] for r in dask_runs}) == 1
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    for run in dask_runs:
        tracked = client.get_run(run["mlflow_run_id"])
        assert tracked.data.tags["nbdeploy.run_id"] == run["id"]
        assert tracked.data.params["x"] == str(run["parameters"]["x"])
        assert tracked.info.status == ("FINISHED" if run["status"] == "succeeded" else "FAILED")
        if run["status"] == "succeeded":
            assert tracked.data.metrics == {"score": run["metrics"]["score"]}
            logged = {a.path for a in client.list_artifacts(tracked.info.run_id, "artifacts")}
            assert logged == {f"artifacts/{Path(run['artifacts'][0]).name}"}
        notebooks = [a.path for a in client.list_artifacts(tracked.info.run_id, "notebook")]
        assert notebooks == [f"notebook/{Path(run['output_path']).name}"]


@pytest.mark.integration
@pytest.mark.usefixtures("python_kernel")
def test_files_travel_to_workers_in_another_folder(
    make_notebook: Any, cli: Any, dask_cluster: str, tmp_path: Path
) -> None:
    notebook = sweep_folder(make_notebook, tmp_path / "project")
    result = cli("run", str(notebook), "--sweep", "x=1,3", "--scheduler", dask_cluster, "--json")
    assert result.code == 0, result
    runs = result.json["runs"]
    assert [r["metrics"]["score"] for r in runs] == [6.0, 18.0]
    assert all(r["logged_params"]["sibling_travelled"] for r in runs)
    assert all(not Path(r["logged_params"]["where"]).is_relative_to(notebook.parent) for r in runs)
    # --input: only what it names travels.
    only_data = cli(
        "run",
        str(notebook),
        "--scheduler",
        dask_cluster,
        "--input",
        str(notebook.parent / "data"),
        "--no-mlflow",
        "--json",
    )
    assert only_data.code == 0, only_data
    assert only_data.json["metrics"] == {"score": 6.0}
    assert only_data.json["logged_params"]["sibling_travelled"] is False
    # More than NBDEPLOY_DASK_MAX_MB: refused before any run, saying what to do.
    too_much = run_cli(
        "run",
        str(notebook),
        "--scheduler",
        dask_cluster,
        "--no-mlflow",
        env={executors.MAX_MB_ENV: "0.000001"},
    )
    assert too_much.code == 2, too_much
    assert "which would travel with every Dask task" in too_much.err
    assert "--input PATH" in too_much.err and "Traceback" not in too_much.err


@pytest.mark.integration
@pytest.mark.usefixtures("dask_available")
def test_unreachable_scheduler_is_a_clear_error(make_notebook: Any, home: Path) -> None:
    notebook = make_notebook("one.ipynb", ["print(1)"])
    address = f"tcp://127.0.0.1:{free_port()}"
    result = run_cli(
        "run",
        str(notebook),
        "--sweep",
        "x=1,2",
        "--scheduler",
        address,
        env={executors.CONNECT_TIMEOUT_ENV: "2"},
    )
    assert result.code == 2, result
    assert f"could not connect to the Dask scheduler at {address} within 2 s" in result.err
    assert "`dask scheduler`" in result.err and "Traceback" not in result.err
    assert not RunStore(StateStore(home / "state.db")).recent()
    bad = run_cli("run", str(notebook), "--scheduler", "not an address")
    assert bad.code == 2 and "is not a Dask scheduler address" in bad.err, bad


# -- pipelines -----------------------------------------------------------------------------
REPORT = [
    "import nbdeploy\nnbdeploy.log_metric('words', len(open('raw/notes.txt').read().split()))",
]


@pytest.mark.integration
@pytest.mark.usefixtures("python_kernel")
def test_pipeline_yaml_with_a_dask_executor_runs_its_steps(
    make_notebook: Any, cli: Any, dask_cluster: str, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    make_notebook("prepare.ipynb", PREPARE, folder=project)
    make_notebook("train.ipynb", TRAIN, folder=project / "steps")
    make_notebook("report.ipynb", REPORT, folder=project)
    (project / "raw").mkdir()
    (project / "raw" / "notes.txt").write_text("three small words")
    spec = {
        "executor": {"kind": "dask", "scheduler": dask_cluster},
        "steps": [
            {
                "name": "prepare",
                "notebook": "prepare.ipynb",
                "parameters": {"rows": 4},
                "outputs": {"data_path": "out/data.csv"},
            },
            {
                "name": "train",
                "notebook": "steps/train.ipynb",
                "needs": ["prepare"],
                "parameters": {"scale": 2},
            },
            {"name": "report", "notebook": "report.ipynb", "inputs": ["raw/notes.txt"]},
        ],
    }
    path = project / "pipeline.yaml"
    path.write_text(json.dumps(spec))
    first = cli("run", str(path), "--json")
    assert first.code == 0, first
    steps = {s["step"]: s for s in first.json["steps"]}
    assert {name: s["status"] for name, s in steps.items()} == {
        "prepare": "succeeded",
        "train": "succeeded",
        "report": "succeeded",
    }
    data = project / "out" / "data.csv"
    assert data.read_text() == "0\n1\n2\n3"  # the declared output came back
    assert steps["train"]["run"]["parameters"]["data_path"] == str(data)
    assert steps["train"]["run"]["metrics"] == {"total": 12.0}
    assert steps["report"]["run"]["metrics"] == {"words": 3.0}
    assert steps["prepare"]["run"]["outputs"]["data_path"]["sha256"]
    again = cli("run", str(path), "--no-mlflow", "--json")
    assert [s["status"] for s in again.json["steps"]] == ["cached", "cached", "cached"]
    changed = cli("run", str(path), "-p", "scale", "3", "--no-mlflow", "--json")
    assert [s["status"] for s in changed.json["steps"]] == ["cached", "succeeded", "cached"]
    assert changed.json["steps"][1]["run"]["metrics"] == {"total": 18.0}


# -- Ctrl-C --------------------------------------------------------------------------------
SLOW = [
    ("n: int = 0\nmarkers: str = ''", ["parameters"]),
    "import pathlib, time\npathlib.Path(markers, f'started-{n}').touch()\ntime.sleep(120)",
]


@pytest.mark.integration
@pytest.mark.usefixtures("python_kernel", "dask_available")
def test_ctrl_c_cancels_the_tasks_and_the_runs_end_interrupted(
    make_notebook: Any, home: Path, tmp_path: Path
) -> None:
    notebook = make_notebook("sweep.ipynb", SLOW)
    markers = tmp_path / "markers"
    markers.mkdir()
    process = subprocess.Popen(
        [
            *(str(VENV_BIN / "nbdeploy"), "run", str(notebook), "--sweep", "n=1,2,3"),
            *("--parallel", "2", "--executor", "dask", "-p", "markers", str(markers)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a terminal's Ctrl-C reaches the whole process group
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 180
    while len(list(markers.glob("started-*"))) < 2:  # two tasks running, one waiting
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the sweep never started two runs"
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, (out, err)
    assert "Traceback" not in out + err
    assert err.strip().splitlines()[-1] == "nbdeploy: error: interrupted"
    store = RunStore(StateStore(home / "state.db"))
    records = store.recent()
    assert len(records) == 2  # the third task was cancelled before it started
    for record in records:
        assert record.status == "interrupted"
        assert record.finished_at is not None
        assert record.error["message"] == (
            "sweep.ipynb, cell 2 (import pathlib, time): interrupted (Ctrl-C) while this cell "
            "was running"
        )
        output = nbformat.read(record.output_path, as_version=4)  # what ran, from the worker
        assert output.cells[-1].metadata["papermill"]["status"] == "failed"
    [group] = store.store.connection().execute("SELECT status, spec FROM run_groups").fetchall()
    assert group["status"] == "interrupted"
    assert json.loads(group["spec"])["executor"] == "dask"
    assert not (markers / "started-3").exists()
    # The cluster, its workers and the runs' kernels do not outlive the command.
    deadline = time.monotonic() + 60
    while nbdeploy_processes(home):
        assert time.monotonic() < deadline, nbdeploy_processes(home)
        time.sleep(0.2)
