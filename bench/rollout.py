"""Benchmark: rollouts behind a deployment's router under continuous load, and what the
router costs.

What is compared, and why
-------------------------
Every nbdeploy deployment is served through its router (nbdeploy/deployment/traffic/router/): an
asyncio HTTP/1.1 reverse proxy, a process of its own, that holds the deployment's stable
address and sends each request to a version server on a loopback port of its own. The
router is what makes a switch of versions invisible to clients; it must not drop a request
while versions change, and it must cost little on every request.

Everything runs on 127.0.0.1 in a temporary ``NBDEPLOY_HOME``, deployed in this process with
the Python API (``nbdeploy.deploy``, ``mlflow=False``), as a notebook would: the cells below
are executed into one namespace (``__name__ == "__main__"``). The model is a numpy linear
scorer, ``def predict(rows: list[list[float]]) -> list[float]`` over 20 features, with
``reference="X"`` (64 rows) so that each deploy has an example request; the load is wrk
POSTing one row, ``{"rows": [[...20 floats...]]}``.

1. **Router cost.** v1 is deployed. wrk (``-t2 -c8``, 10 s per run, 5 s with ``--quick``)
   against the live version's own port (straight to its BentoML service, with the version's
   upstream secret in ``X-Nbdeploy-Upstream`` as the router sends it: a version answers
   nothing else) and against the router's address, same body and connections, alternating
   which goes first (5 pairs, 3 with ``--quick``; medians). ``router_vs_direct_rps`` =
   router rps / direct rps (goal >= 0.85); ``router_added_p50_ms`` = router p50 - direct
   p50 at those 8 connections (goal <= 1 ms). At 8 connections wrk keeps the service
   saturated, so that p50 is mostly queueing (about 8 / rps) and follows the throughput;
   the hop's own latency is measured too, without a goal, at one connection
   (``router_added_p50_ms_c1``). wrk, the router and the service share the machine's CPUs
   (2 here), so each run also records the CPU time per request of the router and of the
   version server (with its workers), and the CPU time of everything else on the machine
   (``other_cpu_cores``: other people's work skews every number here;
   ``loadavg_1min_before`` too).
2. **Blue-green under load.** wrk against the router at a limited rate (64 connections,
   each waiting 160 ms between its requests: about 350 req/s, and still well above the
   100 req/s the issue asks for while some connections wait on the slow canary below;
   bounded by ``-d``, stopped with SIGINT 2 s after the deploy returns), v2 deployed
   meanwhile with the default strategy (blue-green). ``bluegreen_failed_requests`` =
   non-2xx answers + socket errors (connect, read, write, timeout). Afterwards the router
   must answer v2's answer, from v2.
3. **A canary that fails its analysis, under load.** The same load, and v3 deployed with
   ``strategy="canary", steps=[10, 50, 100], interval=4, wait=True``. v3 answers correctly
   (as v2) but sleeps 0.6 s per call, so its p99 exceeds max(500 ms, 1.5 x the stable
   p99): the deploy must raise, the canary rolled back (``canary_rolled_back``; the reason
   is nbdeploy's message). ``canary_rollback_failed_requests`` counts as above (wrk's
   ``--timeout`` is 5 s: a slow answer is still a 2xx answer, not an error). Afterwards v2
   must serve again.

The issue's condition on the load, at least 100 req/s, is checked on each rollout run's
mean rate (``load_rate_rps``: the lower of the two). A wrk Lua script also counts, per
response, the status, the version that answered (the router's ``X-Nbdeploy-Version``
header) and the answers in each second: the lowest count in any whole second of a run
(``*_min_second_rps``, without a goal) shows how far the served rate dips while versions
change. ``requests`` is the total wrk sent during the two rollout runs.

Every process started carries a token in its environment; the deployment is stopped, the
home's nbdeploy launcher shut down, and any marked process still alive 10 s later is ended
and counted (``leftover_processes``, its command line logged); the temporary folder is
removed.

Usage::

    .venv/bin/python bench/rollout.py [--quick] [--json]

``--quick`` takes about two minutes on 2 cores, the full run about four. ``--json``: the
last line of stdout is one JSON object with the results. Missing a goal does not change
the exit status (this is a measurement, not a test); failing to measure does (a deploy
that fails, wrk that cannot run or reports errors while the cost is measured, a wrong
answer after a rollout).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import linecache
import os
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchkit import TOKEN_ENV, BenchError, WrkResult, log, parse_wrk
from benchkit import end_processes as _end_processes
from benchkit import marked_pids as _marked_pids
from benchkit import tail as _tail

NAME = "rollout-bench"
ROUTE = "/predict"

GOAL_RPS_RATIO = 0.85  # router rps / direct rps, at least
GOAL_ADDED_P50_MS = 1.0  # router p50 - direct p50, at most
MIN_RATE_RPS = 100.0  # the load during each rollout run (wrk's mean rate), at least

COST_THREADS, COST_CONNECTIONS = 2, 8
LOAD_THREADS, LOAD_CONNECTIONS = 2, 64
# Each load connection waits this long between its requests: about 350 req/s in all, and
# still well above 100 req/s while some connections wait on the slow canary.
LOAD_DELAY_MS = 160
LOAD_BOUND_S = 300  # wrk's -d for a rollout run: stopped earlier, once the deploy is done
LEAD_S, TAIL_S = 2.0, 2.0  # load before the deploy starts and after it returns
WRK_TIMEOUT_S = 5  # longer than the slow version's answers
SLOW_S = 0.6
CANARY_STEPS = [10, 50, 100]
CANARY_INTERVAL_S = 4.0
ROLLED_BACK = "rolled back, the deploy raised:"


# The notebook: cells executed in order into one namespace.
SETUP_CELL = """
import time

import numpy as np


rng = np.random.default_rng(0)
X = rng.normal(size=(64, 20))
W = np.linspace(-1.0, 1.0, 20)
"""
V1_CELL = """
def predict(rows: list[list[float]]) -> list[float]:
    return [float(v) for v in np.asarray(rows, dtype=float) @ W]
"""
V2_CELL = """
def predict(rows: list[list[float]]) -> list[float]:
    return [float(v) + 1.0 for v in np.asarray(rows, dtype=float) @ W]
"""
# Correct (v2's answers) but slow: its p99 breaches the canary analysis.
V3_CELL = f"""
def predict(rows: list[list[float]]) -> list[float]:
    time.sleep({SLOW_S})
    return [float(v) + 1.0 for v in np.asarray(rows, dtype=float) @ W]
"""
ROW = [round(0.1 * ((i * 7) % 11) - 0.5, 3) for i in range(20)]
BODY = {"rows": [ROW]}

LUA_COMMON = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
"""
# Counts per response: status class, the version that answered (the router's header) and
# the answers in each second (os.time()); collected from every thread in done().
LUA_COUNTING = """
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok = 0
  bad = 0
  versions = {}
  statuses = {}
  seconds = {}
end

function delay()
  return DELAY_MS
end

function response(status, headers, body)
  if status >= 200 and status < 300 then ok = ok + 1 else bad = bad + 1 end
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  local version = headers["X-Nbdeploy-Version"] or "none"
  versions[version] = (versions[version] or 0) + 1
  local now = os.time()
  seconds[now] = (seconds[now] or 0) + 1
end

local function encode(values)
  local parts = {}
  for key, count in pairs(values) do
    table.insert(parts, string.format('"%s": %d', tostring(key), count))
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
  local total = {ok = 0, bad = 0}
  local versions_all, statuses_all, seconds_all = {}, {}, {}
  for _, thread in ipairs(threads) do
    total.ok = total.ok + thread:get("ok")
    total.bad = total.bad + thread:get("bad")
    for k, v in pairs(thread:get("versions")) do versions_all[k] = (versions_all[k] or 0) + v end
    for k, v in pairs(thread:get("statuses")) do statuses_all[k] = (statuses_all[k] or 0) + v end
    for k, v in pairs(thread:get("seconds")) do seconds_all[k] = (seconds_all[k] or 0) + v end
  end
  io.write(string.format(
    'BENCH-COUNTS {"ok": %d, "bad": %d, "versions": %s, "statuses": %s, "seconds": %s}\\n',
    total.ok, total.bad, encode(versions_all), encode(statuses_all), encode(seconds_all)))
end
"""


# --- processes -----------------------------------------------------------------------------


def _remaining(token: str, grace: float = 10.0) -> list[int]:
    """The marked processes still alive ``grace`` seconds after everything was told to stop
    (the launcher's shutdown returns before the launcher has exited)."""
    deadline = time.monotonic() + grace
    while (pids := _marked_pids(token)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return pids


def _describe(pid: int) -> str:
    """A process's parent, age and command line, for the log."""
    import psutil

    try:
        process = psutil.Process(pid)
        age = time.time() - process.create_time()
        command = " ".join(process.cmdline())[:200]
        return f"parent {process.ppid()}, {age:.0f} s old, {process.status()}: {command}"
    except psutil.Error as error:
        return f"gone ({type(error).__name__})"


# --- wrk -----------------------------------------------------------------------------------


class Wrk:
    """One wrk run: bounded by ``seconds``; ``stop()`` ends it earlier (SIGINT: wrk prints
    its statistics for the time it ran)."""

    def __init__(
        self,
        url: str,
        work: Path,
        env: dict[str, str],
        *,
        threads: int,
        connections: int,
        seconds: int,
        counting: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        script = work / f"wrk-{uuid.uuid4().hex[:8]}.lua"
        text = LUA_COMMON.format(body=json.dumps(json.dumps(BODY)))
        for name, value in (headers or {}).items():
            text += f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}\n"
        if counting:
            text += LUA_COUNTING.replace("DELAY_MS", str(LOAD_DELAY_MS))
        # Owner-only: it may hold a version's upstream secret (never on wrk's command line,
        # which any local user can read).
        descriptor = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        self.url, self.seconds = url, seconds
        self.out_path = script.with_suffix(".out")
        self.err_path = script.with_suffix(".err")
        command = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            f"--timeout={WRK_TIMEOUT_S}s",
            "--latency",
            "-s",
            str(script),
            url,
        ]
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def result(self) -> WrkResult:
        try:
            self.process.wait(timeout=self.seconds + 60)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(f"wrk against {self.url} did not end") from None
        out = self.out_path.read_text(errors="replace")
        if self.process.returncode != 0 or "Requests/sec" not in out:
            err = self.err_path.read_text(errors="replace")
            raise BenchError(f"wrk failed against {self.url}:\n{_tail(err or out)}")
        return parse_wrk(out)


def run_wrk(
    url: str,
    work: Path,
    env: dict[str, str],
    connections: int,
    seconds: int,
    headers: dict[str, str] | None = None,
) -> WrkResult:
    wrk = Wrk(
        url, work, env, threads=min(COST_THREADS, connections), connections=connections,
        seconds=seconds, headers=headers,
    )  # fmt: skip
    try:
        return wrk.result()
    finally:
        wrk.kill()


# --- the notebook and its deployment -------------------------------------------------------


class Notebook:
    """Cells executed into one namespace, as a kernel runs them (``__main__``, sources in
    linecache as IPython keeps them)."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {"__name__": "__main__"}
        self.history: list[str] = []

    def run(self, cell: str) -> None:
        filename = f"<bench-rollout-cell-{len(self.history)}>"
        linecache.cache[filename] = (len(cell), None, cell.splitlines(True), filename)
        exec(compile(cell, filename, "exec"), self.namespace)
        self.history.append(cell)

    def deploy(self, **options: Any) -> Any:
        import nbdeploy

        return nbdeploy.deploy(
            self.namespace["predict"],
            name=NAME,
            namespace=self.namespace,
            history=list(self.history),
            mlflow=False,
            reference="X",
            notify=lambda message: log(f"    nbdeploy: {message}"),
            **options,
        )

    def expected(self) -> list[float]:
        """The answer of the ``predict`` defined last, for BODY."""
        return list(self.namespace["predict"](BODY["rows"]))


def post(url: str) -> tuple[int, Any, str | None]:
    request = urllib.request.Request(
        url, data=json.dumps(BODY).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read()), answer.headers["X-Nbdeploy-Version"]
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace"), None


def check_serves(url: str, expected: list[float], version: str, what: str) -> None:
    """Each of 20 requests to the router at ``url`` answers ``expected`` from ``version``."""
    for _ in range(20):
        status, answer, served_by = post(url + ROUTE)
        if status != 200 or answer != expected or served_by != version:
            raise BenchError(
                f"{what}: the router answered {status} {answer!r} from {served_by}, "
                f"expected {expected!r} from {version}"
            )


def servers_by_role() -> dict[str, list[Any]]:
    import nbdeploy

    [deployment] = nbdeploy.status(NAME)
    roles: dict[str, list[Any]] = {}
    for server in deployment.servers:
        roles.setdefault(server.role, []).append(server)
    return roles


def roles_summary() -> list[str]:
    return sorted(
        f"{role} v{server.version}" if role != "router" else role
        for role, servers in servers_by_role().items()
        for server in servers
    )


# --- the measurements ----------------------------------------------------------------------


@dataclass
class Rollout:
    load: WrkResult
    deploy_s: float
    outcome: str  # what the deploy returned or raised
    roles_after: list[str]

    @property
    def rolled_back(self) -> bool:
        return self.outcome.startswith(ROLLED_BACK)


def under_load(
    router: str, work: Path, env: dict[str, str], deploy: Callable[[], str]
) -> tuple[WrkResult, float, str]:
    """Start the load, run ``deploy`` while it runs, stop the load ``TAIL_S`` after it."""
    wrk = Wrk(
        router + ROUTE, work, env, threads=LOAD_THREADS, connections=LOAD_CONNECTIONS,
        seconds=LOAD_BOUND_S, counting=True,
    )  # fmt: skip
    try:
        time.sleep(LEAD_S)
        if wrk.process.poll() is not None:
            raise BenchError(f"wrk ended at once:\n{_tail(wrk.err_path.read_text())}")
        started = time.perf_counter()
        outcome = deploy()
        deploy_s = time.perf_counter() - started
        time.sleep(TAIL_S)
        wrk.stop()
        return wrk.result(), deploy_s, outcome
    finally:
        wrk.kill()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its children so far."""
    import psutil

    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
    return total


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy so far (all CPUs; /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_and_children_cpu_seconds() -> float:
    """CPU time of this process and of its waited-for children (the wrk runs)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class CostRun:
    """One wrk run of the router-cost comparison, with the CPU time the router and the
    version server (with its worker processes) used during it."""

    load: WrkResult
    router_cpu_s: float
    service_cpu_s: float
    other_cpu_s: float  # everything else on the machine, not this benchmark's doing

    def sample(self) -> dict[str, Any]:
        per = 1e6 / max(self.load.requests, 1)
        return {
            "rps": round(self.load.rps, 1),
            "p50_ms": self.load.p50_ms,
            "p99_ms": self.load.p99_ms,
            "router_cpu_us_per_request": round(self.router_cpu_s * per, 1),
            "service_cpu_us_per_request": round(self.service_cpu_s * per, 1),
            "other_cpu_cores": round(max(self.other_cpu_s, 0.0) / self.load.seconds, 2),
        }


def router_cost(
    router: str,
    direct: str,
    pids: dict[str, int],
    work: Path,
    env: dict[str, str],
    quick: bool,
    direct_headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """wrk straight to the live version and through the router, alternating which goes
    first; medians. ``pids``: the router's and the live version server's;
    ``direct_headers``: what a request straight to the version carries (its upstream
    secret, as the router sends it)."""
    seconds, pairs = (5, 3) if quick else (10, 5)
    targets = {"direct": direct + ROUTE, "router": router + ROUTE}
    headers = {"direct": direct_headers, "router": None}
    for side, url in targets.items():  # warm-up: connections, caches, the batcher's first calls
        run_wrk(url, work, env, COST_CONNECTIONS, 2, headers[side])

    def measure(side: str, connections: int, length: int) -> CostRun:
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        busy, own = busy_cpu_seconds(), own_and_children_cpu_seconds()
        result = run_wrk(targets[side], work, env, connections, length, headers[side])
        used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        busy, own = busy_cpu_seconds() - busy, own_and_children_cpu_seconds() - own
        if result.failed:
            raise BenchError(f"{side}: {result.failed} failed requests: {result.summary()}")
        other = busy - own - used["router"] - used["service"]
        run = CostRun(result, used["router"], used["service"], other)
        sample = run.sample()
        log(
            f"  {side:<6} c={connections:<2} {result.rps:8.1f} req/s  p50 {result.p50_ms:7.3f} ms"
            f"  p99 {result.p99_ms:8.3f} ms  CPU/request: router "
            f"{sample['router_cpu_us_per_request']:6.0f} us, service "
            f"{sample['service_cpu_us_per_request']:6.0f} us; other work on the machine: "
            f"{sample['other_cpu_cores']:.2f} CPUs"
        )
        return run

    runs: dict[str, list[CostRun]] = {side: [] for side in ("direct", "router")}
    runs_c1: dict[str, list[CostRun]] = {side: [] for side in ("direct", "router")}
    for i in range(pairs):
        log(f"  pair {i + 1}/{pairs}")
        order = ["direct", "router"] if i % 2 == 0 else ["router", "direct"]
        for side in order:
            runs[side].append(measure(side, COST_CONNECTIONS, seconds))
        for side in order:
            runs_c1[side].append(measure(side, 1, max(3, seconds // 2)))

    def medians(results: list[CostRun]) -> dict[str, Any]:
        samples = [run.sample() for run in results]
        return {
            key: round(statistics.median(sample[key] for sample in samples), 3)
            for key in samples[0]
        } | {"samples": samples}

    return {
        "seconds_per_run": seconds,
        "pairs": pairs,
        "connections": COST_CONNECTIONS,
        "direct": medians(runs["direct"]),
        "router": medians(runs["router"]),
        "direct_c1": medians(runs_c1["direct"]),
        "router_c1": medians(runs_c1["router"]),
    }


def run_benchmarks(quick: bool, work: Path, env: dict[str, str]) -> dict[str, Any]:
    notebook = Notebook()
    notebook.run(SETUP_CELL)
    notebook.run(V1_CELL)
    log("v1: deploying (cold)")
    started = time.perf_counter()
    first = notebook.deploy()
    deploy_v1_s = time.perf_counter() - started
    router = first.url
    check_serves(router, notebook.expected(), "v1", "after deploying v1")
    roles = servers_by_role()
    [live], [router_server] = roles["live"], roles["router"]
    direct = f"http://{live.host}:{live.port}"
    pids = {"router": int(router_server.pid), "service": int(live.pid)}
    log(f"v1 serves at {router} (router) and {direct} (the version itself), {deploy_v1_s:.1f} s")

    log("router cost: wrk straight to v1 and through the router")
    # The version answers only its router: the direct side sends the secret the router does.
    from nbdeploy.deployment.traffic import upstream_secrets

    cost = router_cost(router, direct, pids, work, env, quick, upstream_secrets.headers(live))

    log("blue-green under load: deploying v2")
    notebook.run(V2_CELL)
    v2_expected = notebook.expected()

    def blue_green() -> str:
        result = notebook.deploy()
        return f"v{result.version.version} live"

    load, seconds, outcome = under_load(router, work, env, blue_green)
    check_serves(router, v2_expected, "v2", "after the blue-green switch")
    bluegreen = Rollout(load, seconds, outcome, roles_summary())
    log(f"  {outcome}; {load.summary()}")

    log("canary of a slow v3 under load (its analysis must fail and roll it back)")
    notebook.run(V3_CELL)
    if notebook.expected() != v2_expected:
        raise BenchError("v3 should answer as v2 does")

    def canary() -> str:
        from nbdeploy.errors import NbdeployError

        try:
            result = notebook.deploy(
                strategy="canary", steps=CANARY_STEPS, interval=CANARY_INTERVAL_S, wait=True
            )
        except NbdeployError as error:
            if "rolled back" not in str(error):
                raise BenchError(
                    f"the canary did not get as far as its analysis: {error}"
                ) from None
            return f"{ROLLED_BACK} {error}"
        return f"promoted: v{result.deployment.live_version} live, no rollback"

    load, seconds, outcome = under_load(router, work, env, canary)
    canary_run = Rollout(load, seconds, outcome, roles_summary())
    # Rolled back, v2 serves again; promoted (a goal missed), v3 serves v2's answers.
    serving = "v2" if canary_run.rolled_back else "v3"
    check_serves(router, v2_expected, serving, "after the canary")
    log(f"  {outcome}\n  {load.summary()}")
    return {
        "deploy_v1_s": round(deploy_v1_s, 2),
        "cost": cost,
        "bluegreen": bluegreen,
        "canary": canary_run,
    }


# --- the report ----------------------------------------------------------------------------


def results_json(measured: dict[str, Any], quick: bool, leftovers: int) -> dict[str, Any]:
    cost = measured["cost"]
    bluegreen: Rollout = measured["bluegreen"]
    canary: Rollout = measured["canary"]
    direct, router = cost["direct"], cost["router"]
    data: dict[str, Any] = {
        "requests": bluegreen.load.requests + canary.load.requests,
        "bluegreen_failed_requests": bluegreen.load.failed,
        "canary_rollback_failed_requests": canary.load.failed,
        "router_vs_direct_rps": round(router["rps"] / direct["rps"], 3),
        "router_added_p50_ms": round(router["p50_ms"] - direct["p50_ms"], 3),
        "router_added_p50_ms_c1": round(
            cost["router_c1"]["p50_ms"] - cost["direct_c1"]["p50_ms"], 3
        ),
        "canary_rolled_back": canary.rolled_back,
        "canary_outcome": canary.outcome,
        "canary_rollback_reason": (
            canary.outcome.rsplit("rolled back: ", 1)[-1] if canary.rolled_back else None
        ),
        "direct_rps": direct["rps"],
        "router_rps": router["rps"],
        "direct_p50_ms": direct["p50_ms"],
        "router_p50_ms": router["p50_ms"],
        "direct_p99_ms": direct["p99_ms"],
        "router_p99_ms": router["p99_ms"],
        "bluegreen_rate_rps": round(bluegreen.load.rps, 1),
        "bluegreen_min_second_rps": bluegreen.load.min_second_rps,
        "canary_rate_rps": round(canary.load.rps, 1),
        "canary_min_second_rps": canary.load.min_second_rps,
        "bluegreen": {
            **bluegreen.load.summary(),
            "deploy_s": round(bluegreen.deploy_s, 2),
            "outcome": bluegreen.outcome,
            "roles_after": bluegreen.roles_after,
        },
        "canary": {
            **canary.load.summary(),
            "deploy_s": round(canary.deploy_s, 2),
            "outcome": canary.outcome,
            "roles_after": canary.roles_after,
            "steps": CANARY_STEPS,
            "interval_s": CANARY_INTERVAL_S,
            "slow_version_sleep_s": SLOW_S,
        },
        "router_cost": cost,
        "deploy_v1_s": measured["deploy_v1_s"],
        "load": {
            "threads": LOAD_THREADS,
            "connections": LOAD_CONNECTIONS,
            "delay_ms": LOAD_DELAY_MS,
            "wrk_timeout_s": WRK_TIMEOUT_S,
        },
        "goals": {name: f"{sign} {goal}" for name, (_, sign, goal, _) in goals(measured).items()},
        "quick": quick,
        "cpu_count": os.cpu_count(),
        "leftover_processes": leftovers,
    }
    return data


def goals(measured: dict[str, Any]) -> dict[str, tuple[float, str, float, bool]]:
    """name -> (value, sign, goal, met)."""
    cost = measured["cost"]
    bluegreen: Rollout = measured["bluegreen"]
    canary: Rollout = measured["canary"]
    ratio = cost["router"]["rps"] / cost["direct"]["rps"]
    added = cost["router"]["p50_ms"] - cost["direct"]["p50_ms"]
    rolled_back = float(canary.rolled_back)
    lowest = min(run.load.rps for run in (bluegreen, canary))
    return {
        "bluegreen_failed_requests": (bluegreen.load.failed, "==", 0, bluegreen.load.failed == 0),
        "canary_rollback_failed_requests": (canary.load.failed, "==", 0, canary.load.failed == 0),
        "canary_rolled_back": (rolled_back, "==", 1, rolled_back == 1),
        "router_vs_direct_rps": (ratio, ">=", GOAL_RPS_RATIO, ratio >= GOAL_RPS_RATIO),
        "router_added_p50_ms": (added, "<=", GOAL_ADDED_P50_MS, added <= GOAL_ADDED_P50_MS),
        "load_rate_rps": (lowest, ">=", MIN_RATE_RPS, lowest >= MIN_RATE_RPS),
    }


def report(measured: dict[str, Any], quick: bool, leftovers: int, load_before: float) -> str:
    cost = measured["cost"]
    mode = "quick" if quick else "full"
    lines = [
        f"nbdeploy rollout benchmark ({mode}; {os.cpu_count()} CPUs shared by wrk, the router "
        f"and the versions; load average {load_before:.2f} before it started)",
        "",
        f"router cost: wrk -t{COST_THREADS}, {cost['pairs']} runs of {cost['seconds_per_run']} s "
        "per side, medians",
        f"{'target':<14} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'router us':>10} "
        f"{'service us':>11} {'other CPUs':>11}",
    ]
    for key, label in (
        ("direct", f"direct c={COST_CONNECTIONS}"),
        ("router", f"router c={COST_CONNECTIONS}"),
        ("direct_c1", "direct c=1"),
        ("router_c1", "router c=1"),
    ):
        row = cost[key]
        lines.append(
            f"{label:<14} {row['rps']:>8.1f} {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f} "
            f"{row['router_cpu_us_per_request']:>10.0f} {row['service_cpu_us_per_request']:>11.0f}"
            f" {row['other_cpu_cores']:>11.2f}"
        )
    lines += [
        "(us: CPU time per request of the router and of the version server; other CPUs: CPU "
        "time of everything else on the machine, in CPUs)",
        "",
        f"rollouts under load (wrk -t{LOAD_THREADS} -c{LOAD_CONNECTIONS}, {LOAD_DELAY_MS} ms "
        f"between a connection's requests, --timeout {WRK_TIMEOUT_S}s)",
        f"{'run':<11} {'requests':>9} {'s':>6} {'req/s':>7} {'min/s':>6} {'failed':>7} "
        f"{'deploy s':>9}  answers by version",
    ]
    for label, run in (("blue-green", measured["bluegreen"]), ("canary", measured["canary"])):
        load = run.load
        lines.append(
            f"{label:<11} {load.requests:>9} {load.seconds:>6.1f} {load.rps:>7.1f} "
            f"{load.min_second_rps if load.min_second_rps is not None else '-':>6} "
            f"{load.failed:>7} {run.deploy_s:>9.1f}  {load.counts.get('versions', {})}"
        )
    canary: Rollout = measured["canary"]
    lines += [
        f"canary: {canary.outcome}",
        f"roles after the blue-green switch: {', '.join(measured['bluegreen'].roles_after)}",
        f"roles after the canary: {', '.join(canary.roles_after)}",
        "",
        f"{'measure':<32} {'value':>9}  {'goal':<9} verdict",
    ]
    for name, (value, sign, goal, met) in goals(measured).items():
        lines.append(f"{name:<32} {value:>9.3f}  {sign} {goal:<6g} {'PASS' if met else 'MISS'}")
    if leftovers:
        lines += ["", f"note: {leftovers} process(es) were left and ended"]
    return "\n".join(lines)


# --- the run -------------------------------------------------------------------------------


def stop_everything(home: Path) -> None:
    """Stop the deployment (its router and versions), the home's daemon and launcher."""
    if (home / "state.db").exists():
        with contextlib.suppress(Exception):
            import nbdeploy

            nbdeploy.stop(NAME)
    with contextlib.suppress(Exception):
        from nbdeploy.deployment.runtime import client, launcher

        client.shutdown()
        launcher.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    summary = " ".join(__doc__.split("\n\n")[0].split()) if __doc__ else None
    parser = argparse.ArgumentParser(description=summary)
    parser.add_argument("--quick", action="store_true", help="shorter runs (about two minutes)")
    parser.add_argument(
        "--json", action="store_true", help="end stdout with one JSON object of results"
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2

    token = uuid.uuid4().hex
    work = Path(tempfile.mkdtemp(prefix="nbdeploy-bench-rollout-"))
    home = work / "home"
    for key in list(os.environ):
        if key.startswith(("NBDEPLOY_", "MLFLOW_", "JPY_")):
            del os.environ[key]
    os.environ["NBDEPLOY_HOME"] = str(home)
    os.environ[TOKEN_ENV] = token  # the routers, versions and launcher started here inherit it
    env = dict(os.environ)
    load_before = os.getloadavg()[0]  # other work on the machine skews every number here
    started = time.perf_counter()
    try:
        measured = run_benchmarks(args.quick, work, env)
    except (BenchError, subprocess.SubprocessError, OSError, RuntimeError) as error:
        print(f"bench: FAILED: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # a deploy that failed: nbdeploy's own errors
        print(f"bench: FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        stop_everything(home)
        leftovers = _remaining(token)
        if leftovers:
            log(f"  ! {len(leftovers)} process(es) of this benchmark still alive: ending them")
            for pid in leftovers:
                log(f"    {pid}: {_describe(pid)}")
            _end_processes(leftovers)
        shutil.rmtree(work, ignore_errors=True)
    log(f"took {time.perf_counter() - started:.0f} s")

    print(report(measured, args.quick, len(leftovers), load_before))
    if args.json:
        data = results_json(measured, args.quick, len(leftovers))
        data["total_s"] = round(time.perf_counter() - started, 1)
        data["loadavg_1min_before"] = round(load_before, 2)
        print(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
