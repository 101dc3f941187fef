"""Benchmark: from a fitted model in a live kernel to a served answer, ``%deploy`` against
the steps a BentoML user writes by hand; and capturing a 1 GB object.

What is compared, and why
-------------------------
nbdeploy's promise in a notebook is that serving what the kernel holds is one line. It
should also be *quicker* than writing the BentoML steps by hand, and it must not choke on
large objects: a redeploy of an unchanged 1 GB object is recognised without saving it, and
capturing it does not copy it in the kernel's memory.

1. **Cold deploy, side by side.** Two fresh kernels (``jupyter_client``, each with its own
   temporary working folder, ``NBDEPLOY_HOME`` and ``BENTOML_HOME``) train the same
   ``RandomForestClassifier(n_estimators=50)`` on a synthetic 20-feature set. From the
   moment the fitted model exists to the first correct answer (a POST whose JSON equals
   ``model.predict`` of 8 training rows, computed in the kernel):

   Each side's notebook starts with its import cell, as users write notebooks
   (``%load_ext nbdeploy``; ``import bentoml``), then trains. ``%load_ext nbdeploy`` starts
   nbdeploy's launcher in the background (nbdeploy/deployment/runtime/launcher.py), which imports
   BentoML's serving stack and, as the notebook imports scikit-learn, scikit-learn, while the
   model trains; builds, example calls and servers are forked from it.

   - ``nbdeploy``: ``%deploy predict --reference X --no-mlflow`` of ``def predict(rows:
     list[list[float]]) -> list[int]`` (defined before the clock starts), then a POST to
     the address the deploy printed;
   - ``bentoml``: what BentoML's documentation has a user write:
     ``bentoml.sklearn.save_model("rf", model)``, a ``%%writefile service.py`` cell with a
     ``@bentoml.service`` class whose ``@bentoml.api predict`` uses
     ``bentoml.sklearn.load_model(BentoModel("rf:latest"))``, a bentofile-less
     ``bentoml.bentos.build(service="service:Handwritten", include=["service.py"],
     python={"packages": [...], "lock_packages": False})``, then ``bentoml serve TAG`` in a
     subprocess, POSTed every 50 ms until it answers correctly.

   Both build offline with the settings nbdeploy's builder uses
   (``BENTOML_ENABLE_FEATURES=no_image``, ``BENTOML_DO_NOT_TRACK=true``,
   ``PIP_NO_INDEX=1``). ``cold_deploy_vs_bentoml`` = nbdeploy / bentoml (goal <= 0.5). Each
   side's steps are timed from the kernel's output: nbdeploy's progress lines
   (``requirements:``, ``building``, ``starting``) split its deploy into capture + hash
   (+ write), building the bento (beside the probe, for new code), and starting the
   server; the BentoML side's cells are its steps. The probe (an example call in a fresh
   interpreter, as without a launcher) is timed again on its own afterwards.

   Also measured, without a goal: ``nbdeploy`` with ``%load_ext nbdeploy`` run after the
   model is fitted, inside the timed span, so that the deploy waits for a launcher that
   starts cold (``cold_deploy_fresh_launcher_vs_bentoml``).

2. **A 1 GB object.** In a third kernel, ``big = np.random.default_rng(0).random(125_000_000)``
   (1 GB of float64) and ``def lookup(rows: list[list[float]]) -> list[float]`` reading it:
   ``%deploy lookup --no-mlflow`` once (cold, timed and split into steps as above), then
   again unchanged: ``redeploy_unchanged_1gb_s`` (goal <= 2 s). During the cold deploy a
   thread in the kernel samples its RSS every 20 ms; ``deploy_peak_extra_mem_ratio`` =
   (peak RSS - RSS before the deploy) / ``big.nbytes`` (goal <= 0.3). The peak is the
   largest sample, or ``ru_maxrss`` (the kernel's lifetime peak) when the deploy raised it.
   Both deploys must then answer a POST with ``big``'s values.

Every server started is stopped (``nbdeploy stop`` with the run's ``NBDEPLOY_HOME``; the
``bentoml serve`` process tree), kernels are shut down and the temporary folders removed,
also when a measurement fails. Every process started carries a token in its environment;
any still alive at the end is ended and counted (``leftover_processes``).

Usage::

    .venv/bin/python bench/capture.py [--quick] [--json]

``--quick``: each side of the cold deploy once (and the fresh-launcher variant), the
unchanged 1 GB redeploy once (about two minutes on 2 cores); otherwise three cold deploys
of each side in rotating order and three unchanged redeploys, medians compared.
``--json``: the last line of stdout is
one JSON object with the results. Missing a goal does not change the exit status (this is
a measurement, not a test); failing to measure does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchkit import BenchError, base_environment, log
from benchkit import end_processes as _end_processes
from benchkit import marked_pids as _marked_pids
from benchkit import tail as _tail

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# The venv's bin folder: the directory of the interpreter running this script (not resolved:
# a venv's python is a symlink to the base interpreter).
NBDEPLOY = Path(PYTHON).parent / "nbdeploy"

KERNEL_START_TIMEOUT_S = 120.0
CELL_TIMEOUT_S = 300.0
ANSWER_TIMEOUT_S = 180.0
POLL_S = 0.05

GOAL_COLD_RATIO = 0.5  # nbdeploy / bentoml, at most
GOAL_REDEPLOY_S = 2.0  # unchanged 1 GB redeploy, at most
GOAL_MEM_RATIO = 0.3  # peak extra kernel memory / object size, at most

# BentoML settings for offline builds, as nbdeploy's builder sets them
# (nbdeploy/service/builder.py: bentoml_environment() and PIP_NO_INDEX).
BENTOML_OFFLINE = {
    "BENTOML_ENABLE_FEATURES": "no_image",
    "BENTOML_DO_NOT_TRACK": "true",
    "PIP_NO_INDEX": "1",
}

TRAIN = """
import json
import numpy as np
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

X, y = make_classification(n_samples=2000, n_features=20, random_state=0)
model = RandomForestClassifier(n_estimators=50, random_state=0).fit(X, y)
print(json.dumps({"rows": X[:8].tolist(), "expected": model.predict(X[:8]).tolist()}))
"""

PREDICT = """
def predict(rows: list[list[float]]) -> list[int]:
    return model.predict(np.asarray(rows)).tolist()
"""

BENTO_SAVE = """
import bentoml

saved = bentoml.sklearn.save_model("rf", model)
print(saved.tag)
"""

BENTO_SERVICE = """%%writefile service.py
import numpy as np
import bentoml
from bentoml.models import BentoModel


@bentoml.service
class Handwritten:
    model_ref = BentoModel("rf:latest")

    def __init__(self):
        self.model = bentoml.sklearn.load_model(self.model_ref)

    @bentoml.api
    def predict(self, rows: list[list[float]]) -> list[int]:
        return self.model.predict(np.asarray(rows)).tolist()
"""

BENTO_BUILD = """
bento = bentoml.bentos.build(
    service="service:Handwritten",
    include=["service.py"],
    python={"packages": ["scikit-learn", "numpy"], "lock_packages": False},
)
print(bento.tag)
"""

BIG = """
import json
import numpy as np

big = np.random.default_rng(0).random(125_000_000)


def lookup(rows: list[list[float]]) -> list[float]:
    return [float(big[int(r[0]) % big.size]) for r in rows]
"""

BIG_ROWS = [[7.0], [124_999_999.0], [300_000_000.0]]
BIG_EXPECTED = f"print(json.dumps([float(big[int(r[0]) % big.size]) for r in {BIG_ROWS!r}]))"

# Started before the deploy cell and stopped after it: the kernel's RSS every 20 ms.
SAMPLER_START = """
import resource as _bench_resource
import threading as _bench_threading

import psutil as _bench_psutil


_bench_process = _bench_psutil.Process()
_bench_samples = []
_bench_stop = _bench_threading.Event()


def _bench_sample():
    while not _bench_stop.is_set():
        _bench_samples.append(_bench_process.memory_info().rss)
        _bench_stop.wait(0.02)


_bench_before = {
    "rss_before": _bench_process.memory_info().rss,
    "maxrss_kib_before": _bench_resource.getrusage(_bench_resource.RUSAGE_SELF).ru_maxrss,
}
_bench_thread = _bench_threading.Thread(target=_bench_sample, daemon=True)
_bench_thread.start()
"""

SAMPLER_STOP = """
_bench_stop.set()
_bench_thread.join()
print(json.dumps({
    **_bench_before,
    "maxrss_kib_after": _bench_resource.getrusage(_bench_resource.RUSAGE_SELF).ru_maxrss,
    "peak_sampled": max(_bench_samples),
    "samples": len(_bench_samples),
    "nbytes": big.nbytes,
}))
"""

# nbdeploy's progress lines (nbdeploy/deployment/versions/build.py and verbs.py), in order.
MARKS = {
    "requirements": re.compile(r"^nbdeploy: requirements: "),
    "unchanged": re.compile(r"^nbdeploy: unchanged since version "),
    "building": re.compile(r"^nbdeploy: building "),
    "starting": re.compile(r"^nbdeploy: starting \S+ v\d+ (?:on|behind) "),
}
ADDRESS = re.compile(r"^nbdeploy: starting \S+ v\d+ (?:on|behind) ([\w.\-]+):(\d+)")


# --- kernels -------------------------------------------------------------------------------


@dataclass
class Cell:
    """A cell executed in a kernel: its wall time and its output lines, each with the time
    (seconds since the cell was sent) it arrived."""

    seconds: float
    output: str
    lines: list[tuple[float, str]] = field(default_factory=list)

    def first(self, pattern: re.Pattern[str]) -> tuple[float, str] | None:
        for arrived, line in self.lines:
            if pattern.search(line):
                return arrived, line
        return None


class Kernel:
    """A real IPython kernel (the venv's python3 kernel), as a notebook has."""

    def __init__(self, label: str, env: dict[str, str], cwd: Path) -> None:
        from jupyter_client.manager import start_new_kernel

        self.label = label
        self.manager, self.client = start_new_kernel(
            kernel_name="python3",
            env=env,
            cwd=str(cwd),
            startup_timeout=KERNEL_START_TIMEOUT_S,
        )

    def run(self, code: str, what: str, timeout: float = CELL_TIMEOUT_S) -> Cell:
        chunks: list[str] = []
        lines: list[tuple[float, str]] = []
        started = time.perf_counter()

        def collect(message: dict[str, Any]) -> None:
            arrived = time.perf_counter() - started
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                text = content["text"]
            elif kind in ("display_data", "execute_result"):
                text = content["data"].get("text/plain", "") + "\n"
            elif kind == "error":
                text = f"{content['ename']}: {content['evalue']}\n"
            else:
                return
            chunks.append(text)
            lines.extend((arrived, line) for line in text.splitlines())

        try:
            reply = self.client.execute_interactive(code, timeout=timeout, output_hook=collect)
        except TimeoutError:
            raise BenchError(
                f"{self.label}: {what} did not finish in {timeout:g} s\n"
                f"--- output (tail) ---\n{_tail(''.join(chunks)) or '(empty)'}"
            ) from None
        seconds = time.perf_counter() - started
        output = "".join(chunks)
        if reply["content"]["status"] != "ok":
            raise BenchError(
                f"{self.label}: {what} failed\n--- output (tail) ---\n{_tail(output) or '(empty)'}"
            )
        return Cell(seconds, output, lines)

    def json(self, code: str, what: str) -> Any:
        """Run a cell that prints one JSON value as its last line."""
        output = self.run(code, what).output
        try:
            return json.loads(output.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise BenchError(f"{self.label}: {what} printed no JSON:\n{_tail(output)}") from None

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.client.stop_channels()
        with contextlib.suppress(Exception):
            self.manager.shutdown_kernel(now=True)


# --- answers -------------------------------------------------------------------------------


def post(url: str, body: dict[str, Any], timeout: float = 30.0) -> tuple[int, str]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def check_answer(url: str, body: dict[str, Any], expected: Any, what: str) -> None:
    status, text = post(url, body)
    if status != 200 or json.loads(text) != expected:
        raise BenchError(f"{what}: {url} answered {status} {text[:300]!r}, expected {expected!r}")


def first_correct_answer(
    url: str,
    body: dict[str, Any],
    expected: Any,
    process: subprocess.Popen[bytes],
    log_path: Path,
) -> None:
    """POST every POLL_S until the answer is 200 and equals ``expected``."""
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(
                f"bentoml serve exited with {process.returncode} before answering\n"
                f"--- log (tail) ---\n{_tail(log_path.read_text(errors='replace'))}"
            )
        try:
            status, text = post(url, body, timeout=10)
            if status == 200 and json.loads(text) == expected:
                return
            last = f"{status} {text[:200]!r}"
        except (OSError, ValueError) as error:
            last = f"{type(error).__name__}: {error}"
        time.sleep(POLL_S)
    raise BenchError(f"{url}: no correct answer after {ANSWER_TIMEOUT_S:g} s (last: {last})")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def nbdeploy_stop(name: str, home: Path, env: dict[str, str]) -> None:
    """Stop a deployment from outside the kernel (works when the kernel is gone)."""
    if not (home / "state.db").exists():
        return
    subprocess.run(
        [str(NBDEPLOY), "stop", name],
        env={**env, "NBDEPLOY_HOME": str(home)},
        capture_output=True,
        timeout=120,
        check=False,
    )


def deploy_steps(cell: Cell, end: float | None = None) -> dict[str, float]:
    """Split a ``%deploy`` cell by nbdeploy's progress lines (seconds from the cell start)."""
    marks = {name: found[0] for name, pattern in MARKS.items() if (found := cell.first(pattern))}
    end = cell.seconds if end is None else end
    steps: dict[str, float] = {}
    if "requirements" in marks:
        steps["capture_hash_probe_requirements_s"] = marks["requirements"]
    if "unchanged" in marks:
        steps["reuse_and_check_server_s"] = end - marks["requirements"]
        return {k: round(v, 3) for k, v in steps.items()}
    if "building" in marks and marks["building"] < marks.get("requirements", 0.0):
        # New code: the version is written and built while the example call runs, and the
        # final requirements are known after both.
        steps = {"capture_hash_write_s": marks["building"]}
        if "starting" in marks:
            steps["build_beside_probe_s"] = marks["starting"] - marks["building"]
    elif "building" in marks and "requirements" in marks:
        steps["write_version_s"] = marks["building"] - marks["requirements"]
        if "starting" in marks:
            steps["build_bento_s"] = marks["starting"] - marks["building"]
    if "starting" in marks:
        steps["start_server_until_ready_s"] = end - marks["starting"]
    return {k: round(v, 3) for k, v in steps.items()}


def deploy_url(cell: Cell) -> str:
    found = cell.first(ADDRESS)
    if found is None:
        raise BenchError(f"%deploy printed no address:\n{_tail(cell.output)}")
    match = ADDRESS.search(found[1])
    assert match is not None
    return f"http://{match.group(1)}:{match.group(2)}"


# --- 1. cold deploy, side by side ----------------------------------------------------------


@dataclass
class ColdRun:
    seconds: float
    steps: dict[str, float]


def nbdeploy_cold(work: Path, token: str, probe_again: bool, load_first: bool) -> ColdRun:
    """``load_first``: ``%load_ext nbdeploy`` is the notebook's first cell, as users write
    it (the launcher warms up while the model trains); else it runs after the model is
    fitted, inside the timed span (the launcher starts cold with the deploy)."""
    home, cwd = work / "home", work / "notebook"
    cwd.mkdir(parents=True)
    env = {**base_environment(token), "NBDEPLOY_HOME": str(home)}
    kernel = Kernel("nbdeploy kernel", env, cwd)
    try:
        if load_first:
            kernel.run("%load_ext nbdeploy", "%load_ext nbdeploy")
        data = kernel.json(TRAIN, "training")
        kernel.run(PREDICT, "def predict")
        body = {"rows": data["rows"]}
        # The fitted model exists: the clock starts.
        started = time.perf_counter()
        steps: dict[str, Any] = {}
        if not load_first:
            load = kernel.run("%load_ext nbdeploy", "%load_ext nbdeploy")
            steps["load_ext_s"] = round(load.seconds, 3)
        deploy = kernel.run("%deploy predict --reference X --no-mlflow", "%deploy predict")
        answer_started = time.perf_counter()
        check_answer(deploy_url(deploy) + "/predict", body, data["expected"], "nbdeploy")
        finished = time.perf_counter()
        steps["deploy_cell_s"] = round(deploy.seconds, 3)
        steps.update(deploy_steps(deploy))
        steps["first_answer_s"] = round(finished - answer_started, 3)
        steps["probe_ran"] = (home / "deployments" / "predict" / "probes").is_dir()
        if probe_again:
            steps["probe_alone_again_s"] = time_probe(home, body, env)
        kernel.run("%deploy stop predict", "%deploy stop predict")
        return ColdRun(finished - started, steps)
    finally:
        kernel.shutdown()
        nbdeploy_stop("predict", home, env)
        launcher_stop(env)


def launcher_stop(env: dict[str, str]) -> None:
    """Stop the run's nbdeploy launcher (one per NBDEPLOY_HOME; it outlives kernels)."""
    subprocess.run(
        [PYTHON, "-c", "from nbdeploy.deployment.runtime import launcher; launcher.shutdown()"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )


def time_probe(home: Path, body: dict[str, Any], env: dict[str, str]) -> float:
    """The probe (the example call in a fresh interpreter) on a copy of the built version,
    timed on its own: its share of the first phase of the deploy."""
    versions = sorted((home / "deployments" / "predict" / "versions").iterdir())
    if not versions:
        raise BenchError(f"no version folder under {home}")
    copy = home.parent / "probe-copy"
    shutil.copytree(versions[-1], copy)
    (copy / "example.json").write_text(json.dumps(body))
    started = time.perf_counter()
    completed = subprocess.run(
        [PYTHON, "-m", "nbdeploy.service.probe", str(copy)],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    seconds = time.perf_counter() - started
    try:
        result = json.loads(completed.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise BenchError(f"the probe printed no result:\n{_tail(completed.stderr)}") from None
    if result.get("error"):
        raise BenchError(f"the probe failed again: {result['error']}")
    return round(seconds, 3)


def bentoml_cold(work: Path, token: str) -> ColdRun:
    cwd = work / "notebook"
    cwd.mkdir(parents=True)
    env = {**base_environment(token), "BENTOML_HOME": str(work / "bentoml"), **BENTOML_OFFLINE}
    kernel = Kernel("bentoml kernel", env, cwd)
    server: subprocess.Popen[bytes] | None = None
    log_path = work / "bentoml-serve.log"
    try:
        kernel.run("import bentoml", "import bentoml")  # the first cell, as users write it
        data = kernel.json(TRAIN, "training")
        body = {"rows": data["rows"]}
        # The fitted model exists: the clock starts.
        started = time.perf_counter()
        save = kernel.run(BENTO_SAVE, "bentoml.sklearn.save_model")
        service = kernel.run(BENTO_SERVICE, "%%writefile service.py")
        build = kernel.run(BENTO_BUILD, "bentoml.bentos.build")
        tag = build.output.strip().splitlines()[-1].strip()
        serve_started = time.perf_counter()
        port = free_port()
        with open(log_path, "ab") as handle:
            server = subprocess.Popen(
                [PYTHON, "-m", "bentoml", "serve", tag, "--host", "127.0.0.1", "--port", str(port)],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        first_correct_answer(
            f"http://127.0.0.1:{port}/predict", body, data["expected"], server, log_path
        )
        finished = time.perf_counter()
        steps = {
            "save_model_s": round(save.seconds, 3),
            "write_service_py_s": round(service.seconds, 3),
            "build_bento_s": round(build.seconds, 3),
            "serve_until_first_answer_s": round(finished - serve_started, 3),
        }
        return ColdRun(finished - started, steps)
    finally:
        if server is not None:
            stop_tree(server)
        kernel.shutdown()


def stop_tree(process: subprocess.Popen[bytes]) -> None:
    """Stop ``bentoml serve`` and every process it started (its workers may run in
    sessions of their own, out of reach of its process group)."""
    import psutil

    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.Error:
        tree = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    _end_processes([p.pid for p in tree if p.is_running()], grace=5.0)


def warm_up(token: str) -> None:
    """Read both sides' packages once (file caches), so that neither pays for it alone."""
    subprocess.run(
        [PYTHON, "-c", "import bentoml, sklearn.ensemble, nbdeploy.service.runtime"],
        env=base_environment(token),
        capture_output=True,
        timeout=180,
        check=True,
    )


# --- 2. a 1 GB object ----------------------------------------------------------------------


def big_object(work: Path, token: str, redeploys: int) -> dict[str, Any]:
    home, cwd = work / "home", work / "notebook"
    cwd.mkdir(parents=True)
    env = {**base_environment(token), "NBDEPLOY_HOME": str(home)}
    kernel = Kernel("1 GB kernel", env, cwd)
    try:
        kernel.run(BIG, "creating the 1 GB array")
        expected = kernel.json(BIG_EXPECTED, "the expected lookups")
        kernel.run("%load_ext nbdeploy", "%load_ext nbdeploy")
        kernel.run(SAMPLER_START, "starting the memory sampler")
        cold = kernel.run("%deploy lookup --no-mlflow", "%deploy lookup (cold)")
        memory = kernel.json(SAMPLER_STOP, "reading the memory samples")
        url = deploy_url(cold) + "/lookup"
        body = {"rows": BIG_ROWS}
        check_answer(url, body, expected, "lookup after the cold deploy")
        again: list[Cell] = []
        for _ in range(redeploys):
            cell = kernel.run("%deploy lookup --no-mlflow", "%deploy lookup (unchanged)")
            if cell.first(MARKS["unchanged"]) is None:
                raise BenchError(f"the second %deploy built again:\n{_tail(cell.output)}")
            check_answer(url, body, expected, "lookup after the unchanged redeploy")
            again.append(cell)
        kernel.run("%deploy stop lookup", "%deploy stop lookup")
    finally:
        kernel.shutdown()
        nbdeploy_stop("lookup", home, env)
        launcher_stop(env)
    probed = (home / "deployments" / "lookup" / "probes").is_dir()
    large = large_files(home)
    grew = memory["maxrss_kib_after"] > memory["maxrss_kib_before"]
    peak = max(memory["peak_sampled"], memory["maxrss_kib_after"] * 1024 if grew else 0)
    return {
        "cold_s": cold.seconds,
        "cold_steps": {**deploy_steps(cold), "probe_ran": probed},
        "redeploy_s": [cell.seconds for cell in again],
        "redeploy_steps": [deploy_steps(cell) for cell in again],
        "memory": {**memory, "peak_bytes": peak, "lifetime_peak_raised_by_deploy": grew},
        "large_files_mb": large,
    }


def large_files(home: Path, at_least: int = 10 * 2**20) -> dict[str, float]:
    """Files of 10 MiB or more that the deploys left in NBDEPLOY_HOME (one per inode: a
    hard link is not a copy), in MB: where the object's bytes were written."""
    found: dict[str, float] = {}
    inodes: set[tuple[int, int]] = set()
    for path in sorted(home.rglob("*")):
        info = path.lstat()
        if path.is_file() and info.st_size >= at_least and (info.st_dev, info.st_ino) not in inodes:
            inodes.add((info.st_dev, info.st_ino))
            found[str(path.relative_to(home))] = round(info.st_size / 1e6, 1)
    return found


# --- the run -------------------------------------------------------------------------------


@dataclass
class Results:
    quick: bool
    nbdeploy: list[ColdRun]
    bentoml: list[ColdRun]
    big: dict[str, Any]
    leftover_processes: int
    fresh: list[ColdRun] = field(default_factory=list)  # the launcher started by the deploy

    @property
    def nbdeploy_s(self) -> float:
        return statistics.median(run.seconds for run in self.nbdeploy)

    @property
    def fresh_ratio(self) -> float:
        """Not a goal: the deploy that starts the launcher itself, against BentoML."""
        return statistics.median(run.seconds for run in self.fresh) / self.bentoml_s

    @property
    def bentoml_s(self) -> float:
        return statistics.median(run.seconds for run in self.bentoml)

    @property
    def redeploy_s(self) -> float:
        return float(statistics.median(self.big["redeploy_s"]))

    @property
    def mem_ratio(self) -> float:
        memory = self.big["memory"]
        return float((memory["peak_bytes"] - memory["rss_before"]) / memory["nbytes"])

    def ratios(self) -> dict[str, tuple[float, float, bool]]:
        """name -> (value, goal, at most)."""
        return {
            "cold_deploy_vs_bentoml": (self.nbdeploy_s / self.bentoml_s, GOAL_COLD_RATIO, True),
            "redeploy_unchanged_1gb_s": (self.redeploy_s, GOAL_REDEPLOY_S, True),
            "deploy_peak_extra_mem_ratio": (self.mem_ratio, GOAL_MEM_RATIO, True),
        }

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            name: round(value, 4) for name, (value, _, _) in self.ratios().items()
        }
        memory = self.big["memory"]
        data.update(
            {
                "cold_deploy_fresh_launcher_vs_bentoml": round(self.fresh_ratio, 4),
                "nbdeploy_cold_deploy_s": round(self.nbdeploy_s, 3),
                "bentoml_cold_deploy_s": round(self.bentoml_s, 3),
                "samples_s": {
                    "nbdeploy": [round(run.seconds, 3) for run in self.nbdeploy],
                    "nbdeploy_fresh_launcher": [round(run.seconds, 3) for run in self.fresh],
                    "bentoml": [round(run.seconds, 3) for run in self.bentoml],
                },
                "steps": {
                    "nbdeploy": [run.steps for run in self.nbdeploy],
                    "nbdeploy_fresh_launcher": [run.steps for run in self.fresh],
                    "bentoml": [run.steps for run in self.bentoml],
                },
                "deploy_cold_1gb_s": round(self.big["cold_s"], 3),
                "deploy_cold_1gb_steps": self.big["cold_steps"],
                "redeploy_unchanged_1gb_samples_s": [round(s, 3) for s in self.big["redeploy_s"]],
                "redeploy_unchanged_1gb_steps": self.big["redeploy_steps"],
                "large_files_1gb_mb": self.big["large_files_mb"],
                "memory_1gb": {
                    "array_nbytes": memory["nbytes"],
                    "rss_before_bytes": memory["rss_before"],
                    "peak_rss_sampled_bytes": memory["peak_sampled"],
                    "peak_rss_bytes": memory["peak_bytes"],
                    "ru_maxrss_before_kib": memory["maxrss_kib_before"],
                    "ru_maxrss_after_kib": memory["maxrss_kib_after"],
                    "lifetime_peak_raised_by_deploy": memory["lifetime_peak_raised_by_deploy"],
                    "samples": memory["samples"],
                },
                "goals": {
                    name: f"{'<=' if at_most else '>='} {goal}"
                    for name, (_, goal, at_most) in self.ratios().items()
                },
                "repetitions": len(self.nbdeploy),
                "quick": self.quick,
                "leftover_processes": self.leftover_processes,
                "cpu_count": os.cpu_count(),
            }
        )
        return data


def run_benchmarks(quick: bool, work: Path, token: str) -> Results:
    repetitions = 1 if quick else 3
    log("warm-up: importing bentoml, scikit-learn and nbdeploy's runtime once")
    warm_up(token)
    nbdeploy: list[ColdRun] = []
    fresh: list[ColdRun] = []
    bentoml: list[ColdRun] = []
    sides: list[tuple[str, Callable[[Path, int], ColdRun], list[ColdRun]]] = [
        (
            "nbdeploy",
            lambda folder, i: nbdeploy_cold(folder, token, probe_again=i == 0, load_first=True),
            nbdeploy,
        ),
        ("bentoml", lambda folder, _i: bentoml_cold(folder, token), bentoml),
        (
            "nbdeploy-fresh-launcher",
            lambda folder, _i: nbdeploy_cold(folder, token, probe_again=False, load_first=False),
            fresh,
        ),
    ]
    for i in range(repetitions):
        # Alternate which side goes first, so that drifting load hits both alike.
        for name, measure, runs in sides if i % 2 == 0 else sides[::-1]:
            run = measure(work / f"{name}-{i}", i)
            runs.append(run)
            log(f"[{i + 1}/{repetitions}] cold deploy {name} {run.seconds:6.2f}s  {run.steps}")
    log("1 GB object: creating it in a kernel, deploying it cold, then unchanged")
    big = big_object(work / "big", token, redeploys=1 if quick else 3)
    log(f"  cold {big['cold_s']:.2f}s {big['cold_steps']}")
    log(f"  unchanged {[round(s, 2) for s in big['redeploy_s']]} {big['redeploy_steps']}")
    return Results(quick, nbdeploy, bentoml, big, leftover_processes=0, fresh=fresh)


def _step_line(step: str, value: float | bool) -> str:
    shown = f"{value!s:>7}" if isinstance(value, bool) else f"{value:>7.2f}"
    return f"{'':<26} {step:<36} {shown}"


def report(results: Results) -> str:
    mode = "quick" if results.quick else "full"
    lines = [
        f"nbdeploy capture benchmark ({mode}; {os.cpu_count()} CPUs)",
        "",
        "cold deploy, fitted RandomForest(50) in a live kernel -> first correct answer",
        f"{'system':<10} {'n':>2} {'median s':>9}   steps (first run)",
    ]
    for name, runs in (
        ("nbdeploy", results.nbdeploy),
        ("bentoml", results.bentoml),
        ("nbdeploy, launcher started by the deploy (%load_ext after the fit)", results.fresh),
    ):
        median = statistics.median(run.seconds for run in runs)
        lines.append(f"{name:<10} {len(runs):>2} {median:>9.2f}" if len(name) < 11 else name)
        if len(name) >= 11:
            lines.append(f"{'':<10} {len(runs):>2} {median:>9.2f}")
        lines += [_step_line(step, value) for step, value in runs[0].steps.items()]
    big, memory = results.big, results.big["memory"]
    lines += [
        "",
        "1 GB float64 array, %deploy lookup --no-mlflow",
        f"  cold deploy {big['cold_s']:.2f}s",
    ]
    lines += [_step_line(step, value) for step, value in big["cold_steps"].items()]
    lines.append("  unchanged redeploy " + ", ".join(f"{s:.2f}s" for s in big["redeploy_s"]))
    lines += [_step_line(step, value) for step, value in big["redeploy_steps"][0].items()]
    mib = 2**20
    lines.append(
        f"  kernel memory: RSS before {memory['rss_before'] / mib:.0f} MiB, peak sampled "
        f"{memory['peak_sampled'] / mib:.0f} MiB ({memory['samples']} samples), ru_maxrss "
        f"{memory['maxrss_kib_before'] / 1024:.0f} -> {memory['maxrss_kib_after'] / 1024:.0f} "
        f"MiB, array {memory['nbytes'] / mib:.0f} MiB"
    )
    lines.append("  files of 10 MiB or more in NBDEPLOY_HOME afterwards (one per inode):")
    lines += [f"    {size:>8.1f} MB  {path}" for path, size in big["large_files_mb"].items()]
    lines += ["", f"{'ratio':<30} {'value':>8}  {'goal':<7} verdict"]
    for name, (value, goal, at_most) in results.ratios().items():
        ok = value <= goal if at_most else value >= goal
        sign = "<=" if at_most else ">="
        lines.append(f"{name:<30} {value:>8.3f}  {sign} {goal:<4} {'PASS' if ok else 'MISS'}")
    lines.append(f"{'(fresh launcher, no goal)':<30} {results.fresh_ratio:>8.3f}")
    if results.leftover_processes:
        lines += ["", f"note: {results.leftover_processes} process(es) were left and ended"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="each measurement once (about 90 s)")
    parser.add_argument(
        "--json", action="store_true", help="end stdout with one JSON object of results"
    )
    args = parser.parse_args(argv)
    if not os.access(NBDEPLOY, os.X_OK):
        print(
            f"bench: {NBDEPLOY} not found: run this script with the venv's python "
            "(.venv/bin/python bench/capture.py)",
            file=sys.stderr,
        )
        return 2

    token = uuid.uuid4().hex
    work = Path(tempfile.mkdtemp(prefix="nbdeploy-bench-capture-"))
    try:
        results = run_benchmarks(args.quick, work, token)
    except (BenchError, subprocess.SubprocessError, OSError, RuntimeError) as error:
        print(f"bench: FAILED: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        leftovers = _marked_pids(token)
        if leftovers:
            log(f"  ! {len(leftovers)} process(es) of this benchmark still alive: ending them")
            _end_processes(leftovers)
        shutil.rmtree(work, ignore_errors=True)
    results.leftover_processes = len(leftovers)

    print(report(results))
    if args.json:
        print(json.dumps(results.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
