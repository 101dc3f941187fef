"""Integration: a deployed model's metrics from its own request log. Traffic, latency and
errors are counted, missing values too, and drift is flagged on the shifted feature and on
the shifted predictions only, against the reference profiled at deploy time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import post

import nbdeploy
from nbdeploy.monitor.metrics import MetricsError, parse_window, snapshot

pytestmark = pytest.mark.integration

FEATURES = ["f0", "f1", "f2", "f3", "f4"]


@pytest.fixture
def watched(home: Path) -> Any:
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(7)
    X = pd.DataFrame(rng.normal(size=(3000, 5)), columns=FEATURES)
    X.loc[X.index % 10 == 0, "f1"] = np.nan  # f1 may be missing: served nulls are accepted
    y = 3.0 * X["f3"] + 0.1 * X["f0"]
    model = HistGradientBoostingRegressor(max_iter=50).fit(X, y)  # takes missing values
    result = nbdeploy.deploy(
        model, name="watched", namespace={"X": X, "model": model}, reference="X", mlflow=False
    )
    yield result
    nbdeploy.stop("watched")


def send(url: str, records: list[dict[str, Any]], batch: int = 20) -> list[int]:
    statuses = []
    for start in range(0, len(records), batch):
        status, _ = post(url + "/predict", {"rows": records[start : start + batch]})
        statuses.append(status)
    return statuses


def wait_logged(name: str, count: int) -> None:
    import time

    deadline = time.monotonic() + 20
    while len(nbdeploy.requests(name)) < count:
        assert time.monotonic() < deadline, "the request log did not catch up"
        time.sleep(0.1)


def test_drift_and_quality_are_flagged_where_they_are(watched: Any, cli: Any) -> None:
    assert (Path(watched.version.service_dir) / "drift-profile.json").exists()
    before = snapshot("watched", 600)
    assert before["requests"] == 0  # the deploy's own check of the version is not traffic
    rng = np.random.default_rng(11)
    window = rng.normal(size=(600, 5))
    window[:, 3] += 2.0  # f3 shifted by two standard deviations: predictions shift too
    records: list[dict[str, Any]] = [
        dict(zip(FEATURES, map(float, row), strict=True)) for row in window
    ]
    for record in records[:60]:
        record["f1"] = None  # 10% missing
    for record in records[60:90]:
        record["f2"] = 50.0  # 5% far outside the training range
    statuses = send(watched.url, records)
    assert set(statuses) == {200}
    assert post(watched.url + "/predict", {"rows": [{"f0": "x"}]})[0] == 400
    # f3 never lacked a value in training: a null there is the client's error, named.
    code, text = post(watched.url + "/predict", {"rows": [{**records[100], "f3": None}]})
    assert code == 400 and "f3" in text, text
    sent = len(statuses) + 2
    wait_logged("watched", 1 + sent)  # with the deploy's check

    data = snapshot("watched", 600)
    assert data["requests"] == before["requests"] + sent
    assert data["rows"] == before["rows"] + 602  # with the refused ones
    assert data["type_errors"]["f0"] == pytest.approx(1 / data["rows"])
    assert data["error_rate"] == 0.0
    assert data["client_error_rate"] == pytest.approx(2 / data["requests"])
    assert 0 < data["latency"]["p50"] <= data["latency"]["p95"] <= data["latency"]["p99"]
    statuses_by_feature = {f: d["status"] for f, d in data["drift"].items()}
    assert statuses_by_feature == {"f0": "ok", "f1": "ok", "f2": "ok", "f3": "drift", "f4": "ok"}
    assert data["missing"]["f1"] == pytest.approx(61 / data["rows"])  # the refused row too
    assert data["missing"]["f3"] == pytest.approx(2 / data["rows"])  # refused ones count
    assert data["out_of_range"]["f2"] == pytest.approx(30 / data["rows"])
    assert data["prediction"]["status"] == "drift"
    assert data["prediction"]["null_rate"] == 0.0
    assert data["versions"] == {
        f"v{watched.version.version}": {
            "requests": data["requests"],
            "error_rate": 0.0,
            "client_error_rate": pytest.approx(2 / data["requests"]),
            "p50": data["latency"]["p50"],
            "p95": data["latency"]["p95"],
            "p99": data["latency"]["p99"],
        }
    }
    assert sum(bucket["requests"] for bucket in data["series"]) == data["requests"]
    assert data["processes"]["memory_mb"] > 50
    assert data["log"]["dropped"] == 0

    done = cli("metrics", "watched", "--window", "10m", "--json")
    assert done.code == 0, done.err
    last = json.loads(done.out.strip().splitlines()[-1])
    for key in ("rows", "requests", "error_rate", "latency", "missing", "drift"):
        assert key in last
    assert last["drift"]["f3"]["status"] == "drift" and last["drift"]["f3"]["ks_p"] < 1e-6
    recent = cli("metrics", "watched", "--rows", "100", "--json")
    assert recent.code == 0, recent.err
    last_rows = json.loads(recent.out.strip().splitlines()[-1])
    # the last 100 rows: the refused one (it has no f1) and 99 sent after the 60 without f1
    assert last_rows["rows"] == 100
    assert last_rows["missing"]["f1"] == pytest.approx(0.01)
    text = cli("metrics", "watched")
    assert text.code == 0, text.err
    assert "f3" in text.out and "drift" in text.out and "requests" in text.out

    report = Path(watched.version.service_dir).parent / "report.html"
    done = cli("report", "watched", "-o", str(report), "--window", "10m", "--json")
    assert done.code == 0, done.err
    assert json.loads(done.out.strip().splitlines()[-1])["path"] == str(report.resolve())
    page = report.read_text()
    assert "<script" not in page and "f3" in page and "drift" in page


def test_unshifted_traffic_shows_no_drift(watched: Any) -> None:
    rng = np.random.default_rng(12)
    records = [
        dict(zip(FEATURES, map(float, row), strict=True)) for row in rng.normal(size=(400, 5))
    ]
    send(watched.url, records)
    wait_logged("watched", 20)
    data = snapshot("watched", 600)
    assert {d["status"] for d in data["drift"].values()} == {"ok"}
    assert data["prediction"]["status"] == "ok"
    assert data["drift_status"] == "ok"


def test_without_reference_or_traffic_metrics_say_so(home: Path, cli: Any) -> None:
    def double(values: list[float]) -> list[float]:
        return [2 * v for v in values]

    nbdeploy.deploy(double, name="plain", namespace={}, history=[], mlflow=False)
    try:
        data = snapshot("plain", 60)
        assert data["requests"] == 0 and data["rows"] == 0
        assert data["error_rate"] is None and data["latency"]["p99"] is None
        assert data["drift"] == {} and data["reference"] is False
        text = cli("metrics", "plain")
        assert "no reference for the live version" in text.out
    finally:
        nbdeploy.stop("plain")
    refused = cli("metrics", "plain", "--window", "soon")
    assert refused.code == 2 and "--window 'soon' is not a duration" in refused.err


def test_windows_are_parsed_with_their_units() -> None:
    assert parse_window("15m") == 900 and parse_window("1h") == 3600 and parse_window(30) == 30
    with pytest.raises(MetricsError):
        parse_window("0s")


def test_what_clients_send_never_breaks_monitoring(home: Path, cli: Any) -> None:
    """Rows of another width, a body that is not JSON and /predict_proba's lists of
    probabilities are counted per endpoint; drift is computed from the rows that fit."""
    import urllib.request

    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 4))
    model = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
    result = nbdeploy.deploy(
        model, name="clf", namespace={"X": X, "model": model}, reference="X", mlflow=False
    )
    try:
        url = result.deployment.url
        rows = rng.normal(size=(200, 4)).tolist()
        for start in range(0, 200, 20):
            assert post(url + "/predict", {"rows": rows[start : start + 20]})[0] == 200
        assert post(url + "/predict_proba", {"rows": rows[:5]})[0] == 200
        assert post(url + "/predict", {"rows": [[1.0, 2.0, 3.0]]})[0] == 400
        broken = urllib.request.Request(
            url + "/predict", data=b'{"rows": [[1, 2', headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(broken, timeout=30)
        assert refused.value.code == 400
        wait_logged("clf", 1 + 10 + 3)

        data = snapshot("clf", 600)
        assert data["requests"] == 13 and data["error_rate"] == 0.0
        assert data["client_error_rate"] == pytest.approx(2 / 13)
        assert set(data["endpoints"]) == {"/predict", "/predict_proba"}
        assert data["endpoints"]["/predict_proba"]["requests"] == 1
        assert data["main_endpoint"] == "/predict" and data["rows"] == 200
        assert {d["status"] for d in data["drift"].values()} == {"ok"}
        assert data["prediction"] is not None  # /predict's answers: one value per row
        findings = data["findings"]
        assert findings["/predict"]["misfit_rows"] == 1
        assert findings["/predict_proba"]["misfit_predictions"] == 5
        assert findings["/predict_proba"]["rows"] == 5
        text = cli("metrics", "clf", "--window", "10m")
        assert text.code == 0, text.err
        assert "1 rows that do not fit the reference" in text.out
        assert "answers for 5 rows not one value per row" in text.out
    finally:
        nbdeploy.stop("clf")
