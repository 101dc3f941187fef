"""Benchmark: a deployment under steady load while its processes are killed (kill -9), with
and without an owner that heals them.

What is measured, and why
-------------------------
nbdeploy's daemon owns every process of a deployment: it holds the router's listening
socket across restarts, waits on the version servers, restarts what dies with backoff, and
a new daemon adopts what survived the old one. This benchmark shows what that is worth to
a client, as a chaos test would:

1. **nbdeploy.** A numpy scorer is deployed twice with the Python API (v2 live, v1 kept
   warm as a standby). A bounded client loop sends about 150 requests/s (8 threads with
   kept-alive connections, 5 s timeout) to the deployment's address for 60 s (``--quick``)
   or 5 min. Every 10 s one nbdeploy process is killed with SIGKILL, chosen at random among
   the router, the live version's leader, one of its workers and the daemon (each kind once
   per round of four, in a random order). Every second
   ``nbdeploy.status`` is read just before and just after one request: status is
   *truthful* when a read says serving and the answer comes from the version it says
   answers (the live one, or the warm standby while the live one restarts; while it says
   the live one is starting again, either), or no answer came and it says not serving, or
   recovering (a process of the deployment is down).
2. **The alternative a user would pick:** ``bentoml serve`` of the same bento on a port of
   its own, with the same load for as long, and the same kills (its arbiter, or one of the
   processes of its session: a worker, which outlives a killed arbiter). Nothing restarts
   what dies.

Reported: ``requests``, ``failed_requests``, ``failed_share`` (goal <= 0.5%),
``max_outage_s`` (the longest time during which every request sent failed; goal <= 1.0),
``recoveries`` (kills after which the killed role ran again and requests succeeded within
10 s), ``orphans_after_stop`` (processes of the deployment still alive, or its ports still
answering, after ``nbdeploy stop`` and the daemon's shutdown; for bentoml serve, its
processes alive 5 s after a Ctrl-C, SIGINT to its process group; goal 0) and
``status_truthful`` (share of samples; goal 100%), for both sides, with the ratios.
``--json`` ends stdout with one JSON object of these.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchkit import TOKEN_ENV, BenchError, end_processes, log, marked_pids

NAME = "chaos"
RATE = 150.0
THREADS = 8
KILL_EVERY_S = 10.0
RECOVERY_LIMIT_S = 10.0
NOTEBOOK = """
import numpy as np

WEIGHTS = np.linspace(-1.0, 1.0, 20)
X = np.random.default_rng(0).normal(size=(64, 20))

def predict(rows: list[list[float]]) -> list[float]:
    return (np.asarray(rows, dtype=float) @ (WEIGHTS * FACTOR)).tolist()
"""
BODY = json.dumps({"rows": [[0.5] * 20]}).encode()


@dataclass
class Outcome:
    sent: float
    ok: bool
    version: str | None


@dataclass
class Side:
    """What one side (nbdeploy, or the alternative) measured."""

    outcomes: list[Outcome] = field(default_factory=list)
    kills: list[dict[str, Any]] = field(default_factory=list)
    samples: list[bool] = field(default_factory=list)
    untruthful: list[dict[str, Any]] = field(default_factory=list)  # what status said, and saw
    orphans: int = 0

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.outcomes, key=lambda o: o.sent)
        failed = sum(not o.ok for o in ordered)
        return {
            "requests": len(ordered),
            "failed_requests": failed,
            "failed_share": round(failed / len(ordered), 5) if ordered else None,
            "max_outage_s": round(max_outage(ordered), 3),
            "kills": len(self.kills),
            "recoveries": sum(bool(k.get("recovered")) for k in self.kills),
            "kills_by_kind": _count(k["kind"] for k in self.kills),
            "orphans_after_stop": self.orphans,
            "status_truthful": (
                round(sum(self.samples) / len(self.samples), 4) if self.samples else None
            ),
            "untruthful_samples": self.untruthful[:10],
        }


def _count(kinds: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for kind in kinds:
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def max_outage(ordered: list[Outcome]) -> float:
    """The longest span from a failed request's sending to the next successful one's."""
    longest, since = 0.0, None
    for outcome in ordered:
        if not outcome.ok and since is None:
            since = outcome.sent
        elif outcome.ok and since is not None:
            longest, since = max(longest, outcome.sent - since), None
    if since is not None and ordered:
        longest = max(longest, ordered[-1].sent - since)
    return longest


class LoadLoop:
    """About ``RATE`` requests/s from ``THREADS`` threads, each on a kept-alive connection
    (a new one after any error), every outcome kept; bounded by ``stop``."""

    def __init__(self, port: int, path: str, side: Side) -> None:
        self.port, self.path, self.side = port, path, side
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(THREADS)]

    def _loop(self) -> None:
        interval = THREADS / RATE
        connection: http.client.HTTPConnection | None = None
        next_at = time.monotonic() + random.random() * interval
        while not self.stopping.is_set():
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            sent = time.time()
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("POST", self.path, BODY, {"Content-Type": "application/json"})
                answer = connection.getresponse()
                answer.read()
                ok = answer.status == 200
                version = answer.getheader("X-Nbdeploy-Version")
                if answer.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException):
                ok, version = False, None
                with contextlib.suppress(Exception):
                    if connection is not None:
                        connection.close()
                connection = None
            self.side.outcomes.append(Outcome(sent, ok, version))
        if connection is not None:
            connection.close()

    def __enter__(self) -> LoadLoop:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)


def answered_since(side: Side, moment: float, count: int = 5) -> bool:
    return sum(o.ok and o.sent > moment for o in list(side.outcomes)) >= count


# -- nbdeploy ---------------------------------------------------------------------------------
def deploy(factor: float) -> Any:
    import nbdeploy

    namespace: dict[str, Any] = {"__name__": "__main__", "FACTOR": factor}
    exec(NOTEBOOK, namespace)
    return nbdeploy.deploy(
        namespace["predict"], name=NAME, mlflow=False, reference="X", keep_warm=3600
    )


def nbdeploy_targets() -> dict[str, Callable[[], int | None]]:
    """How to find a process of each kind to kill, now."""
    import psutil

    from nbdeploy.deployment.runtime import client

    def role(wanted: str) -> int | None:
        import nbdeploy

        [deployment] = nbdeploy.status(NAME)
        return next((s.pid for s in deployment.servers if s.role == wanted), None)

    def worker() -> int | None:
        leader = role("live")
        if leader is None:
            return None
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(leader).children()
            return children[0].pid if children else None
        return None

    def daemon() -> int | None:
        answer = client.ping()
        return int(answer["pid"]) if answer else None

    return {"router": lambda: role("router"), "leader": lambda: role("live"),
            "worker": worker, "daemon": daemon}  # fmt: skip


def sample_status(side: Side, port: int, stopping: threading.Event) -> None:
    """Once a second: does status name the version that answers? One request is bracketed
    by two reads of status (the truth at the request's moment lies between them): the
    sample is truthful when the answer agrees with either read."""
    import nbdeploy

    def read() -> Any:
        try:
            [deployment] = nbdeploy.status(NAME)
            return deployment
        except Exception:  # status itself failing is not truthful
            return None

    def agrees(deployment: Any, answer: str | None) -> bool:
        if deployment is None:
            return False
        serving = deployment.status == "serving"
        if answer is None:  # a request lost as a process died: status must say it restarts
            return not serving or deployment.recovering
        starting = any(s.role == "live" and s.status == "starting" for s in deployment.servers)
        if serving and starting and answer == f"v{deployment.live_version}":
            return True  # "v2 starting, v1 answers": the router takes v2 again once it is up
        return serving and answer == f"v{deployment.answering_version}"

    while not stopping.wait(1.0):
        before = read()
        answer = one_request(port, "/predict")
        after = read()
        truthful = agrees(before, answer) or agrees(after, answer)
        side.samples.append(truthful)
        if not truthful:
            kills = [k for k in side.kills if k.get("at")]
            side.untruthful.append(
                {
                    "at": round(time.time(), 2),
                    "status": after.status if after else None,
                    "answering": after.answering_version if after else None,
                    "answered_by": answer,
                    "last_kill": kills[-1]["kind"] if kills else None,
                    "since_kill_s": round(time.time() - kills[-1]["at"], 2) if kills else None,
                }
            )


def one_request(port: int, path: str) -> str | None:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("POST", path, BODY, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        connection.close()
        return answer.getheader("X-Nbdeploy-Version") or "" if answer.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None


def kill_loop(
    side: Side,
    targets: dict[str, Callable[[], int | None]],
    duration: float,
    seed: int,
) -> None:
    """Every ``KILL_EVERY_S``: one process of a kind chosen at random, SIGKILL; then watch
    for the kind to run again and requests to succeed."""
    chooser = random.Random(seed)
    order: list[str] = []
    deadline = time.monotonic() + duration
    while time.monotonic() + KILL_EVERY_S < deadline:
        time.sleep(KILL_EVERY_S)
        if not order:  # every kind once per round, in a random order: a balanced mix
            order = chooser.sample(sorted(targets), len(targets))
        kind = order.pop()
        pid = _quietly(targets[kind])
        if pid is None:
            side.kills.append({"kind": kind, "pid": None, "recovered": False})
            continue
        moment = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        log(f"  killed the {kind} (pid {pid})")
        kill = {"kind": kind, "pid": pid, "at": moment, "recovered": False}
        side.kills.append(kill)
        until = time.monotonic() + RECOVERY_LIMIT_S
        while time.monotonic() < until:
            again = _quietly(targets[kind])
            if again not in (None, pid) and answered_since(side, moment):
                kill["recovered"] = True
                kill["seconds"] = round(time.time() - moment, 2)
                break
            time.sleep(0.1)


def _quietly(find: Callable[[], int | None]) -> int | None:
    try:
        return find()
    except Exception:
        return None


def run_nbdeploy(duration: float, seed: int) -> tuple[Side, str]:
    import nbdeploy
    from nbdeploy.deployment.runtime import client

    log("nbdeploy: deploying v1, then v2 (v1 warm as standby)")
    deploy(1.0)
    result = deploy(2.0)
    port = result.deployment.port
    bento = result.version.bento_tag
    side = Side()
    sampling = threading.Event()
    sampler = threading.Thread(target=sample_status, args=(side, port, sampling), daemon=True)
    log(f"nbdeploy: {duration:g} s of load, a kill every {KILL_EVERY_S:g} s")
    with LoadLoop(port, "/predict", side):
        sampler.start()
        kill_loop(side, nbdeploy_targets(), duration, seed)
        sampling.set()
        sampler.join(timeout=30)
    folder = str(Path(os.environ["NBDEPLOY_HOME"]) / "deployments" / NAME)
    ports = {s.port for s in nbdeploy.status(NAME)[0].servers}
    nbdeploy.stop(NAME)
    client.shutdown()
    side.orphans = count_orphans(folder, ports | {port})
    return side, bento


def count_orphans(folder: str, ports: set[int]) -> int:
    import psutil

    from nbdeploy.deployment.runtime.processes import MARKER_ENV

    left = 0
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(MARKER_ENV, "").startswith(folder):
                left += 1
    for port in ports:
        with socket.socket() as probe:
            probe.settimeout(0.5)
            left += int(probe.connect_ex(("127.0.0.1", port)) == 0)
    return left


# -- the alternative: bentoml serve, unsupervised ------------------------------------------------
def run_bentoml(bento: str, duration: float, seed: int, work: Path) -> Side:
    import psutil

    from nbdeploy.deployment.runtime.processes import free_port, probe
    from nbdeploy.service.builder import bentoml_environment

    port = free_port()
    log_path = work / "bentoml-serve.log"
    environment = {**os.environ, **bentoml_environment()}
    bentoml_command = str(Path(sys.executable).with_name("bentoml"))
    with open(log_path, "ab") as output:
        server = subprocess.Popen(
            [bentoml_command, "serve", bento, "--host", "127.0.0.1", "--port", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while not probe(f"http://127.0.0.1:{port}/readyz"):
        if time.monotonic() > deadline or server.poll() is not None:
            raise BenchError(f"bentoml serve did not start; see {log_path}")
        time.sleep(0.2)
    side = Side()

    known = {server.pid}  # bentoml serve and every process it started, seen so far

    def group() -> list[int]:
        """bentoml serve's processes that run: a worker outlives a killed arbiter (and it
        sets its workers in process groups of their own)."""
        alive = []
        for pid in sorted(known):
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                if process.status() == psutil.STATUS_ZOMBIE:
                    continue
                alive.append(pid)
                known.update(child.pid for child in process.children(recursive=True))
        return sorted(set(alive) | {pid for pid in known if _alive(pid)})

    def arbiter() -> int | None:
        return server.pid if server.poll() is None else None

    def worker() -> int | None:
        pids = [pid for pid in group() if pid != server.pid]
        return pids[0] if pids else None

    group()  # its workers, known before anything is killed
    log(f"bentoml serve: {duration:g} s of load, a kill every {KILL_EVERY_S:g} s")
    try:
        with LoadLoop(port, "/predict", side):
            kill_loop(side, {"arbiter": arbiter, "worker": worker}, duration, seed)
        # Stopped as a user stops it: Ctrl-C in its terminal (SIGINT to its process group).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGINT)
        time.sleep(5.0)
        side.orphans = len(group())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        for pid in group():  # the orphans, counted above
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        server.wait(timeout=30)
    return side


def _alive(pid: int) -> bool:
    import psutil

    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    return False


# -- report -----------------------------------------------------------------------------------
GOALS = {
    "failed_share": (0.005, "<="),
    "max_outage_s": (1.0, "<="),
    "orphans_after_stop": (0, "<="),
    "status_truthful": (1.0, ">="),
}


def report(ours: dict[str, Any], theirs: dict[str, Any] | None, quick: bool) -> str:
    lines = [f"chaos ({'quick' if quick else 'full'}): nbdeploy vs bentoml serve, kill -9 "
             f"every {KILL_EVERY_S:g} s under ~{RATE:g} req/s"]  # fmt: skip
    keys = ["requests", "failed_requests", "failed_share", "max_outage_s", "kills",
            "recoveries", "orphans_after_stop", "status_truthful"]  # fmt: skip
    lines.append(f"  {'':<22}{'nbdeploy':>14}{'bentoml serve':>16}  goal")
    for key in keys:
        goal = GOALS.get(key)
        mark = ""
        if goal is not None and ours.get(key) is not None:
            limit, sense = goal
            held = ours[key] <= limit if sense == "<=" else ours[key] >= limit
            mark = f"{sense} {limit:g} {'✓' if held else '✗'}"
        other = theirs.get(key, "-") if theirs else "-"
        lines.append(f"  {key:<22}{ours.get(key)!s:>14}{other!s:>16}  {mark}")
    if theirs and theirs.get("failed_share"):
        ratio = (ours["failed_share"] or 0) / theirs["failed_share"]
        lines.append(f"  failed_share ratio nbdeploy/bentoml: {ratio:.3f}")
    lines.append(f"  nbdeploy kills: {ours['kills_by_kind']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    summary = " ".join(__doc__.split("\n\n")[0].split()) if __doc__ else None
    parser = argparse.ArgumentParser(description=summary)
    parser.add_argument("--quick", action="store_true", help="60 s of chaos (else 5 min)")
    parser.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    parser.add_argument("--seed", type=int, default=17, help="what is killed when (17)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the bentoml serve side")
    args = parser.parse_args(argv)
    duration = 60.0 if args.quick else 300.0
    token = uuid.uuid4().hex
    work = Path(tempfile.mkdtemp(prefix="nbdeploy-bench-chaos-"))
    for key in list(os.environ):
        if key.startswith(("NBDEPLOY_", "MLFLOW_", "JPY_", "BENTOML_")):
            del os.environ[key]
    os.environ["NBDEPLOY_HOME"] = str(work / "home")
    os.environ[TOKEN_ENV] = token  # what the benchmark starts inherits it
    started = time.perf_counter()
    theirs: dict[str, Any] | None = None
    try:
        side, bento = run_nbdeploy(duration, args.seed)
        ours = side.summary()
        if not args.no_baseline:
            theirs = run_bentoml(bento, duration, args.seed, work).summary()
    except (BenchError, OSError, subprocess.SubprocessError) as error:
        print(f"bench: FAILED: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        with contextlib.suppress(Exception):
            from nbdeploy.deployment.runtime import client

            client.shutdown()
        leftovers = marked_pids(token)
        if leftovers:
            log(f"  ! {len(leftovers)} process(es) of this benchmark still alive: ending them")
            for pid in leftovers:
                with contextlib.suppress(OSError):
                    log(f"    {pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()[:160]!r}")
            end_processes(leftovers)
        shutil.rmtree(work, ignore_errors=True)
    log(f"took {time.perf_counter() - started:.0f} s")
    print(report(ours, theirs, args.quick))
    if args.json:
        data = {**ours, "quick": args.quick, "seconds": duration, "baseline_bentoml": theirs}
        if theirs and theirs.get("failed_share"):
            data["failed_share_ratio_vs_bentoml"] = round(
                (ours["failed_share"] or 0) / theirs["failed_share"], 4
            )
        print(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
