"""Integration: ``nbdeploy batch`` scores files with a deployed version's own function, row
for row as its service answers, in real worker processes (a local pool, a Dask LocalCluster,
a Dask scheduler and worker started as processes of their own); bad rows go to the errors
file; a job killed with SIGKILL resumes to the same output; memory follows the chunk size.

Three deployments are made once for the module (in a home of its own): a DataFrame function
with a reference, a function of rows of numbers with an array reference, and a fitted model
deployed directly."""

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

import numpy as np
import pandas as pd
import pytest
from conftest import VENV_BIN, CliResult
from support import post

import nbdeploy

pytestmark = pytest.mark.integration

COLORS = ["red", "green", "blue"]


def make_reference(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "a": rng.normal(size=rows),
            "b": rng.normal(size=rows),
            "color": pd.Categorical(rng.choice(COLORS, size=rows), categories=COLORS),
        }
    )


def frame_score(frame: pd.DataFrame) -> list[float]:
    if (frame["a"] > 1000).any():
        raise ValueError("a is above 1000")
    return (2 * frame["a"] + frame["b"] + frame["color"].cat.codes).round(6).tolist()


def rows_total(rows: list[list[float]]) -> list[float]:
    import time as clock

    clock.sleep(0.05)  # slow enough for the kill test to find the job mid-way
    return [round(sum(v for v in row if v is not None), 6) for row in rows]


def scaled(x: float, factor: int = 2) -> float:
    if x < 0:
        raise ValueError("x must not be negative")
    return x * factor


@pytest.fixture(scope="module")
def batch_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("batch-home")


@pytest.fixture(autouse=True)
def _use_batch_home(batch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBDEPLOY_HOME", str(batch_home))


@pytest.fixture(scope="module")
def deployed(batch_home: Path) -> Iterator[dict[str, Any]]:
    from sklearn.linear_model import LogisticRegression

    previous = os.environ.get("NBDEPLOY_HOME")
    os.environ["NBDEPLOY_HOME"] = str(batch_home)
    reference = make_reference()
    rng = np.random.default_rng(1)
    array = rng.normal(size=(300, 3))
    model_x = rng.normal(size=(400, 4))
    model = LogisticRegression().fit(model_x, (model_x[:, 1] > 0).astype(int))
    made: dict[str, Any] = {}
    try:
        made["frame"] = nbdeploy.deploy(
            frame_score,
            name="frame",
            namespace={"X": reference, "frame_score": frame_score},
            history=[],
            reference="X",
            mlflow=False,
        )
        made["rows"] = nbdeploy.deploy(
            rows_total,
            name="rows",
            namespace={"A": array, "rows_total": rows_total},
            history=[],
            reference="A",
            mlflow=False,
        )
        made["hints"] = nbdeploy.deploy(
            scaled, name="hints", namespace={"scaled": scaled}, history=[], mlflow=False
        )
        made["model"] = nbdeploy.deploy(
            model,
            name="model",
            namespace={"M": model_x, "model": model},
            reference="M",
            mlflow=False,
        )
        yield made
    finally:
        for name in made:
            nbdeploy.stop(name)
        from nbdeploy.deployment.runtime import client, launcher

        client.shutdown(batch_home)
        launcher.shutdown(batch_home)
        if previous is None:
            os.environ.pop("NBDEPLOY_HOME", None)
        else:
            os.environ["NBDEPLOY_HOME"] = previous


def nbdeploy_cli(*args: str, timeout: float = 240) -> CliResult:
    completed = subprocess.run(
        [str(VENV_BIN / "nbdeploy"), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=timeout,
        check=False,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


def served(url: str, route: str, key: str, rows: list[Any]) -> list[Any]:
    """The service's answers for ``rows``, in requests of 50 rows."""
    answers: list[Any] = []
    for start in range(0, len(rows), 50):
        status, body = post(url + route, {key: rows[start : start + 50]})
        assert status == 200, body
        answers.extend(json.loads(body))
    return answers


def read_output(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    return pd.read_json(path, lines=True)


def job_folders(home: Path) -> list[Path]:
    root = home / "batch-jobs"
    return sorted(root.iterdir()) if root.is_dir() else []


# -- the three kinds of version, row for row as their services answer ----------------------
def test_dataframe_function_equals_its_service_csv_in_jsonl_out(
    deployed: dict[str, Any], tmp_path: Path, batch_home: Path
) -> None:
    data = make_reference(rows=230, seed=5)
    data.insert(0, "id", [f"r{i}" for i in range(len(data))])
    data["day"] = "2026-12-07"
    source = tmp_path / "input.csv"
    data.to_csv(source, index=False)
    output = tmp_path / "scored.jsonl"
    result = nbdeploy_cli(
        "batch", "frame", str(source), "--output", str(output), "--chunk-rows", "64",
        "--keep", "id", "day", "--no-mlflow", "--json",
    )  # fmt: skip
    assert result.code == 0, result
    summary = result.json
    assert (summary["rows_in"], summary["rows_out"], summary["rows_failed"]) == (230, 230, 0)
    scored = read_output(output)
    assert list(scored.columns) == ["id", "day", "prediction"]
    assert scored["id"].tolist() == data["id"].tolist()  # input order, id carried
    records = data[["a", "b", "color"]].astype({"color": str}).to_dict(orient="records")
    url = deployed["frame"].deployment.url
    expected = served(url, "/frame_score", "frame", records)
    assert scored["prediction"].tolist() == pytest.approx(expected, abs=1e-9)
    assert job_folders(batch_home) == []  # removed after success
    assert Path(str(output) + ".errors.jsonl").read_text() == ""


def test_rows_function_with_and_without_features_parquet_folder_and_glob(
    deployed: dict[str, Any], tmp_path: Path
) -> None:
    rng = np.random.default_rng(9)
    values = rng.normal(size=(150, 3)).round(4)
    folder = tmp_path / "parts"
    folder.mkdir()
    named = pd.DataFrame(values, columns=["x", "y", "z"])
    named.insert(0, "key", range(150))
    named.iloc[:70].to_parquet(folder / "a.parquet")
    named.iloc[70:].to_parquet(folder / "b.parquet")
    url = deployed["rows"].deployment.url
    expected = served(url, "/rows_total", "rows", values.tolist())

    with_features = tmp_path / "with.csv"
    result = nbdeploy_cli(
        "batch", "rows", str(folder), "--output", str(with_features),
        "--features", "x", "y", "z", "--no-mlflow", "--chunk-rows", "40",
    )  # fmt: skip
    assert result.code == 0, result
    scored = read_output(with_features)
    assert list(scored.columns) == ["key", "x", "y", "z", "prediction"]
    assert scored["key"].tolist() == list(range(150))
    assert scored["prediction"].tolist() == pytest.approx(expected)

    # Without --features: the reference's feature names (f0..f2 of an array reference).
    glob_folder = tmp_path / "globbed"
    glob_folder.mkdir()
    plain = pd.DataFrame(values, columns=["f0", "f1", "f2"])
    plain["key"] = range(150)
    plain.iloc[:100].to_parquet(glob_folder / "p1.parquet")
    plain.iloc[100:].to_parquet(glob_folder / "p2.parquet")
    (glob_folder / "notes.txt").write_text("not an input")
    without = tmp_path / "without.parquet"
    result = nbdeploy_cli(
        "batch", "rows", str(glob_folder / "p*.parquet"), "--output", str(without),
        "--no-mlflow",
    )  # fmt: skip
    assert result.code == 0, result
    scored = read_output(without)
    assert scored["prediction"].tolist() == pytest.approx(expected)
    assert scored["key"].tolist() == list(range(150))

    # Every column, when neither is given: four columns for rows of three values.
    refused = nbdeploy_cli(
        "batch", "rows", str(folder), "--output", str(tmp_path / "x.parquet"), "--no-mlflow"
    )
    assert refused.code == 2, refused
    assert "rows of 3 values" in refused.err and "--features" in refused.err
    assert not (tmp_path / "x.parquet").exists()


def test_fitted_model_equals_its_service_and_drift_is_flagged(
    deployed: dict[str, Any], tmp_path: Path
) -> None:
    rng = np.random.default_rng(4)
    values = rng.normal(size=(600, 4))
    values[:, 2] += 3.0  # f2 shifted far from the reference
    data = pd.DataFrame(values, columns=["f0", "f1", "f2", "f3"])
    data["id"] = np.arange(600)
    source = tmp_path / "input.jsonl"
    data.to_json(source, orient="records", lines=True)
    output = tmp_path / "scored.parquet"
    progress: list[tuple[int, int | None]] = []
    result = nbdeploy.batch(
        "model",
        source,
        output,
        chunk_rows=128,
        workers=2,
        mlflow=False,
        on_progress=lambda done, total: progress.append((done, total)),
    )
    assert result.ok and result.rows_out == 600 and result.rows_failed == 0
    assert progress[-1] == (600, None)
    scored = read_output(output)
    expected = served(deployed["model"].deployment.url, "/predict", "rows", values.tolist())
    assert scored["prediction"].tolist() == expected
    assert scored["id"].tolist() == list(range(600))
    assert result.drift["status"] == "drift" and result.drift["drifted"] == ["f2"]

    listed = nbdeploy_cli("runs", "--json")
    assert listed.code == 0, listed
    record = next(r for r in listed.json if r["id"] == result.run_id)
    assert record["kind"] == "batch" and record["notebook"] == "model v1"
    assert record["parameters"]["deployment"] == "model" and record["parameters"]["version"] == 1
    assert record["metrics"]["rows_in"] == 600 and record["metrics"]["drifted_features"] == 1
    assert record["outputs"]["drift"]["drifted"] == ["f2"]
    shown = nbdeploy_cli("runs", result.run_id)
    assert shown.code == 0, shown
    assert "deployment model v1" in shown.out and "kernel" not in shown.out
    assert "drift      drift: f2 drifted" in shown.out


def test_named_parameters_one_call_per_row(deployed: dict[str, Any], tmp_path: Path) -> None:
    source = tmp_path / "input.csv"
    source.write_text("id,x,factor\n0,1.5,3\n1,oops,2\n2,-1,2\n3,4,5\n")
    output = tmp_path / "out.csv"
    result = nbdeploy_cli(
        "batch", "hints", str(source), "-o", str(output), "--max-error-share", "0.5",
        "--no-mlflow",
    )  # fmt: skip
    assert result.code == 0, result
    scored = read_output(output)
    url = deployed["hints"].deployment.url
    expected = [
        json.loads(post(url + "/scaled", {"x": x, "factor": f})[1]) for x, f in ((1.5, 3), (4, 5))
    ]
    assert scored["id"].tolist() == [0, 3]
    assert scored["prediction"].tolist() == expected == [4.5, 20.0]
    errors = [
        json.loads(line) for line in Path(str(output) + ".errors.jsonl").read_text().splitlines()
    ]
    assert [(e["row"], e["column"]) for e in errors] == [(1, "x"), (2, None)]
    assert errors[1]["reason"] == "ValueError: x must not be negative"


# -- bad rows -----------------------------------------------------------------------------
def test_bad_rows_go_to_the_errors_file_and_the_share_decides_the_exit(
    deployed: dict[str, Any], tmp_path: Path
) -> None:
    data = make_reference(rows=40, seed=8).astype({"color": str, "a": object})
    data.insert(0, "id", range(40))
    data.loc[3, "a"] = "abc"  # not a number
    data.loc[7, "color"] = "purple"  # unknown category
    data.loc[11, "b"] = None  # the reference had no missing b
    data.loc[30, "a"] = 5000.0  # the function raises on it
    source = tmp_path / "input.csv"
    data.to_csv(source, index=False)
    output = tmp_path / "out.csv"
    failing = nbdeploy_cli(
        "batch", "frame", str(source), "-o", str(output), "--chunk-rows", "16", "--no-mlflow"
    )
    assert failing.code == 1, failing
    assert "4 of 40 rows failed" in failing.err and "--max-error-share" in failing.err
    lines = Path(str(output) + ".errors.jsonl").read_text().splitlines()
    errors = [json.loads(line) for line in lines]
    assert [(e["row"], e["column"]) for e in errors] == [
        (3, "a"),
        (7, "color"),
        (11, "b"),
        (30, None),
    ]
    assert "'abc' is not a number" in errors[0]["reason"]
    assert "not a known category" in errors[1]["reason"]
    assert "missing value" in errors[2]["reason"]
    assert errors[3]["reason"] == "ValueError: a is above 1000"
    scored = read_output(output)  # written all the same, without the failed rows
    assert scored["id"].tolist() == [i for i in range(40) if i not in (3, 7, 11, 30)]
    assert scored["a"].dtype == float  # a kept feature column keeps its kind

    errors_file = tmp_path / "bad.jsonl"
    passing = nbdeploy_cli(
        "batch", "frame", str(source), "-o", str(output), "--errors", str(errors_file),
        "--max-error-share", "0.2", "--no-mlflow",
    )  # fmt: skip
    assert passing.code == 0, passing
    assert len(errors_file.read_text().splitlines()) == 4


# -- resume after SIGKILL ------------------------------------------------------------------
def test_a_killed_job_resumes_to_the_same_output(
    deployed: dict[str, Any], tmp_path: Path, batch_home: Path
) -> None:
    import psutil

    rng = np.random.default_rng(2)
    data = pd.DataFrame(rng.normal(size=(4000, 3)).round(3), columns=["f0", "f1", "f2"])
    data["n"] = range(4000)
    source = tmp_path / "input.parquet"
    data.to_parquet(source)
    output = tmp_path / "out.parquet"
    command = [
        str(VENV_BIN / "nbdeploy"), "batch", "rows", str(source), "-o", str(output),
        "--chunk-rows", "50", "--workers", "1", "--no-mlflow",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        parts: list[Path] = []
        while time.monotonic() < deadline and process.poll() is None:
            folders = job_folders(batch_home)
            parts = list(folders[0].glob("*.arrow")) if folders else []
            if len(parts) >= 5:
                break
            time.sleep(0.05)
        assert len(parts) >= 5 and process.poll() is None, "the job did not get under way"
        children = psutil.Process(process.pid).children(recursive=True)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()
    for child in children:  # the pool's processes: end those the kill left behind
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(children, timeout=10)
    assert not output.exists()

    resumed = nbdeploy_cli(*[str(c) for c in command[1:]], "--resume")
    assert resumed.code == 0, resumed
    assert "resuming:" in resumed.err
    assert job_folders(batch_home) == []
    uninterrupted = tmp_path / "again.parquet"
    fresh = nbdeploy_cli(*[str(c) for c in command[1:4]], "-o", str(uninterrupted),
                         "--chunk-rows", "50", "--workers", "2", "--no-mlflow")  # fmt: skip
    assert fresh.code == 0, fresh
    assert output.read_bytes() == uninterrupted.read_bytes()
    assert read_output(output)["n"].tolist() == list(range(4000))

    nothing = nbdeploy_cli(*[str(c) for c in command[1:]], "--resume")
    assert nothing.code == 2 and "nothing to resume" in nothing.err


# -- Dask ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_dask_local_cluster_and_remote_scheduler_give_the_local_output(
    deployed: dict[str, Any], tmp_path: Path
) -> None:
    from conftest import require_component

    require_component("dask", (VENV_BIN / "dask").exists(), "pip install 'dask[distributed]'")
    data = make_reference(rows=300, seed=3)
    data["id"] = range(300)
    source = tmp_path / "input.parquet"
    data.to_parquet(source)
    outputs = {kind: tmp_path / f"{kind}.parquet" for kind in ("local", "cluster", "remote")}
    base = ["batch", "frame", str(source), "--chunk-rows", "70", "--no-mlflow"]
    local = nbdeploy_cli(*base, "-o", str(outputs["local"]))
    assert local.code == 0, local
    cluster = nbdeploy_cli(
        *base, "-o", str(outputs["cluster"]), "--executor", "dask", "--workers", "2"
    )
    assert cluster.code == 0, cluster

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    scheduler = subprocess.Popen(
        [str(VENV_BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
         "--no-dashboard"],
        stdout=subprocess.DEVNULL, stderr=(logs / "scheduler.log").open("w"),
    )  # fmt: skip
    worker = subprocess.Popen(
        [str(VENV_BIN / "dask"), "worker", address, "--host", "127.0.0.1", "--nworkers", "1",
         "--nthreads", "1", "--no-dashboard"],
        stdout=subprocess.DEVNULL, stderr=(logs / "worker.log").open("w"),
    )  # fmt: skip
    try:
        remote = nbdeploy_cli(
            *base, "-o", str(outputs["remote"]), "--executor", "dask", "--scheduler", address
        )
        assert remote.code == 0, (remote, (logs / "worker.log").read_text()[-2000:])
    finally:
        for process in (worker, scheduler):
            process.terminate()
        for process in (worker, scheduler):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
    reference = outputs["local"].read_bytes()
    assert outputs["cluster"].read_bytes() == reference
    assert outputs["remote"].read_bytes() == reference


# -- memory --------------------------------------------------------------------------------
# Data segment of each process of the job (the CLI, and its workers, which inherit it):
# RLIMIT_DATA counts memory written to, not the address space reserved by thread arenas.
MEMORY_LIMIT = 700 << 20


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, MEMORY_LIMIT))


def reads_whole_file_within_the_limit(path: Path) -> bool:
    # Threads off: pyarrow's threaded reader can wait forever once malloc fails.
    code = f"import pandas; pandas.read_parquet({str(path)!r}, use_threads=False).sum()"
    try:
        check = subprocess.run(
            [sys.executable, "-c", code],
            preexec_fn=_limit_memory,
            capture_output=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return check.returncode == 0


def test_a_file_larger_than_the_memory_limit_scores_in_chunks(
    deployed: dict[str, Any], tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "large.parquet"
    rng = np.random.default_rng(6)
    columns = ["f0", "f1", "f2", "f3"] + [f"extra{i}" for i in range(12)]
    schema = pa.schema([(name, pa.float64()) for name in columns])
    with pq.ParquetWriter(source, schema, compression="none") as writer:
        for _ in range(30):
            block = rng.normal(size=(100_000, len(columns)))
            writer.write_table(pa.Table.from_arrays(list(block.T), schema=schema))
    rows = 3_000_000
    size = source.stat().st_size
    assert size > 350 << 20
    assert not reads_whole_file_within_the_limit(source), "the limit is too high to tell"
    output = tmp_path / "scored.parquet"
    completed = subprocess.run(
        [str(VENV_BIN / "nbdeploy"), "batch", "model", str(source), "-o", str(output),
         "--keep", "f0", "--chunk-rows", "50000", "--workers", "2", "--no-mlflow", "--json"],
        preexec_fn=_limit_memory, capture_output=True, text=True, timeout=240, check=False,
        env=dict(os.environ),
    )  # fmt: skip
    try:
        assert completed.returncode == 0, completed.stderr[-3000:]
        summary = json.loads(completed.stdout.strip().splitlines()[-1])
        assert summary["rows_in"] == rows and summary["rows_out"] == rows
        assert pq.ParquetFile(output).metadata.num_rows == rows
    finally:
        source.unlink(missing_ok=True)
        output.unlink(missing_ok=True)


# -- MLflow, the magic ------------------------------------------------------------------------
def test_mlflow_run_and_the_magic(
    deployed: dict[str, Any], tmp_path: Path, batch_home: Path
) -> None:
    from IPython.core.interactiveshell import InteractiveShell
    from mlflow.tracking import MlflowClient

    data = make_reference(rows=50, seed=11)
    source = tmp_path / "in.parquet"
    data.to_parquet(source)
    shell = InteractiveShell.instance()  # the one shell of this process (as test_magics)
    shell.run_line_magic("load_ext", "nbdeploy")
    output = tmp_path / "magic.parquet"
    shell.run_line_magic("deploy", f"batch frame {source} --output {output}")
    assert pq_rows(output) == 50
    client = MlflowClient(tracking_uri=f"sqlite:///{batch_home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("nbdeploy-batch")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["rows_in"] == 50 and run.data.params["deployment"] == "frame"


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


# -- errors before any work ----------------------------------------------------------------
def test_user_errors_say_what_and_write_nothing(
    deployed: dict[str, Any], tmp_path: Path, batch_home: Path
) -> None:
    good = tmp_path / "in.csv"
    make_reference(rows=10).to_csv(good, index=False)
    output = tmp_path / "out.parquet"
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    lacking = tmp_path / "lacking.csv"
    make_reference(rows=10).drop(columns=["b"]).to_csv(lacking, index=False)
    cases = [
        (["nothing", str(good), "-o", str(output)], "no deployment named 'nothing'"),
        (["frame", str(good), "-o", str(output), "--version", "7"], "no version 7 (versions: v1)"),
        (["frame", str(lacking), "-o", str(output)], "no column 'b'"),
        (["frame", str(good), "-o", str(tmp_path / "out.xlsx")], "unknown kind of file '.xlsx'"),
        (["frame", str(broken), "-o", str(output)], f"cannot read {broken}"),
        (["frame", str(tmp_path / "missing.csv"), "-o", str(output)], "does not exist"),
    ]
    runs_before = len(nbdeploy.runs(limit=1000))
    for args, said in cases:
        result = nbdeploy_cli("batch", *args, "--no-mlflow")
        assert result.code == 2, (args, result)
        assert said in result.err, (args, result.err)
        assert len(result.err.strip().splitlines()) <= 2, result.err  # a message and a hint
        assert "Traceback" not in result.err
        assert not output.exists() and not (tmp_path / "out.xlsx").exists()
        assert not Path(str(output) + ".errors.jsonl").exists()
    assert job_folders(batch_home) == []
    assert len(nbdeploy.runs(limit=1000)) == runs_before


def test_a_script_without_a_main_guard_is_told_what_to_do(
    deployed: dict[str, Any], tmp_path: Path, batch_home: Path
) -> None:
    """Each local worker imports the calling script (multiprocessing's spawn and forkserver
    do): a script that calls nbdeploy.batch at its top level starts it again in every worker.
    The job fails saying so, and keeps its finished chunks."""
    data = tmp_path / "in.csv"
    data.write_text("a,b,c\n" + "".join(f"{i},{i},{i}\n" for i in range(50)), encoding="utf-8")
    script = tmp_path / "score.py"
    script.write_text(
        "import nbdeploy\n"
        f"nbdeploy.batch('rows', {str(data)!r}, {str(tmp_path / 'out.parquet')!r}, "
        "features=['a', 'b', 'c'], mlflow=False, workers=1)\n",
        encoding="utf-8",
    )
    completed = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "NBDEPLOY_HOME": str(batch_home)},
        cwd=tmp_path,
    )
    assert completed.returncode != 0
    assert 'if __name__ == "__main__":' in completed.stderr, completed.stderr[-2000:]
    assert not (tmp_path / "out.parquet").exists()
    # Under the guard, the same call scores every row.
    script.write_text(
        "import nbdeploy\n"
        "if __name__ == '__main__':\n"
        f"    nbdeploy.batch('rows', {str(data)!r}, {str(tmp_path / 'out.parquet')!r}, "
        "features=['a', 'b', 'c'], mlflow=False, workers=1)\n",
        encoding="utf-8",
    )
    completed = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "NBDEPLOY_HOME": str(batch_home)},
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert pq_rows(tmp_path / "out.parquet") == 50
