"""REST API of the Jupyter Server extension: latency of ``GET deployments`` with 200
deployments in the store, and the server's responsiveness while a deploy builds.

Starts a real ``jupyter server`` (token auth, the nbdeploy extension enabled) on 127.0.0.1
with a private NBDEPLOY_HOME, and measures side by side in the same run:

- ``GET nbdeploy/api/deployments`` (200 deployments) against Jupyter's own ``GET
  api/status`` and the CLI's ``nbdeploy status --json`` (wall time of the command);
- the slowest ``GET deployments`` answered while ``POST deployments`` builds and starts a
  real service (goal: within 100 ms), against the same GET when idle.

Goals: p99 of GET deployments <= 50 ms; a GET during a build within 100 ms. ``--quick``
takes about a minute; ``--json`` ends stdout with one JSON object (get_deployments_p99_ms,
get_during_build_ms, ...). Every process started carries a token and is ended at exit.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchkit import BenchError, base_environment, end_processes, log, marked_pids, tail

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
GOAL_P99_MS = 50.0
GOAL_DURING_BUILD_MS = 100.0
NOTEBOOK_CELLS = [
    ("n_rows: int = 200  # training rows\n", ["parameters"]),
    "import numpy as np\n"
    "from sklearn.linear_model import LogisticRegression\n"
    "rng = np.random.default_rng(0)\n"
    "X = rng.normal(size=(n_rows, 4))\n"
    "y = (X[:, 0] > 0).astype(int)\n"
    "model = LogisticRegression().fit(X, y)\n",
    (
        "def predict(rows: list[list[float]]) -> list[int]:\n"
        "    return model.predict(np.asarray(rows, dtype=float)).tolist()\n",
        ["nbdeploy:serve"],
    ),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def stats(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values), 2),
        "p99_ms": round(percentile(values, 99), 2),
        "max_ms": round(max(values), 2),
    }


class Client:
    """One keep-alive connection to the server, with its token."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any, float]:
        payload = json.dumps(body) if body is not None else ("{}" if method == "POST" else None)
        started = time.perf_counter()
        self.connection.request(method, path, body=payload, headers=self.headers)
        response = self.connection.getresponse()
        data = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        return response.status, json.loads(data) if data else None, elapsed

    def close(self) -> None:
        self.connection.close()


def populate(home: Path, count: int) -> None:
    """``count`` deployments in the state store (stopped, as after a restart)."""
    code = (
        "import sys\n"
        "from nbdeploy.deployment.store import DeploymentStore\n"
        "from nbdeploy.store import default_store\n"
        "store = DeploymentStore(default_store())\n"
        f"for i in range({count}):\n"
        "    store.ensure(f'model-{i:03d}', '127.0.0.1', 20000 + i)\n"
    )
    env = {**os.environ, "NBDEPLOY_HOME": str(home)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


def start_server(root: Path, env: dict[str, str], token: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    command = [
        str(VENV_BIN / "jupyter"),
        "server",
        "--no-browser",
        "--allow-root",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
        "--ServerApp.jpserver_extensions=nbdeploy=True",
    ]
    log_file = open(root.parent / "server.log", "w", encoding="utf-8")  # noqa: SIM115
    process = subprocess.Popen(
        command, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(
                "jupyter server exited:\n" + tail((root.parent / "server.log").read_text())
            )
        try:
            client = Client(port, token)
            code, _, _ = client.request("GET", "/api/status")
            client.close()
            if code == 200:
                return process, port
        except OSError:
            pass
        time.sleep(0.2)
    raise BenchError("jupyter server did not answer /api/status within 60 s")


def measure_gets(client: Client, path: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        code, _, elapsed = client.request("GET", path)
        if code != 200:
            raise BenchError(f"GET {path}: {code}")
        times.append(elapsed)
    return times


def cli_status(env: dict[str, str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        completed = subprocess.run(
            [str(VENV_BIN / "nbdeploy"), "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        times.append((time.perf_counter() - started) * 1000)
        if completed.returncode not in (0, 1):
            raise BenchError("nbdeploy status --json failed:\n" + tail(completed.stderr))
    return times


def during_build(port: int, token: str, root: Path, timeout: float) -> dict[str, Any]:
    """POST a deploy, then GET deployments every 50 ms while its operation runs."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import notebook_json

    (root / "model.ipynb").write_text(json.dumps(notebook_json(NOTEBOOK_CELLS)), "utf-8")
    client = Client(port, token)
    poller = Client(port, token)
    body = {"path": "model.ipynb", "name": "bench-lab", "mlflow": False}
    code, started, _ = client.request("POST", "/nbdeploy/api/deployments", body)
    if code != 202:
        raise BenchError(f"POST deployments: {code} {started}")
    operation = started["operation"]["id"]
    times: list[float] = []
    baseline: list[float] = []
    began = time.monotonic()
    state: dict[str, Any] = {}
    while time.monotonic() - began < timeout:
        _, state, _ = poller.request("GET", f"/nbdeploy/api/operations/{operation}")
        if state["status"] != "running":
            break
        code, _, elapsed = client.request("GET", "/nbdeploy/api/deployments")
        if code != 200:
            raise BenchError(f"GET deployments during the build: {code}")
        times.append(elapsed)
        code, _, elapsed = client.request("GET", "/api/status")
        baseline.append(elapsed)
        time.sleep(0.05)
    build_seconds = time.monotonic() - began
    if state.get("status") != "succeeded":
        raise BenchError(f"the deploy did not succeed: {json.dumps(state)[:2000]}")
    code, stopped, _ = client.request("POST", "/nbdeploy/api/deployments/bench-lab/stop")
    if code != 200 or stopped["status"] != "stopped":
        raise BenchError(f"POST stop: {code} {stopped}")
    client.close()
    poller.close()
    if not times:
        raise BenchError("the deploy ended before any GET was made")
    return {
        "gets": stats(times),
        "jupyter_api_status": stats(baseline),
        "build_seconds": round(build_seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (about a minute)")
    parser.add_argument("--json", action="store_true", help="end with one JSON object")
    parser.add_argument("--deployments", type=int, default=200)
    args = parser.parse_args(argv)
    gets = 300 if args.quick else 2000
    cli_runs = 3 if args.quick else 8

    token = uuid.uuid4().hex
    env = base_environment(token)
    result: dict[str, Any] = {"quick": args.quick, "deployments": args.deployments}
    with tempfile.TemporaryDirectory(prefix="nbdeploy-bench-lab-") as scratch:
        home = Path(scratch) / "home"
        root = Path(scratch) / "root"
        root.mkdir()
        env["NBDEPLOY_HOME"] = str(home)
        env["JUPYTER_RUNTIME_DIR"] = str(Path(scratch) / "runtime")
        process = None
        try:
            log(f"populating {args.deployments} deployments")
            populate(home, args.deployments)
            log("starting jupyter server")
            process, port = start_server(root, env, token)
            client = Client(port, token)
            measure_gets(client, "/nbdeploy/api/deployments", 20)  # warm-up: imports, caches
            measure_gets(client, "/api/status", 20)
            log(f"GET deployments x{gets}, GET /api/status x{gets}")
            api = stats(measure_gets(client, "/nbdeploy/api/deployments", gets))
            status = stats(measure_gets(client, "/api/status", gets))
            _, listed, _ = client.request("GET", "/nbdeploy/api/deployments")
            if len(listed) != args.deployments:
                raise BenchError(f"GET deployments listed {len(listed)}")
            client.close()
            log(f"nbdeploy status --json x{cli_runs}")
            cli = stats(cli_status(env, cli_runs))
            log("deploying a notebook through the API while polling GET deployments")
            build = during_build(port, token, root, timeout=300)
        finally:
            if process is not None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
            end_processes(marked_pids(token))
    result.update(
        {
            "get_deployments": api,
            "jupyter_api_status": status,
            "cli_status_json": cli,
            "during_build": build,
            "get_deployments_p99_ms": api["p99_ms"],
            "get_during_build_ms": build["gets"]["max_ms"],
            "ratio_p99_vs_jupyter_status": round(api["p99_ms"] / status["p99_ms"], 2),
            "ratio_cli_wall_vs_api_p50": round(cli["p50_ms"] / api["p50_ms"], 1),
            "goal_p99_met": api["p99_ms"] <= GOAL_P99_MS,
            "goal_during_build_met": build["gets"]["max_ms"] <= GOAL_DURING_BUILD_MS,
        }
    )
    print(f"GET deployments ({args.deployments} deployments), {api['n']} requests:")
    print(f"  p50 {api['p50_ms']} ms, p99 {api['p99_ms']} ms (goal <= {GOAL_P99_MS:g} ms)")
    print(f"  Jupyter GET /api/status: p50 {status['p50_ms']} ms, p99 {status['p99_ms']} ms")
    print(f"  ratio p99 / Jupyter's /api/status p99: {result['ratio_p99_vs_jupyter_status']}x")
    print(
        f"  nbdeploy status --json (CLI, wall): p50 {cli['p50_ms']} ms = "
        f"{result['ratio_cli_wall_vs_api_p50']}x the API's p50"
    )
    print(
        f"While a deploy builds ({build['build_seconds']} s, {build['gets']['n']} GETs): "
        f"slowest GET deployments {build['gets']['max_ms']} ms, p50 {build['gets']['p50_ms']} "
        f"ms (goal <= {GOAL_DURING_BUILD_MS:g} ms); Jupyter's /api/status meanwhile: slowest "
        f"{build['jupyter_api_status']['max_ms']} ms, "
        f"p50 {build['jupyter_api_status']['p50_ms']} ms"
    )
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        log(f"bench/lab.py: {error}")
        sys.exit(1)
