"""Integration: %deploy from a live kernel to a real BentoML server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
from jupyter_client.manager import start_new_kernel
from support import LAST_HEADERS, execute, post, ready

from nbdeploy.deployment import verbs
from nbdeploy.deployment.store import DeploymentStore
from nbdeploy.store import StateStore

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("python_kernel")]

TRAIN = """
import numpy as np
from sklearn.ensemble import RandomForestClassifier
rng = np.random.default_rng(0)
X = rng.random((300, 4))
y = (X[:, 0] > 0.5).astype(int)
model = RandomForestClassifier(n_estimators=20, random_state=0).fit(X, y)

def predict(rows: list[list[float]]) -> list[int]:
    if rows and rows[0][0] == 99:
        raise ValueError("99 is not a valid measurement")
    return model.predict(np.asarray(rows)).tolist()
"""


@pytest.fixture(scope="module")
def deploy_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("deploy-home")


@pytest.fixture(autouse=True)
def _use_deploy_home(deploy_home, monkeypatch):
    monkeypatch.setenv("NBDEPLOY_HOME", str(deploy_home))


@pytest.fixture(scope="module")
def kernel(deploy_home, tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "JPY_"))}
    env["NBDEPLOY_HOME"] = str(deploy_home)
    km, kc = start_new_kernel(
        kernel_name="python3", env=env, cwd=str(tmp_path_factory.mktemp("kernel"))
    )
    try:
        execute(kc, TRAIN)
        execute(kc, "%load_ext nbdeploy")
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        for deployment in verbs.status(store=StateStore(deploy_home / "state.db")):
            verbs.stop(deployment.name, store=StateStore(deploy_home / "state.db"))


def store(home: Path) -> DeploymentStore:
    return DeploymentStore(StateStore(home / "state.db"))


def live_model_version(home: Path, name: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    return str(client.get_model_version_by_alias(name, "live").version)


def registered_run_artifacts(home: Path, name: str, number: str) -> str:
    """Where the run that logged a registered model version keeps its artifacts."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    return str(client.get_run(client.get_model_version(name, number).run_id).info.artifact_uri)


def test_deploy_from_a_live_kernel_serves_requests(kernel, deploy_home, cli):
    output = execute(kernel, "%deploy predict --reference X")
    assert "requirements: " in output and "scikit-learn==" in output and "numpy==" in output
    status = cli("status", "predict", "--json")
    assert status.code == 0, status
    [deployment] = status.json
    assert deployment["status"] == "serving" and deployment["live_version"] == 1
    url = deployment["url"]
    assert url.startswith("http://127.0.0.1:")
    code, body = post(url + "/predict", {"rows": [[0.9, 0.1, 0.1, 0.1], [0.1, 0.9, 0.9, 0.9]]})
    assert (code, json.loads(body)) == (200, [1, 0])
    # Input that does not fit the schema: 4xx naming the field.
    code, body = post(url + "/predict", {"rows": "not rows"})
    assert code == 400 and '"rows"' in body
    code, body = post(url + "/predict", {"rowz": [[1, 2, 3, 4]]})
    assert code == 400 and "rows" in body and "Field required" in body
    # An exception in the user's function: 500, logged, and the service stays up.
    code, body = post(url + "/predict", {"rows": [[99, 0, 0, 0]]})
    assert code == 500
    request_id = LAST_HEADERS["x-bentoml-request-id"]
    assert ready(url)
    assert post(url + "/predict", {"rows": [[0.9, 0.1, 0.1, 0.1]]}) == (200, "[1]")
    logs = cli("logs", "predict", "--tail", "200").out
    assert "99 is not a valid measurement" in logs
    failure_line = next(line for line in logs.splitlines() if f"span={request_id}" in line)
    assert "Exception on /predict" in failure_line
    version = store(deploy_home).version("predict", 1)
    assert version.options["batch"] is True
    assert Path(version.reference_path).exists()
    assert any(r.startswith("scikit-learn==") for r in version.requirements)
    # Registered in MLflow under the deployment's name, with the alias `live`.
    assert version.mlflow_version is not None
    assert live_model_version(deploy_home, "predict") == version.mlflow_version
    # The registered pyfunc is the same version and scores every row of a DataFrame.
    scored = _score_registered(deploy_home, "predict", version.mlflow_version)
    assert scored == [1, 0, 1]
    # MLflow wrote into nbdeploy's home, nothing beside the notebook (the kernel's folder).
    folder = Path(execute(kernel, "import os; print(os.getcwd())").strip())
    assert folder.is_dir() and not (folder / "mlruns").exists(), sorted(folder.iterdir())
    assert not (folder / "mlartifacts").exists() and (deploy_home / "mlartifacts").is_dir()
    assert registered_run_artifacts(deploy_home, "predict", version.mlflow_version).startswith(
        (deploy_home / "mlartifacts").as_uri()
    )
    # Status and show name the registry's version beside nbdeploy's (not the same number in
    # a shared registry).
    label = f"v1 (MLflow predict version {version.mlflow_version})"
    assert f"predict: live {label}" in cli("status", "predict").out
    assert cli("status", "predict", "--json").json[0]["live_mlflow_version"] == (
        version.mlflow_version
    )
    assert label in cli("show", "predict").out
    code_text = cli("show", "predict", "--code").out
    assert "def predict(rows: list[list[float]]) -> list[int]:" in code_text
    assert ".batched(rows)" in code_text  # adaptive batching across requests


def _score_registered(home: Path, name: str, number: str) -> list:
    """Load the registered MLflow model in a fresh interpreter and score three rows."""
    import subprocess
    import sys

    tracking = f"sqlite:///{home / 'mlflow.db'}"
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri({tracking!r})\n"
        f"model = mlflow.pyfunc.load_model('models:/{name}/{number}')\n"
        "rows = pd.DataFrame([[0.9, 0.1, 0.1, 0.1], [0.1, 0.9, 0.9, 0.9], [0.8, 0, 0, 0]])\n"
        "print(json.dumps(list(model.predict(rows))))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_redeploy_of_an_unchanged_function_does_not_rebuild(kernel, deploy_home, cli):
    bentos = deploy_home / "bentoml" / "bentos" / "nbd-predict"
    before = sorted(p.name for p in bentos.iterdir())
    output = execute(kernel, "%deploy predict")
    assert "unchanged since version 1" in output
    assert sorted(p.name for p in bentos.iterdir()) == before
    assert [v.version for v in store(deploy_home).versions("predict")] == [1]
    assert cli("status", "predict", "--json").json[0]["status"] == "serving"


def test_a_failing_new_version_leaves_the_old_one_serving(kernel, deploy_home, cli):
    url = cli("status", "predict", "--json").json[0]["url"]
    execute(
        kernel,
        "class Fragile:\n"
        "    def __setstate__(self, state):\n"
        "        import os\n"
        "        if os.environ.get('BENTOML_HOME'):\n"
        "            raise RuntimeError('cannot be loaded in a service')\n"
        "fragile = Fragile()\n"
        "fragile.level = 1  # state, so that unpickling calls __setstate__\n"
        "def predict_fragile(rows: list[list[float]]) -> list[int]:\n"
        "    return [0 for _ in rows] if fragile else []\n",
    )
    output = execute(kernel, "%deploy predict_fragile --name predict", ok=False)
    assert "predict v2 did not take over; v1 is still serving at" in output
    assert "cannot be loaded in a service" in output or "failed to start" in output
    deployment = cli("status", "predict", "--json").json[0]
    assert deployment["status"] == "serving" and deployment["live_version"] == 1
    assert deployment["url"] == url
    assert post(url + "/predict", {"rows": [[0.9, 0.1, 0.1, 0.1]]}) == (200, "[1]")
    # The log shows why the new version failed, then the restarted version's.
    logs = cli("logs", "predict", "--tail", "400").out
    assert "v2: the start that failed" in logs and "cannot be loaded in a service" in logs
    assert "v1: serving now" in logs


def test_rollback_serves_the_previous_version(kernel, deploy_home, cli):
    execute(kernel, "model = RandomForestClassifier(n_estimators=5, random_state=1).fit(X, 1 - y)")
    execute(kernel, "%deploy predict")
    deployment = cli("status", "predict", "--json").json[0]
    assert deployment["live_version"] == 3  # v2 was the version that failed to start
    assert post(deployment["url"] + "/predict", {"rows": [[0.9, 0.1, 0.1, 0.1]]}) == (200, "[0]")
    rolled = cli("rollback", "predict", "--json")
    assert rolled.code == 0, rolled
    assert rolled.json["live_version"] == 1
    assert post(deployment["url"] + "/predict", {"rows": [[0.9, 0.1, 0.1, 0.1]]}) == (200, "[1]")
    assert "the MLflow alias 'live' follows in the background" in rolled.err + rolled.out
    first = store(deploy_home).version("predict", 1)
    deadline = time.monotonic() + 60  # rollback returned once traffic switched
    while live_model_version(deploy_home, "predict") != first.mlflow_version:
        assert time.monotonic() < deadline, "the alias 'live' did not follow the rollback"
        time.sleep(0.5)
    # A registry that cannot follow (the model was renamed in MLflow's UI) does not hold
    # the rollback back: traffic switches, and status says the alias was not updated.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{deploy_home / 'mlflow.db'}")
    client.rename_registered_model("predict", "predict-elsewhere")
    try:
        rolled = cli("rollback", "predict", "--to", "3")
        assert rolled.code == 0, rolled
        assert post(deployment["url"] + "/predict", {"rows": [[0.9, 0.1, 0.1, 0.1]]})[1] == "[0]"
        deadline = time.monotonic() + 60
        while "registry-not-updated" not in (shown := cli("status", "predict").out):
            assert time.monotonic() < deadline, shown
            time.sleep(0.5)
        line = next(line for line in shown.splitlines() if "registry-not-updated" in line)
        assert "version 3" in line and "MLflow registry not updated" in line, line
    finally:
        client.rename_registered_model("predict-elsewhere", "predict")
    assert cli("rollback", "predict", "--to", "1").code == 0
    deadline = time.monotonic() + 60
    while live_model_version(deploy_home, "predict") != first.mlflow_version:
        assert time.monotonic() < deadline, "the alias 'live' did not follow the rollback"
        time.sleep(0.5)


def test_a_killed_server_is_restarted_and_status_tells_why(kernel, deploy_home, cli):
    [server] = [s for s in store(deploy_home).active_servers("predict") if s.role == "live"]
    os.killpg(server.pid, signal.SIGKILL)

    def replaced() -> bool:
        live = [s for s in store(deploy_home).active_servers("predict") if s.role == "live"]
        return bool(live) and live[0].pid != server.pid

    deadline = time.monotonic() + 30
    while not replaced():
        assert time.monotonic() < deadline, "the killed server was not restarted"
        time.sleep(0.2)
    status = cli("status", "predict")
    assert status.code == 0 and "✓ predict  serving" in status.out, status
    assert f"died: process v{server.version} (live), cause process {server.pid} was killed" in (
        status.out
    )
    assert f"restarted: process v{server.version}" in status.out
    assert not ready(f"http://127.0.0.1:{server.port}") or replaced()
    assert not psutil_alive(server.pid)


def psutil_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_two_deploys_at_once_do_not_corrupt_the_store(kernel, deploy_home):
    namespace: dict = {"__name__": "__main__"}
    sources = {
        name: f"def {name}(values: list[float]) -> list[float]:\n"
        f"    return [v * {factor} for v in values]\n"
        for name, factor in (("double", 2), ("triple", 3))
    }
    for text in sources.values():  # a second notebook's functions, deployed at once
        exec(text, namespace)
    results: dict = {}
    errors: list = []

    def deploy(name: str) -> None:
        try:
            results[name] = verbs.deploy_function(
                namespace[name], namespace=namespace, history=[sources[name]]
            )
        except Exception as error:  # reported below
            errors.append(error)

    import linecache

    for name, text in sources.items():  # give exec'd functions a source, as IPython does
        filename = f"<cell-{name}>"
        linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
        namespace[name].__code__ = namespace[name].__code__.replace(co_filename=filename)
    threads = [threading.Thread(target=deploy, args=(n,)) for n in ("double", "triple")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert errors == []
    code, body = post(results["double"].url + "/double", {"values": [1, 2]})
    assert (code, json.loads(body)) == (200, [2.0, 4.0])
    code, body = post(results["triple"].url + "/triple", {"values": [1, 2]})
    assert (code, json.loads(body)) == (200, [3.0, 6.0])
    check = StateStore(deploy_home / "state.db").connection()
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert store(deploy_home).version("double", 1).function == "double"
    assert store(deploy_home).version("triple", 1).function == "triple"
    for name in ("double", "triple"):
        verbs.stop(name)


def test_the_deploy_steps_lines_arrive_while_it_works(deploy_home, tmp_path):
    """`nbdeploy deploy NOTEBOOK` deploys from the notebook's kernel; the lines that step
    prints (building, starting) reach a pipe as they happen, not when the run has ended."""
    import shutil
    import sqlite3
    import subprocess

    examples = Path(__file__).resolve().parent.parent / "example_notebooks"
    notebook = tmp_path / "train.ipynb"
    shutil.copy(examples / "train.ipynb", notebook)
    command = [str(Path(sys.executable).with_name("nbdeploy")), "deploy", str(notebook)]
    process = subprocess.Popen(
        [*command, "--name", "nb-live", "-p", "n_estimators", "7", "--no-mlflow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    versions_when_building = None
    try:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if line.startswith("nbdeploy: building nb-live"):
                with sqlite3.connect(deploy_home / "state.db", timeout=10) as db:
                    versions_when_building = db.execute(
                        "SELECT COUNT(*) FROM versions WHERE deployment = 'nb-live'"
                    ).fetchone()[0]
        assert process.wait(timeout=300) == 0, "".join(seen)
    finally:
        process.kill()
    # Told while building: the version it builds is not recorded yet.
    assert versions_when_building == 0, "".join(seen)
    assert verbs.stop("nb-live").status == "stopped"


def test_deploy_from_a_notebook_file(deploy_home, cli, tmp_path):
    import shutil

    examples = Path(__file__).resolve().parent.parent / "example_notebooks"
    notebook = tmp_path / "train.ipynb"
    shutil.copy(examples / "train.ipynb", notebook)
    first = cli(
        "deploy",
        str(notebook),
        "--name",
        "nb-predict",
        "-p",
        "n_estimators",
        "15",
        "--reference",
        "X_train",
        "--no-mlflow",
        "--json",
    )
    assert first.code == 0, first
    result = first.json
    assert (
        result["name"] == "nb-predict" and result["version"] == 1 and result["status"] == "serving"
    )
    assert result["endpoint"] == result["url"] + "/predict"
    code, body = post(result["endpoint"], result["example"])
    assert code == 200 and json.loads(body) in ([0], [1])
    run = cli("runs", result["run_id"], "--json").json
    assert run["parameters"] == {"n_estimators": 15} and run["status"] == "succeeded"
    again = cli(
        "deploy",
        str(notebook),
        "--name",
        "nb-predict",
        "-p",
        "n_estimators",
        "15",
        "--no-mlflow",
        "--json",
    )
    assert again.code == 0 and again.json["version"] == 1 and again.json["built"] is False
    missing = cli("deploy", str(notebook), "--function", "nope", "--no-mlflow")
    assert missing.code == 1
    assert "train.ipynb defines no function 'nope'" in missing.err
    assert cli("stop", "nb-predict").code == 0


def test_a_notebook_deployed_by_nbdeploy_makes_one_version_and_a_run_lists_its_deploys(
    deploy_home, cli, make_notebook
):
    """nbdeploy deploy NOTEBOOK (the sidebar's Deploy too) runs the notebook, then deploys:
    the notebook's own %deploy line does not deploy a second version, and the output
    notebook says why. A plain run executes it as written and its record lists the deploy."""
    import nbformat

    notebook = make_notebook(
        "own_step.ipynb",
        [
            "%load_ext nbdeploy",
            "def scale(values: list[float]) -> list[float]:\n    return [2 * v for v in values]",
            "%deploy scale --name own-step --no-mlflow",
        ],
    )
    try:
        deployed = cli(
            "deploy", str(notebook), "--function", "scale", "--name", "own-step", "--no-mlflow",
            "--json",
        )  # fmt: skip
        assert deployed.code == 0, deployed
        assert deployed.json["version"] == 1
        versions = DeploymentStore(StateStore(deploy_home / "state.db")).versions("own-step")
        assert [v.version for v in versions] == [1]
        run = cli("runs", deployed.json["run_id"], "--json").json
        output = nbformat.read(run["output_path"], as_version=4)
        text = "".join(o.get("text", "") for o in output.cells[2].outputs)
        assert "%deploy scale skipped: nbdeploy runs this notebook to deploy from it" in text
        assert run["deployed"] == []
        # From another notebook, the name is refused before that notebook runs.
        other = make_notebook("other.ipynb", ["def scale(values: list[float]) -> list[float]:\n"
                                              "    return values"])  # fmt: skip
        runs_before = len(cli("runs", "--json").json)
        refused = cli("deploy", str(other), "--function", "scale", "--name", "own-step")
        assert refused.code == 1, refused
        assert "own-step serves v1, deployed from" in refused.err and "--replace" in refused.err
        assert len(cli("runs", "--json").json) == runs_before  # nothing ran

        plain = cli("run", str(notebook), "--no-mlflow", "--json")
        assert plain.code == 0, plain
        record = cli("runs", plain.json["id"], "--json").json
        [made] = record["deployed"]
        [live] = verbs.status("own-step")
        assert (made["name"], made["version"]) == ("own-step", live.live_version)
        assert made["url"] == deployed.json["url"]
        shown = cli("runs", plain.json["id"])
        assert f"deployed   own-step v{live.live_version} at {made['url']}" in shown.out
    finally:
        cli("stop", "own-step")


def test_deploy_an_mlflow_registered_model_without_a_notebook(deploy_home, cli, tmp_path):
    import mlflow
    import mlflow.sklearn
    import numpy as np
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient
    from sklearn.linear_model import LogisticRegression

    uri = f"sqlite:///{deploy_home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(
        "churn-training", artifact_location=(tmp_path / "a").as_uri()
    )
    features = np.random.default_rng(1).random((80, 3))
    labels = (features[:, 0] > 0.5).astype(int)
    model = LogisticRegression().fit(features, labels)
    mlflow.set_tracking_uri(uri)
    try:
        with warnings.catch_warnings(), mlflow.start_run(experiment_id=experiment):
            warnings.simplefilter("ignore")  # MLflow's advice on type hints
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                registered_model_name="churn",
                signature=infer_signature(features, labels),
                pip_requirements=["scikit-learn"],
            )
    finally:
        mlflow.set_tracking_uri("")
    client.set_registered_model_alias("churn", "champion", info.registered_model_version)
    result = cli("deploy", "--from-mlflow", "models:/churn@champion", "--json")
    assert result.code == 0, result
    assert result.json["name"] == "churn" and result.json["status"] == "serving"
    code, body = post(result.json["endpoint"], {"rows": [[0.9, 0.2, 0.2], [0.1, 0.7, 0.7]]})
    assert (code, json.loads(body)) == (200, [1, 0])
    # A row of another width is the client's mistake: 400 saying the width, not a 500.
    code, body = post(result.json["endpoint"], {"rows": [[0.9, 0.2]]})
    assert code == 400 and "a row has 2 values; the model expects 3" in body, (code, body)
    # The curl line it prints works as printed (the signature gives the width).
    again = cli("deploy", "--from-mlflow", "models:/churn@champion")
    assert again.code == 0, again
    [line] = [line for line in again.out.splitlines() if line.startswith("  try: curl ")]
    called = subprocess.run(
        ["bash", "-c", line.removeprefix("  try: ") + " -s -w ' %{http_code}'"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert called.stdout.endswith(" 200") and "[0.0, 0.0, 0.0]" in line, (line, called)
    shown = cli("show", "churn", "--code")
    assert shown.code == 0 and "Serves the MLflow model" in shown.out, shown
    bad = cli("deploy", "--from-mlflow", "models:/churn@nope")
    assert bad.code == 1 and "MLflow has no model 'models:/churn@nope'" in bad.err
    assert cli("deploy", "--from-mlflow", "/etc/passwd").code == 1
    assert cli("stop", "churn").code == 0


def test_requirements_include_packages_a_model_imports_lazily(kernel, deploy_home, cli):
    execute(
        kernel,
        "class LazyModel:\n"
        "    def predict(self, rows):\n"
        "        import yaml  # imported only when called\n"
        "        return [len(yaml.safe_dump(row)) % 2 for row in rows]\n"
        "lazy = LazyModel()\n"
        "lazy.version = 1\n"
        "def lazy_predict(rows: list[list[float]]) -> list[int]:\n"
        "    return lazy.predict(rows)\n",
    )
    output = execute(kernel, "%deploy lazy_predict --name lazy --reference X")
    assert "imported when called (added): " in output and "PyYAML==" in output
    version = store(deploy_home).version("lazy", 1)
    assert any(line.startswith("PyYAML==") for line in version.requirements)
    requirements_file = Path(version.service_dir) / "requirements.txt"
    assert "PyYAML==" in requirements_file.read_text()
    # Built once with the requirements known before the example call, then again with
    # PyYAML: only the final bento is kept.
    bentos = deploy_home / "bentoml" / "bentos" / "nbd-lazy"
    assert [p.name for p in bentos.iterdir() if p.is_dir()] == [version.bento_tag.split(":")[1]]
    url = cli("status", "lazy", "--json").json[0]["url"]
    code, body = post(url + "/lazy_predict", {"rows": [[0.5, 0.5, 0.5, 0.5]]})
    assert code == 200 and json.loads(body)[0] in (0, 1)
    again = execute(kernel, "%deploy lazy_predict --name lazy --reference X")
    assert "unchanged since version 1" in again  # the probe is cached, the build reused
    assert cli("stop", "lazy").code == 0


def test_dataframe_and_pydantic_inputs_and_the_cell_magic(kernel, deploy_home, cli):
    execute(
        kernel,
        "import pandas as pd\n"
        "from pydantic import BaseModel\n"
        "class Customer(BaseModel):\n"
        "    age: int\n"
        "    plan: str\n"
        "def score_frame(frame: pd.DataFrame) -> list[float]:\n"
        "    return (frame['a'] * 2 + frame['b']).tolist()\n",
    )
    execute(kernel, "%deploy score_frame --name frame")
    url = cli("status", "frame", "--json").json[0]["url"]
    code, body = post(url + "/score_frame", {"frame": [{"a": 1, "b": 0.5}, {"a": 2, "b": 0}]})
    assert (code, json.loads(body)) == (200, [2.5, 4.0])
    output = execute(
        kernel,
        "%%deploy customer\n"
        "def describe(customer: Customer) -> str:\n"
        "    return f'{customer.plan} customer aged {customer.age}'\n",
    )
    assert "customer" in output
    url = cli("status", "customer", "--json").json[0]["url"]
    code, body = post(url + "/describe", {"customer": {"age": 41, "plan": "gold"}})
    assert (code, body) == (200, "gold customer aged 41")  # a str answer is text/plain
    code, body = post(url + "/describe", {"customer": {"age": "old", "plan": "gold"}})
    assert code == 400 and "age" in body
    status = execute(kernel, "%deploy status")
    assert "frame" in status and "customer" in status
    assert "stopped customer" in execute(kernel, "%deploy stop customer")
    assert cli("stop", "frame").code == 0


def test_a_lightgbm_booster_is_saved_with_its_framework_saver(kernel, deploy_home, cli):
    execute(
        kernel,
        "import lightgbm as lgb\n"
        "booster = lgb.train({'objective': 'binary', 'verbose': -1}, lgb.Dataset(X, y), 10)\n"
        "def boost(rows: list[list[float]]) -> list[float]:\n"
        "    return [round(float(p), 3) for p in booster.predict(np.asarray(rows))]\n",
    )
    output = execute(kernel, "%deploy boost")
    assert "lightgbm==" in output
    version = store(deploy_home).version("boost", 1)
    manifest = json.loads((Path(version.service_dir) / "manifest.json").read_text())
    assert [o["kind"] for o in manifest["objects"]] == ["lightgbm"]
    model_yaml = next((deploy_home / "bentoml" / "models").glob("nbd-boost-obj0/*/model.yaml"))
    assert "bentoml.lightgbm" in model_yaml.read_text()
    url = cli("status", "boost", "--json").json[0]["url"]
    code, body = post(url + "/boost", {"rows": [[0.9, 0.1, 0.1, 0.1], [0.1, 0.9, 0.9, 0.9]]})
    high, low = json.loads(body)
    assert code == 200 and high > 0.5 > low
    assert cli("stop", "boost").code == 0


def test_delete_removes_a_deployment_and_everything_it_left(kernel, deploy_home, cli):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    [deployment] = cli("status", "predict", "--json").json
    versions = store(deploy_home).versions("predict")
    bentos = deploy_home / "bentoml" / "bentos" / "nbd-predict"
    assert versions and bentos.is_dir() and deployment["status"] == "serving"
    # Without --yes, and no terminal to ask on: refused, and nothing changes.
    refused = cli("delete", "predict")
    assert refused.code == 2 and "nbdeploy delete predict --yes" in refused.err, refused
    assert "MLflow registered model" in refused.err
    assert post(deployment["url"] + "/predict", {"rows": [[0.9, 0.1, 0.1, 0.1]]})[0] == 200
    deleted = cli("delete", "predict", "--yes", "--json")
    assert deleted.code == 0, deleted
    assert sorted(deleted.json["removed"]) == sorted(v.version for v in versions)
    assert deleted.json["registry_removed"] and deleted.json["errors"] == []
    assert not ready(deployment["url"])  # nothing answers at its address
    assert not (deploy_home / "deployments" / "predict").exists()
    assert not any(bentos.glob("*/bento.yaml"))
    assert all(not Path(v.service_dir).exists() for v in versions)
    gone = cli("status", "predict")
    assert gone.code == 2 and "no deployment named 'predict'" in gone.err, gone
    client = MlflowClient(tracking_uri=f"sqlite:///{deploy_home / 'mlflow.db'}")
    with pytest.raises(MlflowException):
        client.get_registered_model("predict")
    # The name is free: a new deployment of it starts again at v1.
    output = execute(kernel, "%deploy predict --no-mlflow")
    assert "predict v1" in output, output
    assert cli("delete", "predict", "--yes").code == 0
