"""Benchmark: serving a notebook model with nbdeploy against what a user would otherwise run.

Side by side in one run, the same scikit-learn model (trained here on a synthetic
20-feature set) and the same load (wrk on 127.0.0.1, single-row JSON requests, bounded in
time) against:

- ``nbdeploy``: the function deployed through nbdeploy's API exactly as ``%deploy`` does,
  as shipped (adaptive batching on for a rows->results function);
- ``nbdeploy-nobatch``: the same with ``batch=False``;
- ``bentoml``: a hand-written BentoML service with BentoML's defaults;
- ``mlflow``: ``mlflow models serve`` of the same model;
- ``fastapi``: a bare FastAPI + uvicorn app calling ``model.predict`` per request.

Models: LogisticRegression and RandomForestClassifier(n_estimators=100); concurrency 8 and
32. Ratios: ``nbdeploy_vs_bentoml_rps`` (RandomForest, c=8; goal >= 1.0) and
``batched_vs_fastapi_rps_c32`` (RandomForest, nbdeploy batched against FastAPI; goal >=
1.5). Also: time from deploy to the first answer (cold, in a fresh NBDEPLOY_HOME), a
redeploy of the unchanged function, and ``%load_ext nbdeploy`` (goal <= 0.5 s).

Usage: ``python bench/serve.py [--quick] [--json]``. ``--quick`` measures 5 s per point
(RandomForest at c=8 and c=32, LogisticRegression at c=8); the full run 10 s and every
combination. Needs ``wrk`` (Debian: ``apt-get install wrk``). A failed measurement (a server
not ready, wrk errors, non-2xx answers) exits non-zero; a missed goal does not.
"""

from __future__ import annotations

import argparse
import json
import linecache
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

PYTHON = sys.executable
ROW = [round(0.1 * ((i * 7) % 11) - 0.5, 3) for i in range(20)]
READY_TIMEOUT_S = 120.0


class BenchError(Exception):
    """A measurement failed: nothing is reported for it."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BenchError(f"server for {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise BenchError(f"{url} not ready after {READY_TIMEOUT_S:g} s")


def post(url: str, body: dict[str, Any]) -> tuple[int, str]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status, answer.read().decode()


def wrk(
    url: str, body: dict[str, Any], connections: int, seconds: int, work: Path
) -> dict[str, float]:
    script = work / f"post-{abs(hash(url))}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    command = [
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    out = completed.stdout
    if completed.returncode != 0 or "Requests/sec" not in out:
        raise BenchError(f"wrk failed against {url}: {completed.stderr or out}")
    if "Non-2xx or 3xx responses" in out or "Socket errors" in out:
        raise BenchError(f"errors under load at {url}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {
        "rps": round(rps, 1),
        "p50_ms": _percentile(out, "50%"),
        "p99_ms": _percentile(out, "99%"),
    }


def _percentile(out: str, label: str) -> float:
    match = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out)
    if match is None:
        raise BenchError(f"no {label} latency in wrk output")
    value, unit = float(match.group(1)), match.group(2)
    return round(value / 1000 if unit == "us" else value * 1000 if unit == "s" else value, 2)


def run_python(code: str, env: dict[str, str], timeout: float) -> None:
    completed = subprocess.run(
        [PYTHON, "-c", code], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if completed.returncode != 0:
        raise BenchError(f"{code[:80]}... failed:\n{completed.stderr[-1500:]}")


# -- the systems -------------------------------------------------------------------------
class Server:
    """A system under test: start() returns (url, body); stop() ends it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)

    def spawn(self, command: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        with open(log, "ab") as handle:
            self.process = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


NAMESPACES: dict[str, dict[str, Any]] = {}


class Nbdeploy(Server):
    def __init__(self, name: str, batch: bool, home: Path) -> None:
        super().__init__(name)
        self.batch, self.home = batch, home

    def start(self, model_path: Path, key: str) -> tuple[str, dict[str, Any]]:
        import joblib

        from nbdeploy.deployment import verbs

        source = (
            "def predict(rows: list[list[float]]) -> list[int]:\n"
            "    return model.predict(np.asarray(rows)).tolist()\n"
        )
        # One kernel namespace per model, as in a notebook: a redeploy sees the same object.
        namespace = NAMESPACES.setdefault(key, {"__name__": "__main__"})
        if "model" not in namespace:
            exec("import numpy as np", namespace)
            namespace["model"] = joblib.load(model_path)
        filename = f"<bench-{key}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), namespace)
        self.deployment = f"bench-{key}-{'b' if self.batch else 'n'}"
        result = verbs.deploy_function(
            namespace["predict"],
            namespace=namespace,
            history=["import numpy as np", source],
            options=verbs.DeployOptions(
                name=self.deployment, batch=None if self.batch else False, mlflow=False
            ),
        )
        return result.url + "/predict", {"rows": [ROW]}

    def stop(self) -> None:
        from nbdeploy.deployment import verbs

        verbs.stop(self.deployment)


BENTO_SERVICE = """
import numpy as np
import bentoml
from bentoml.models import BentoModel

@bentoml.service
class Handwritten:
    model_ref = BentoModel("bench-model:{key}")

    def __init__(self):
        self.model = bentoml.sklearn.load_model(self.model_ref)

    @bentoml.api
    def predict(self, rows: list[list[float]]) -> list[int]:
        return self.model.predict(np.asarray(rows)).tolist()
"""

FASTAPI_APP = """
import joblib
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

model = joblib.load({path!r})
app = FastAPI()

class Rows(BaseModel):
    rows: list[list[float]]

@app.get("/health")
def health():
    return {{"ok": True}}

@app.post("/predict")
def predict(body: Rows) -> list[int]:
    return model.predict(np.asarray(body.rows)).tolist()
"""


class Bentoml(Server):
    def __init__(self, work: Path) -> None:
        super().__init__("bentoml")
        self.work = work

    def start(self, model_path: Path, key: str) -> tuple[str, dict[str, Any]]:
        env = {
            **os.environ,
            "BENTOML_HOME": str(self.work / "bentoml-home"),
            "BENTOML_DO_NOT_TRACK": "true",
        }
        save = (
            "import bentoml, joblib; "
            f"bentoml.sklearn.save_model('bench-model:{key}', joblib.load({str(model_path)!r}))"
        )
        run_python(save, env, 120)
        folder = self.work / f"bento-{key}"
        folder.mkdir()
        (folder / "service.py").write_text(BENTO_SERVICE.format(key=key))
        port = free_port()
        self.spawn(
            [
                PYTHON,
                "-m",
                "bentoml",
                "serve",
                "service:Handwritten",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            folder,
            env,
            self.work / f"bentoml-{key}.log",
        )
        wait_ready(f"http://127.0.0.1:{port}/readyz", self.process)
        return f"http://127.0.0.1:{port}/predict", {"rows": [ROW]}


class Mlflow(Server):
    def __init__(self, work: Path) -> None:
        super().__init__("mlflow")
        self.work = work

    def start(self, model_path: Path, key: str) -> tuple[str, dict[str, Any]]:
        target = self.work / f"mlflow-{key}"
        # mlflow runs `uvicorn` by name: the venv's bin must be on PATH.
        path = f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": path}
        save = (
            "import joblib, mlflow.sklearn; "
            f"mlflow.sklearn.save_model(joblib.load({str(model_path)!r}), {str(target)!r}, "
            "pip_requirements=['scikit-learn'], "
            "skops_trusted_types=['sklearn.tree._tree.Tree'])"  # a model we just trained
        )
        run_python(save, env, 180)
        port = free_port()
        mlflow_cli = str(Path(PYTHON).parent / "mlflow")
        self.spawn(
            [
                mlflow_cli,
                "models",
                "serve",
                "-m",
                str(target),
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            self.work,
            env,
            self.work / f"mlflow-{key}.log",
        )
        wait_ready(f"http://127.0.0.1:{port}/ping", self.process)
        return f"http://127.0.0.1:{port}/invocations", {"inputs": [ROW]}


class Fastapi(Server):
    def __init__(self, work: Path) -> None:
        super().__init__("fastapi")
        self.work = work

    def start(self, model_path: Path, key: str) -> tuple[str, dict[str, Any]]:
        folder = self.work / f"fastapi-{key}"
        folder.mkdir()
        (folder / "app.py").write_text(FASTAPI_APP.format(path=str(model_path)))
        port = free_port()
        self.spawn(
            [
                PYTHON,
                "-m",
                "uvicorn",
                "app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            folder,
            dict(os.environ),
            self.work / f"fastapi-{key}.log",
        )
        wait_ready(f"http://127.0.0.1:{port}/health", self.process)
        return f"http://127.0.0.1:{port}/predict", {"rows": [ROW]}


# -- the run -----------------------------------------------------------------------------
def train(kind: str, path: Path) -> None:
    code = textwrap.dedent(f"""
        import joblib
        from sklearn.datasets import make_classification
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.linear_model import LogisticRegression
        X, y = make_classification(n_samples=2000, n_features=20, random_state=0)
        model = (RandomForestClassifier(n_estimators=100, random_state=0) if {kind!r} == "rf"
                 else LogisticRegression(max_iter=500))
        joblib.dump(model.fit(X, y), {str(path)!r})
    """)
    subprocess.run([PYTHON, "-c", code], check=True, timeout=300)


def load_ext_seconds() -> float:
    code = (
        "import time\nfrom IPython.testing.globalipapp import start_ipython\nip = start_ipython()\n"
        "t = time.perf_counter(); ip.run_line_magic('load_ext', 'nbdeploy')\n"
        "print(time.perf_counter() - t)"
    )
    out = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return round(float(out.stdout.strip().splitlines()[-1]), 4)


def deploy_timings(model_path: Path, work: Path) -> dict[str, float]:
    """Cold deploy to first answer in a fresh home, then an unchanged redeploy."""
    server = Nbdeploy("nbdeploy", True, work)
    started = time.perf_counter()
    url, body = server.start(model_path, "cold")
    status, _ = post(url, body)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    url, body = server.start(model_path, "cold")
    status_again, _ = post(url, body)
    again = time.perf_counter() - started
    server.stop()
    if (status, status_again) != (200, 200):
        raise BenchError("the deployed service did not answer 200")
    return {"deploy_cold_s": round(cold, 2), "redeploy_unchanged_s": round(again, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    seconds = 5 if args.quick else 10
    points = (
        [("rf", 8), ("rf", 32), ("lr", 8)]
        if args.quick
        else [("rf", 8), ("rf", 32), ("lr", 8), ("lr", 32)]
    )
    work = Path(tempfile.mkdtemp(prefix="nbdeploy-bench-serve-"))
    os.environ["NBDEPLOY_HOME"] = str(work / "home")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    results: dict[str, dict[str, dict[str, float]]] = {}
    report: dict[str, Any] = {"quick": args.quick, "seconds_per_point": seconds}
    try:
        models = {kind: work / f"{kind}.joblib" for kind in {kind for kind, _ in points}}
        for kind, path in models.items():
            train(kind, path)
        report.update(deploy_timings(models["rf"], work))
        report["load_ext_s"] = load_ext_seconds()
        factories: list[tuple[str, Callable[[], Server]]] = [
            ("nbdeploy", lambda: Nbdeploy("nbdeploy", True, work)),
            ("nbdeploy-nobatch", lambda: Nbdeploy("nbdeploy-nobatch", False, work)),
            ("bentoml", lambda: Bentoml(work)),
            ("mlflow", lambda: Mlflow(work)),
            ("fastapi", lambda: Fastapi(work)),
        ]
        for kind, path in models.items():
            for system, make in factories:
                server = make()
                try:
                    url, body = server.start(path, kind)
                    status, _ = post(url, body)
                    if status != 200:
                        raise BenchError(f"{system} answered {status}")
                    wrk(url, body, 8, 1, work)  # warm-up
                    for point_kind, connections in points:
                        if point_kind != kind:
                            continue
                        measured = wrk(url, body, connections, seconds, work)
                        results.setdefault(f"{kind}_c{connections}", {})[system] = measured
                        if not args.json:
                            print(f"{kind} c={connections:<3} {system:<17} {measured}", flush=True)
                finally:
                    server.stop()
    except (BenchError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rf8, rf32 = results["rf_c8"], results["rf_c32"]
    report["nbdeploy_vs_bentoml_rps"] = round(rf8["nbdeploy"]["rps"] / rf8["bentoml"]["rps"], 3)
    report["batched_vs_fastapi_rps_c32"] = round(
        rf32["nbdeploy"]["rps"] / rf32["fastapi"]["rps"], 3
    )
    report["points"] = results
    report["goals"] = {
        "nbdeploy_vs_bentoml_rps": ">= 1.0",
        "batched_vs_fastapi_rps_c32": ">= 1.5",
        "load_ext_s": "<= 0.5",
    }
    if not args.json:
        print()
        for name, goal, ok in (
            ("nbdeploy_vs_bentoml_rps", ">= 1.0", report["nbdeploy_vs_bentoml_rps"] >= 1.0),
            ("batched_vs_fastapi_rps_c32", ">= 1.5", report["batched_vs_fastapi_rps_c32"] >= 1.5),
            ("load_ext_s", "<= 0.5", report["load_ext_s"] <= 0.5),
        ):
            print(f"{name:<28} {report[name]:>8}  goal {goal:<7} {'PASS' if ok else 'MISS'}")
        print(
            f"deploy_cold_s {report['deploy_cold_s']}  "
            f"redeploy_unchanged_s {report['redeploy_unchanged_s']}"
        )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
