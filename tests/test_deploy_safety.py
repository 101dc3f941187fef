"""Integration: what a deploy must never get wrong, in a live kernel with real BentoML
servers on 127.0.0.1: schemas from the reference, batching limits, refused variables,
fitted models deployed directly, local modules snapshotted for rollbacks from anywhere,
failed builds, a port held by another process, interrupts and concurrent deploys."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from jupyter_client.manager import start_new_kernel
from support import execute, post

from nbdeploy.deployment import verbs
from nbdeploy.deployment.store import DeploymentStore
from nbdeploy.store import StateStore

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("python_kernel")]

SETUP = """
import numpy as np, pandas as pd
from sklearn.linear_model import LogisticRegression
rng = np.random.default_rng(0)
X = rng.random((200, 3))
y = (X[:, 0] > 0.5).astype(int)
clf = LogisticRegression().fit(X, y)
frame = pd.DataFrame({
    "age": rng.integers(18, 90, 200),
    "income": rng.random(200) * 1000,
    "member": rng.random(200) > 0.5,
    "plan": pd.Categorical(rng.choice(["basic", "gold"], 200)),
    "city": rng.choice(["Oslo", "Lima"], 200),
})
def score(df: pd.DataFrame) -> list[float]:
    assert list(df.columns) == ["age", "income", "member", "plan", "city"], list(df.columns)
    assert str(df["age"].dtype) == "int64" and str(df["plan"].dtype) == "category"
    return (df["income"] / df["age"] + df["member"] + (df["plan"] == "gold")).tolist()
def predict(rows: list[list[float]]) -> list[int]:
    return clf.predict(np.asarray(rows)).tolist()
"""


@pytest.fixture(scope="module")
def safety_home(tmp_path_factory) -> Path:  # one NBDEPLOY_HOME for the kernel and the CLI
    return tmp_path_factory.mktemp("safety-home")


@pytest.fixture(autouse=True)
def _home_env(safety_home, monkeypatch):
    monkeypatch.setenv("NBDEPLOY_HOME", str(safety_home))


@pytest.fixture(scope="module")
def notebook_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("notebook")
    (folder / "mylib.py").write_text("OFFSET = 1\ndef featurize(x):\n    return x + OFFSET\n")
    return folder


@pytest.fixture(scope="module")
def kernel(safety_home, notebook_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "JPY_"))}
    env["NBDEPLOY_HOME"] = str(safety_home)
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(notebook_dir))
    try:
        execute(kc, SETUP)
        execute(kc, "%load_ext nbdeploy")
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        state = StateStore(safety_home / "state.db")
        for deployment in verbs.status(store=state):
            verbs.stop(deployment.name, store=state)


def answer(url: str, body: dict) -> tuple[int, object]:
    code, text = post(url, body)
    return code, json.loads(text) if code == 200 else text


def url_of(cli, name: str) -> str:
    return str(cli("status", name, "--json").json[0]["url"])


def test_records_follow_the_reference_dataframe(kernel, cli):
    _, kc = kernel
    output = execute(kc, "%deploy score --reference frame --no-mlflow")
    assert "requirements: " in output and "pandas==" in output
    url = url_of(cli, "score")
    record = {"age": 30, "income": 300.0, "member": True, "plan": "gold", "city": "Oslo"}
    code, body = post(url + "/score", {"df": [record]})
    assert (code, json.loads(body)) == (200, [12.0])
    wrong_type = post(url + "/score", {"df": [{**record, "income": "lots"}]})
    assert wrong_type[0] == 400 and "income" in wrong_type[1]
    missing = {k: v for k, v in record.items() if k != "age"}
    code, body = post(url + "/score", {"df": [missing]})
    assert code == 400 and "age" in body and "Field required" in body
    code, body = post(url + "/score", {"df": [{**record, "plan": "platinum"}]})
    assert code == 400 and "plan" in body
    code, body = post(url + "/score", {"df": [{**record, "colour": "red"}]})
    assert code == 400 and "colour" in body
    # The reference has no missing income: a null there is refused, naming the column
    # (not a 500 from deep inside the model).
    code, body = post(url + "/score", {"df": [{**record, "income": None}]})
    assert code == 400 and "income" in body, body
    # The schema is in the service's OpenAPI document.
    import urllib.request

    with urllib.request.urlopen(url + "/docs.json", timeout=10) as answer:
        document = answer.read().decode()
    for column in ("age", "income", "member", "plan", "city", "basic", "gold"):
        assert column in document
    # --extra-columns drop: an unknown column is dropped instead of refused.
    execute(
        kc, "%deploy score --name score-drop --reference frame --extra-columns drop --no-mlflow"
    )
    code, body = post(url_of(cli, "score-drop") + "/score", {"df": [{**record, "colour": "red"}]})
    assert (code, json.loads(body)) == (200, [12.0])


def test_batching_never_changes_what_one_request_can_do(kernel, cli):
    _, kc = kernel
    execute(kc, "%deploy predict --reference X --no-mlflow")
    url = url_of(cli, "predict")
    big = [[0.9, 0.1, 0.1]] * 12_500
    code, body = post(url + "/predict", {"rows": big})
    assert code == 200 and json.loads(body) == [1] * 12_500
    assert post(url + "/predict", {"rows": []}) == (200, "[]")
    code, body = post(url + "/predict", {"rows": [[0.1, 0.2]]})
    assert code == 400 and "expects 3" in body
    # Concurrent small requests are each answered with their own rows.
    answers: dict[int, tuple[int, str]] = {}

    def send(index: int) -> None:
        answers[index] = post(url + "/predict", {"rows": [[0.9 if index % 2 else 0.1, 0, 0]] * 3})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for index, (code, body) in answers.items():
        assert code == 200 and json.loads(body) == [index % 2] * 3


def test_a_fitted_model_deploys_directly_with_predict_proba(kernel, cli):
    _, kc = kernel
    output = execute(kc, "%deploy clf --no-mlflow")
    assert "clf" in output
    url = url_of(cli, "clf")
    code, body = post(url + "/predict", {"rows": [[0.9, 0.1, 0.1], [0.1, 0.1, 0.1]]})
    assert (code, json.loads(body)) == (200, [1, 0])
    code, body = post(url + "/predict_proba", {"rows": [[0.9, 0.1, 0.1]]})
    expected = json.loads(
        execute(kc, "import json; print(json.dumps(clf.predict_proba([[0.9, 0.1, 0.1]]).tolist()))")
    )
    assert code == 200 and json.loads(body)[0] == pytest.approx(expected[0])
    code, body = post(url + "/predict", {"rows": [[1.0]]})
    assert code == 400 and "expects 3" in body


@pytest.mark.parametrize(
    ("setup", "variable", "what"),
    [
        ("handle = open('mylib.py')", "handle", "an open file"),
        ("import socket\nhandle = socket.socket()", "handle", "a network socket"),
        ("handle = (i for i in range(3))", "handle", "a generator"),
        ("import sqlite3\nhandle = sqlite3.connect(':memory:')", "handle", "a live database"),
        ("import threading\nhandle = threading.Lock()", "handle", "a lock"),
    ],
)
def test_what_cannot_be_captured_is_refused_before_any_build(
    kernel, safety_home, setup, variable, what
):
    _, kc = kernel
    execute(
        kc,
        setup + "\ndef uses(rows: list[list[float]]) -> list[int]:\n"
        f"    return [bool({variable})] * len(rows)\n",
    )
    output = execute(kc, "%deploy uses --name refused --no-mlflow", ok=False)
    assert f"'{variable}'" in output and what in output
    assert DeploymentStore(StateStore(safety_home / "state.db")).find("refused") is None


def test_local_modules_are_snapshotted_and_rollbacks_work_from_anywhere(
    kernel, cli, notebook_dir, tmp_path
):
    _, kc = kernel
    execute(
        kc,
        "import mylib\ndef shifted(values: list[float]) -> list[float]:\n"
        "    return [mylib.featurize(v) for v in values]\n",
    )
    execute(kc, "%deploy shifted --no-mlflow")
    url = url_of(cli, "shifted")
    assert answer(url + "/shifted", {"values": [1, 2]}) == (200, [2.0, 3.0])
    assert "OFFSET = 1" in cli("show", "shifted", "--code").out
    (notebook_dir / "mylib.py").write_text(
        "OFFSET = 10\ndef featurize(x):\n    return x + OFFSET\n"
    )
    execute(kc, "import importlib; importlib.reload(mylib)")
    execute(kc, "%deploy shifted --no-mlflow")
    assert answer(url + "/shifted", {"values": [1, 2]}) == (200, [11.0, 12.0])
    # The notebook's files change again; a rollback from another folder serves v1 exactly.
    (notebook_dir / "mylib.py").write_text("raise ImportError('edited away')\n")
    rolled = cli("rollback", "shifted", "--json", cwd=tmp_path)
    assert rolled.code == 0, rolled
    assert rolled.json["live_version"] == 1
    assert answer(url + "/shifted", {"values": [1, 2]}) == (200, [2.0, 3.0])
    (notebook_dir / "mylib.py").write_text("OFFSET = 1\ndef featurize(x):\n    return x + OFFSET\n")


MYLIB = "OFFSET = 1\ndef featurize(x):\n    return x + OFFSET\n"


def test_a_local_module_edited_but_not_reloaded_is_refused_unless_from_files(
    kernel, cli, notebook_dir, safety_home
):
    """The kernel runs mylib as it imported it; the file on disk says something else. The
    version must not silently serve the file's code."""
    _, kc = kernel
    (notebook_dir / "mylib.py").write_text(MYLIB)
    execute(kc, "import importlib, mylib; importlib.reload(mylib)")
    execute(
        kc,
        "def offset_of(values: list[float]) -> list[float]:\n"
        "    return [mylib.featurize(v) for v in values]\n",
    )
    edited = "OFFSET = 100\n\n\ndef featurize(x):\n    return x * OFFSET\n"
    (notebook_dir / "mylib.py").write_text(edited)
    try:
        output = execute(kc, "%deploy offset_of --name offset --no-mlflow", ok=False)
        assert "local module mylib (" in output, output
        assert "changed on disk since this kernel imported it" in output
        assert "mylib.featurize" in output and "mylib.OFFSET" in output
        assert "importlib.reload(mylib)" in output and "--from-files" in output
        assert DeploymentStore(StateStore(safety_home / "state.db")).find("offset") is None
        # Asked for: the files as they are now.
        output = execute(kc, "%deploy offset_of --name offset --no-mlflow --from-files")
        assert "snapshotted from its file, which differs from what the kernel imported" in output
        url = url_of(cli, "offset")
        assert answer(url + "/offset_of", {"values": [1, 2]}) == (200, [100.0, 200.0])
        # Reloaded, the kernel and the file agree: no question, the same code.
        execute(kc, "importlib.reload(mylib)")
        output = execute(kc, "%deploy offset_of --name offset --no-mlflow")
        assert "is snapshotted into the version" in output
        # Only moved lines and comments: not a change.
        (notebook_dir / "mylib.py").write_text("# a comment\n\n" + edited)
        execute(kc, "%deploy offset_of --name offset --no-mlflow")
    finally:
        (notebook_dir / "mylib.py").write_text(MYLIB)
        execute(kc, "importlib.reload(mylib)")
        cli("stop", "offset")


def test_a_failed_build_leaves_everything_as_it_was(kernel, safety_home, cli):
    _, kc = kernel
    execute(
        kc,
        "from sklearn.base import BaseEstimator, TransformerMixin\n"
        "from sklearn.pipeline import make_pipeline\n"
        "class Fussy(BaseEstimator, TransformerMixin):\n"
        "    def fit(self, X, y=None): return self\n"
        "    def transform(self, X): return X\n"
        "    def __setstate__(self, state):\n"
        "        import os\n"
        "        if os.environ.get('BENTOML_HOME'):\n"
        "            raise RuntimeError('refuses to load in the builder')\n"
        "        self.__dict__.update(state)\n"
        "fussy = make_pipeline(Fussy(), LogisticRegression()).fit(X, y)\n",
    )
    output = execute(kc, "%deploy fussy --no-mlflow", ok=False)
    assert "building the service failed" in output and "refuses to load" in output
    assert DeploymentStore(StateStore(safety_home / "state.db")).find("fussy") is None
    # An existing deployment stays serving its version when the next build fails.
    output = execute(kc, "%deploy fussy --name predict --no-mlflow", ok=False)
    assert "building the service failed" in output
    deployment = cli("status", "predict", "--json").json[0]
    assert deployment["status"] == "serving" and deployment["live_version"] == 1


def test_a_port_held_by_another_process_is_a_clear_error(kernel, cli):
    _, kc = kernel
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        output = execute(kc, f"%deploy predict --name held --port {port} --no-mlflow", ok=False)
    assert f"port {port}" in output and ("held by another process" in output or "in use" in output)
    assert f"pid {os.getpid()}" in output
    status = cli("status", "held", "--json")
    assert status.code != 0 or status.json[0]["status"] != "serving"


def test_an_interrupted_deploy_leaves_the_previous_version_serving(kernel, safety_home, cli):
    km, kc = kernel
    url = url_of(cli, "predict")
    # A version whose server takes seconds to load (only the server: NBDEPLOY_SERVER is set
    # in servers alone), so that the interrupt lands while the deploy waits for it.
    execute(
        kc,
        "import os, time\n"
        "class SlowToLoad:\n"
        "    def __setstate__(self, state):\n"
        "        if os.environ.get('NBDEPLOY_SERVER'):\n"
        "            time.sleep(10)\n"
        "        self.__dict__.update(state)\n"
        "slow = SlowToLoad()\n"
        "slow.state = 'some'  # pickle calls __setstate__ only when there is state\n"
        "def predict(rows: list[list[float]]) -> list[int]:\n"
        "    return [7 for _ in rows] if slow else []\n",
    )
    message_id = kc.execute("%deploy predict --no-mlflow")
    logs = safety_home / "deployments" / "predict" / "logs"
    before = set(logs.iterdir())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (set(logs.iterdir()) - before):
        time.sleep(0.05)  # the new server's log appears when it starts
    time.sleep(0.5)
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=120)
    while reply["parent_header"].get("msg_id") != message_id:
        reply = kc.get_shell_msg(timeout=120)
    assert reply["content"]["status"] == "error"
    deployment = cli("status", "predict", "--json").json[0]
    assert deployment["status"] == "serving" and deployment["live_version"] == 1
    assert post(url + "/predict", {"rows": [[0.9, 0.1, 0.1]]}) == (200, "[1]")
    servers = DeploymentStore(StateStore(safety_home / "state.db")).active_servers("predict")
    assert sorted((s.role, s.version) for s in servers) == [("live", 1), ("router", 0)]


def test_deploys_of_one_name_at_once_are_serialized_and_status_is_truthful(kernel, safety_home):
    namespace: dict = {"__name__": "__main__"}
    exec(
        "def twice(values: list[float]) -> list[float]:\n    return [v * 2 for v in values]\n"
        "def thrice(values: list[float]) -> list[float]:\n    return [v * 3 for v in values]\n",
        namespace,
    )
    finished: list[str] = []
    errors: list[Exception] = []

    def deploy(function_name: str) -> None:
        try:
            verbs.deploy_function(
                namespace[function_name],
                namespace=namespace,
                options=verbs.DeployOptions(name="racer", mlflow=False),
            )
            finished.append(function_name)
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=deploy, args=(n,)) for n in ("twice", "thrice")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert errors == [] and len(finished) == 2
    deployments = DeploymentStore(StateStore(safety_home / "state.db"))
    racer = deployments.reconcile("racer")
    live = deployments.version("racer", racer.live_version)
    assert live.function == finished[-1]  # the last deploy to finish is the one serving
    factor = 2 if finished[-1] == "twice" else 3
    code, body = post(racer.url + f"/{finished[-1]}", {"values": [1]})
    assert (code, json.loads(body)) == (200, [float(factor)])
    verbs.stop("racer")


def test_the_cell_magic_accepts_ipython_syntax_and_keyword_only_parameters(kernel, cli):
    _, kc = kernel
    execute(
        kc,
        "%%deploy kwonly --no-mlflow\n"
        "%time _ = 1\n"
        "def weigh(x: float, *, notebook: float = 2.0) -> float:\n"
        "    return x * notebook\n",
    )
    url = url_of(cli, "kwonly")
    assert post(url + "/weigh", {"x": 2, "notebook": 3}) == (200, "6.0")
    assert post(url + "/weigh", {"x": 2}) == (200, "4.0")


def test_prune_keeps_the_live_version_and_the_rollback_target(kernel, safety_home, cli):
    _, kc = kernel
    for factor in (2, 3, 4):
        execute(
            kc,
            f"def scaled(values: list[float]) -> list[float]:\n"
            f"    return [v * {factor} for v in values]\n",
        )
        execute(kc, "%deploy scaled --no-mlflow")
    deployments = DeploymentStore(StateStore(safety_home / "state.db"))
    versions = deployments.versions("scaled")
    assert [v.version for v in versions] == [1, 2, 3]
    oldest = versions[0]
    bentos = safety_home / "bentoml" / "bentos" / "nbd-scaled"
    assert (bentos / oldest.bento_tag.split(":")[1]).is_dir()
    pruned = cli("prune", "scaled", "--keep", "1", "--json")
    assert pruned.code == 0, pruned
    [report] = pruned.json
    assert report["removed"] == [1] and report["kept"] == [2, 3] and report["errors"] == []
    assert [v.version for v in deployments.versions("scaled")] == [2, 3]
    assert not Path(oldest.service_dir).exists()
    assert not (bentos / oldest.bento_tag.split(":")[1]).exists()
    url = url_of(cli, "scaled")
    assert answer(url + "/scaled", {"values": [1]}) == (200, [4.0])
    assert cli("rollback", "scaled").code == 0  # the rollback target survived the prune
    assert answer(url + "/scaled", {"values": [1]}) == (200, [3.0])


def test_an_mlflow_pyfunc_in_the_kernel_deploys_directly(kernel, cli, tmp_path):
    _, kc = kernel
    execute(
        kc,
        "import warnings, mlflow, mlflow.sklearn\n"
        f"mlflow.set_tracking_uri('sqlite:///{tmp_path / 'pyfunc.db'}')\n"
        "with warnings.catch_warnings(), mlflow.start_run():\n"
        "    warnings.simplefilter('ignore')\n"
        "    logged = mlflow.sklearn.log_model(clf, name='m', pip_requirements=['scikit-learn'])\n"
        "pyfunc_model = mlflow.pyfunc.load_model(logged.model_uri)\n"
        "mlflow.set_tracking_uri('')\n",
    )
    execute(kc, "%deploy pyfunc_model --reference X --no-mlflow")
    url = url_of(cli, "pyfunc-model")
    code, body = post(url + "/predict", {"rows": [[0.9, 0.1, 0.1], [0.1, 0.1, 0.1]]})
    assert (code, json.loads(body)) == (200, [1, 0])
    code, body = post(url + "/predict", {"rows": [[0.9]]})
    assert code == 400 and "expects 3" in body
