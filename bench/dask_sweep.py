"""Benchmark: a sweep on Dask (``--executor dask``) against the local ``--parallel`` sweep.

What is compared, and why
-------------------------
``nbdeploy run NB --sweep ... --executor dask`` runs each combination as a task of a Dask
cluster; without ``--scheduler`` the cluster is a ``distributed.LocalCluster`` started for
the sweep on this machine. On one machine that can only add work (starting the cluster,
shipping the notebook and its folder to a worker, shipping the output notebook back), so
the number to watch is how much: ``dask_vs_local_sweep`` = wall time of the Dask sweep /
wall time of the local sweep, goal <= 1.2 (the engine's overhead stays small).

Both sides run the same grid of ``example_notebooks/train.ipynb`` (a random forest on a
synthetic set), as a user would, through the ``nbdeploy`` command, with two kernels at a
time: ``--parallel 2`` locally, a LocalCluster of 2 worker processes for Dask
(``--executor dask --parallel 2``). Quick mode: 4 combinations (``n_estimators=10,20`` x
``max_depth=3,5``), 2 timed sweeps of each; full: 8 combinations (``n_estimators`` 10..40),
3 of each. One untimed warm-up of each side first (file caches, compiled bytecode); then
the two sides take turns (L D L D ...) so that drifting machine load hits them alike;
medians are compared. Wall time is the whole command, start to exit: the Dask side pays
for its cluster's start and shutdown.

Isolation: a private temporary ``NBDEPLOY_HOME``, ``--no-mlflow`` on both sides (MLflow is
recorded by the client in the same way for both; it would only add noise), output
notebooks in a temporary folder and counted (every combination must have written one).
A failing command stops the benchmark with its output tail and a non-zero exit status;
processes a command leaves behind are awaited (then ended) before the next timed command.

Usage::

    .venv/bin/python bench/dask_sweep.py [--quick] [--json]

``measure(quick)`` returns the same dict as ``--json`` prints last.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import TOKEN_ENV, BenchError, end_processes, log, marked_pids, tail

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "example_notebooks" / "train.ipynb"
VENV_BIN = Path(sys.executable).parent
NBDEPLOY = VENV_BIN / "nbdeploy"
GRID_QUICK = ["--sweep", "n_estimators=10,20", "--sweep", "max_depth=3,5"]
GRID_FULL = ["--sweep", "n_estimators=10,20,30,40", "--sweep", "max_depth=3,5"]
PARALLEL = 2
SWEEP_TIMEOUT_S = 600.0
LINGER_WAIT_S = 15.0
GOAL = 1.2  # dask / local, at most


def _environment(home: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("NBDEPLOY_", "MLFLOW_", "DASK_"))
    }
    env["NBDEPLOY_HOME"] = str(home)
    env[TOKEN_ENV] = uuid.uuid4().hex
    return env


def _await_leftovers(token: str) -> int:
    """Processes of the last command still alive: waited for, then ended."""
    leftovers = marked_pids(token)
    deadline = time.monotonic() + LINGER_WAIT_S
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.05)
        leftovers = marked_pids(token)
    if leftovers:
        log(f"  ! {len(leftovers)} process(es) alive {LINGER_WAIT_S:.0f}s after exit: ending them")
        end_processes(leftovers, grace=3.0)
    return len(leftovers)


LINGERING: list[int] = []  # processes each command left behind (awaited, not timed)


def _sweep(
    label: str, extra: Sequence[str], grid: list[str], out: Path, env: dict[str, str]
) -> float:
    """One sweep through the CLI, timed wall-clock; checks its output notebooks."""
    command = [str(NBDEPLOY), "run", str(NOTEBOOK), *grid, "--parallel", str(PARALLEL)]
    command += ["--no-mlflow", "--output-dir", str(out), *extra]
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env, cwd=ROOT
        )
        try:
            code: int | None = process.wait(timeout=SWEEP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            end_processes([process.pid, *marked_pids(env[TOKEN_ENV])], grace=3.0)
            process.wait()
            code = None
        seconds = time.perf_counter() - start
        LINGERING.append(_await_leftovers(env[TOKEN_ENV]))
        stdout.seek(0)
        stderr.seek(0)
        out_text = stdout.read().decode(errors="replace")
        err_text = stderr.read().decode(errors="replace")
    if code != 0:
        what = "timed out" if code is None else f"exited with {code}"
        raise BenchError(
            f"{label} {what}\n  command: {' '.join(command)}\n"
            f"--- stderr (tail) ---\n{tail(err_text) or '(empty)'}\n"
            f"--- stdout (tail) ---\n{tail(out_text) or '(empty)'}"
        )
    expected = _combinations(grid)
    written = len(list(out.glob("*.ipynb"))) if out.exists() else 0
    if written != expected:
        raise BenchError(f"{label}: wrote {written} output notebooks, expected {expected}")
    return seconds


def _combinations(grid: list[str]) -> int:
    count = 1
    for option in grid[1::2]:
        count *= len(option.partition("=")[2].split(","))
    return count


def measure(quick: bool) -> dict[str, Any]:
    """Time the local and the Dask sweep of the same grid; see the module docstring."""
    if importlib.util.find_spec("distributed") is None:
        raise BenchError("Dask is not installed: pip install 'dask[distributed]'")
    if not os.access(NBDEPLOY, os.X_OK):
        raise BenchError(f"{NBDEPLOY} not found: run this with the venv's python")
    grid = GRID_QUICK if quick else GRID_FULL
    LINGERING.clear()
    repetitions = 2 if quick else 3
    sides = {"local": [], "dask": ["--executor", "dask"]}
    times: dict[str, list[float]] = {"local": [], "dask": []}
    with tempfile.TemporaryDirectory(prefix="nbdeploy-bench-dask-") as workdir:
        env = _environment(Path(workdir) / "home")
        for side, extra in sides.items():
            log(f"warm-up: {side} sweep")
            _sweep(f"{side} sweep (warm-up)", extra, grid, Path(workdir) / f"warm-{side}", env)
        for i in range(repetitions):
            for side, extra in sides.items():
                seconds = _sweep(f"{side} sweep", extra, grid, Path(workdir) / f"{side}-{i}", env)
                times[side].append(seconds)
                count = _combinations(grid)
                log(f"[{i + 1}/{repetitions}] {side:<6} sweep x{count} {seconds:6.2f}s")
    local, dask = statistics.median(times["local"]), statistics.median(times["dask"])
    return {
        "local_sweep_s": round(local, 3),
        "dask_sweep_s": round(dask, 3),
        "dask_vs_local_sweep": round(dask / local, 4),
        "goal": f"<= {GOAL}",
        "combinations": _combinations(grid),
        "parallel": PARALLEL,
        "repetitions": repetitions,
        "samples_s": {side: [round(t, 3) for t in values] for side, values in times.items()},
        "quick": quick,
        "lingering_processes": sum(LINGERING),
        "cpu_count": os.cpu_count(),
    }


def report(results: dict[str, Any]) -> str:
    verdict = "PASS" if results["dask_vs_local_sweep"] <= GOAL else "MISS"
    mode = "quick" if results["quick"] else "full"
    return "\n".join(
        [
            f"nbdeploy Dask sweep benchmark ({mode}; {results['cpu_count']} CPUs; "
            f"{NOTEBOOK.name} x{results['combinations']}, 2 at a time)",
            f"local --parallel 2        {results['local_sweep_s']:7.2f} s  "
            f"(samples {results['samples_s']['local']})",
            f"--executor dask (2 wkrs)  {results['dask_sweep_s']:7.2f} s  "
            f"(samples {results['samples_s']['dask']})",
            f"dask_vs_local_sweep       {results['dask_vs_local_sweep']:7.3f}  "
            f"<= {GOAL}  {verdict}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="4 combinations, 2 sweeps each")
    parser.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    args = parser.parse_args(argv)
    try:
        results = measure(args.quick)
    except BenchError as error:
        print(f"bench: FAILED: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    print(report(results))
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
