"""A pipeline step that deploys what its notebook produced, gated on its metrics
(``deploy:`` in pipeline.yaml; nbdeploy.pipeline.step_deploy and nbdeploy.pipeline.gate).

Integration: real kernels run the training notebook, real deploys serve it behind their
router; each test stops the deployments it made. Unit: the gate's parser and decisions."""

from __future__ import annotations

import contextlib
import json
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import LAST_HEADERS, post

import nbdeploy
from nbdeploy.deployment.verbs import versions_of
from nbdeploy.errors import NbdeployError
from nbdeploy.pipeline.gate import GateSyntaxError, evaluate, parse_gate

TRAIN_CELLS = [
    ("noise: float = 0.0  # share of training labels flipped\nseed: int = 1", ["parameters"]),
    textwrap.dedent(
        """\
        import numpy as np
        import nbdeploy
        from sklearn.datasets import make_classification
        from sklearn.linear_model import LogisticRegression

        X, y = make_classification(n_samples=400, n_features=4, n_informative=2,
                                   n_redundant=0, class_sep=2.0, random_state=0)
        X_train, y_train, X_test, y_test = X[:300], y[:300], X[300:], y[300:]
        flip = np.random.default_rng(seed).random(len(y_train)) < noise
        model = LogisticRegression().fit(X_train, np.where(flip, 1 - y_train, y_train))
        accuracy = float((model.predict(X_test) == y_test).mean())
        nbdeploy.log_metric("accuracy", accuracy)
        """
    ),
    textwrap.dedent(
        """\
        def predict(rows: list[list[float]]) -> list[int]:
            return [int(v) for v in model.predict(np.asarray(rows, dtype=float))]
        """
    ),
]
# Accuracy on the held-out rows by noise (LogisticRegression, the data above): 0.3 -> 0.89,
# 0.45 -> 0.54, 0.0 -> 0.98.
ROW = [[1.0, -1.0, 0.5, 0.5]]


def write_pipeline(folder: Path, deploy: dict[str, Any], name: str = "pipeline.yaml") -> Path:
    spec = {"steps": [{"name": "train", "notebook": "train.ipynb", "deploy": deploy}]}
    path = folder / name
    path.write_text(json.dumps(spec), encoding="utf-8")  # JSON is YAML
    return path


@pytest.fixture
def project(make_notebook: Callable[..., Path], tmp_path: Path, python_kernel: str) -> Path:
    folder = tmp_path / "project"
    make_notebook("train.ipynb", TRAIN_CELLS, kernel=python_kernel, folder=folder)
    return folder


@pytest.fixture
def stops() -> Iterator[list[str]]:
    """Names of the deployments a test made: stopped at its end, whatever happened."""
    names: list[str] = []
    yield names
    for name in names:
        with contextlib.suppress(NbdeployError):  # never deployed
            nbdeploy.stop(name)


def step_run(result: Any) -> dict[str, Any]:
    [step] = result.json["steps"]
    return dict(step["run"])


def live_version(name: str) -> tuple[int | None, str]:
    """(live version, the version whose answer the deployment's URL returns)."""
    [deployment] = nbdeploy.status(name)
    code, body = post(deployment.url + "/predict", {"rows": ROW})
    assert code == 200, body
    return deployment.live_version, LAST_HEADERS.get("x-nbdeploy-version", "")


# -- integration -------------------------------------------------------------------------
@pytest.mark.integration
def test_the_gate_deploys_better_models_only(project: Path, cli: Any, stops: list[str]) -> None:
    stops.append("gated")
    pipeline = write_pipeline(
        project,
        {"name": "gated", "function": "predict", "reference": "X_train",
         "when": "accuracy >= live.accuracy"},
    )  # fmt: skip

    first = cli("run", str(pipeline), "-p", "noise", "0.3", "--no-mlflow", "--json")
    assert first.code == 0, first
    run1 = step_run(first)
    [made] = run1["deployed"]
    assert made["deployed"] is True and made["version"] == 1
    assert made["note"] == "deployed: no live version to compare with"
    assert live_version("gated") == (1, "v1")
    assert versions_of("gated")[0].source["run_id"] == run1["id"]  # the step's run made v1

    worse = cli("run", str(pipeline), "-p", "noise", "0.45", "--no-mlflow", "--json")
    assert worse.code == 0, worse  # a gate that holds back a deploy is no failure
    run2 = step_run(worse)
    [held] = run2["deployed"]
    accuracy1, accuracy2 = run1["metrics"]["accuracy"], run2["metrics"]["accuracy"]
    assert accuracy2 < accuracy1
    assert held["deployed"] is False and held["version"] is None
    assert held["note"] == f"not deployed: accuracy {accuracy2:.6g} < live {accuracy1:.6g}"
    assert live_version("gated") == (1, "v1")
    shown = cli("runs", run2["id"])
    assert shown.code == 0 and f"gated: {held['note']}" in shown.out, shown
    again = cli("run", str(pipeline), "-p", "noise", "0.45", "--no-mlflow")
    assert again.code == 0, again  # not cached: the step runs and decides again
    assert held["note"] in again.out and "cached" not in again.out

    better = cli("run", str(pipeline), "-p", "noise", "0.0", "--no-mlflow", "--json")
    assert better.code == 0, better
    run3 = step_run(better)
    [made] = run3["deployed"]
    accuracy3 = run3["metrics"]["accuracy"]
    assert made["deployed"] is True and made["version"] == 2
    assert made["note"] == f"deployed: accuracy {accuracy3:.6g} >= live {accuracy1:.6g}"
    assert live_version("gated") == (2, "v2")

    records = {r["id"]: r for r in cli("runs", "--json").json}
    assert [d["version"] for d in records[run1["id"]]["deployed"]] == [1]
    assert [d["deployed"] for d in records[run2["id"]]["deployed"]] == [False]
    assert [d["version"] for d in records[run3["id"]]["deployed"]] == [2]

    # A deploy that fails fails the step with the deploy's message; v2 keeps serving.
    broken = write_pipeline(project, {"name": "gated", "function": "nope"}, "broken.yaml")
    failed = cli("run", str(broken), "--no-mlflow")
    assert failed.code == 1, failed
    assert "defines no function 'nope'" in failed.out + failed.err
    assert live_version("gated") == (2, "v2")


@pytest.mark.integration
def test_an_object_deployed_with_the_canary_strategy(
    project: Path, cli: Any, stops: list[str]
) -> None:
    stops.append("gated-model")
    pipeline = write_pipeline(
        project,
        {"name": "gated-model", "object": "model", "reference": "X_train",
         "strategy": "canary", "steps": [10, 100], "interval": 60, "when": "accuracy > 0.8"},
    )  # fmt: skip
    first = cli("run", str(pipeline), "-p", "noise", "0.3", "--no-mlflow", "--json")
    assert first.code == 0, first
    [made] = step_run(first)["deployed"]
    assert made["note"] == "deployed: accuracy 0.89 > 0.8"
    code, body = post(made["url"] + "/predict", {"rows": ROW})  # a model: /predict
    assert code == 200 and body.startswith("["), body

    second = cli("run", str(pipeline), "-p", "noise", "0.0", "--no-mlflow", "--json")
    assert second.code == 0, second
    [made] = step_run(second)["deployed"]
    assert made["version"] == 2
    [deployment] = nbdeploy.status("gated-model")
    assert deployment.strategy == "canary"
    shown = cli("status", "gated-model", "--json")
    assert shown.code == 0, shown
    assert "canary-started" in shown.out, shown  # v2 is rolled out as a canary
    held = cli("run", str(pipeline), "-p", "noise", "0.45", "--no-mlflow", "--json")
    assert held.code == 0, held
    [note] = step_run(held)["deployed"]
    assert note["note"] == "not deployed: accuracy 0.54 <= 0.8"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("deploy", "message"),
    [
        ({"function": "predict", "canary": True}, "unknown key(s) in `deploy`: canary"),
        ({"function": "predict", "object": "model"}, "both are given"),
        ({"name": "x"}, "neither is given"),
        ({"function": "predict", "when": "accuracy >= live.accuracy or 1"}, "`or` is not"),
        ({"function": "predict", "when": "__import__('os').system('true')"}, "unexpected"),
        ({"function": "predict", "strategy": "yolo"}, "'yolo' is not a strategy"),
    ],
)
def test_a_bad_deploy_block_is_refused_before_anything_runs(
    project: Path, cli: Any, deploy: dict[str, Any], message: str
) -> None:
    pipeline = write_pipeline(project, deploy)
    refused = cli("run", str(pipeline), "--no-mlflow")
    assert refused.code == 2, refused
    assert "pipeline.yaml, step 1 ('train'):" in refused.err and message in refused.err
    assert cli("runs", "--json").json == []  # nothing ran


@pytest.mark.integration
def test_a_kubernetes_job_refuses_a_deploy_step(project: Path, cli: Any) -> None:
    pipeline = write_pipeline(project, {"name": "churn", "function": "predict"})
    refused = cli("k8s", "--pipeline", str(pipeline))
    assert refused.code == 2, refused
    assert "step 'train': `deploy`" in refused.err and "no cluster-side deploy" in refused.err


# -- the gate ----------------------------------------------------------------------------
def test_gate_comparisons_and_notes() -> None:
    gate = parse_gate("accuracy >= live.accuracy")
    assert evaluate(gate, {"accuracy": 0.91}, {"accuracy": 0.93}).note == (
        "not deployed: accuracy 0.91 < live 0.93"
    )
    assert evaluate(gate, {"accuracy": 0.95}, {"accuracy": 0.93}).deploy
    first = evaluate(gate, {"accuracy": 0.5}, None)
    assert first.deploy and first.note == "deployed: no live version to compare with"
    both = parse_gate("accuracy>=live.accuracy and loss < 0.5 and live.loss >= 'val loss'")
    decision = evaluate(
        both, {"accuracy": 1, "loss": 0.7, "val loss": 0.1}, {"accuracy": 1, "loss": 0.2}
    )
    assert decision == type(decision)(False, "not deployed: loss 0.7 >= 0.5")
    numbers_only = parse_gate("f1 > 0.8")
    assert evaluate(numbers_only, {"f1": 0.9}, None).note == "deployed: f1 0.9 > 0.8"
    assert parse_gate("2 <= live.loss").comparisons[0].right.kind == "live"
    assert parse_gate("val/acc-top1 == live.val/acc-top1").comparisons[0].left.name == (
        "val/acc-top1"
    )


def test_a_missing_metric_says_which_and_where() -> None:
    gate = parse_gate("accuracy >= live.accuracy and f1 > live.f1")
    decision = evaluate(gate, {"accuracy": 0.9, "f1": None}, {"accuracy": 0.8}, "churn v1")
    assert not decision.deploy
    assert decision.note == (
        "not deployed: metric 'f1' is missing in this run; metric 'f1' is missing in churn v1's run"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("accuracy", "expected a comparison"),
        ("accuracy >=", "expected a comparison"),
        ("accuracy >= live.accuracy accuracy", "expected `and`"),
        ("not accuracy > 1", "`not` is not supported"),
        ("1 > 2", "compares two numbers"),
        ("accuracy > live.", "names no metric"),
        ("accuracy >= 0.9; import os", "unexpected ';"),
        ("model.predict(x) > 1", "unexpected '(x)"),
        ("accuracy => 1", "unexpected '=> 1'"),
        ("accuracy >= >= 1", "expected a metric or a number around '>='"),
    ],
)
def test_gate_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(GateSyntaxError) as raised:
        parse_gate(text)
    assert message in str(raised.value)
