"""Benchmark: ``nbdeploy run`` against the ``papermill`` CLI, and parallel sweeps.

What is compared, and why
-------------------------
nbdeploy runs notebooks through papermill's machinery, adding typed parameters, a run
record in a local state store and (by default) MLflow tracking. A user who could call
``papermill IN OUT -p NAME VALUE`` directly should not pay for that: the target is that
``nbdeploy run`` is *faster* than the plain papermill CLI (it trims start-up work that
papermill does not), so the extra bookkeeping is free.

1. **One run, from a terminal.** Wall time of the whole command, as a user waits for it:

   - ``nbdeploy run train.ipynb -p n_estimators 20 -p max_depth 5`` (default: MLflow on),
   - the same with ``--no-mlflow``,
   - ``papermill train.ipynb OUT.ipynb -p n_estimators 20 -p max_depth 5 --cwd <folder>``
     (nbdeploy runs kernels in the notebook's folder, so papermill gets the same ``--cwd``).

   After one untimed warm-up of each (file caches, compiled bytecode), the three commands
   take turns (A B C A B C ...) so that drifting machine load hits them alike; nothing is
   discarded and the medians are compared: ``run_vs_papermill_cli`` = nbdeploy / papermill
   (goal <= 0.8), and ``run_vs_papermill_cli_no_mlflow`` likewise.

   The very first ``nbdeploy run`` in a fresh ``NBDEPLOY_HOME`` creates the MLflow SQLite
   database (schema migrations), a one-off cost reported on its own as
   ``nbdeploy_first_run_s``; that run is the nbdeploy warm-up.

2. **A sweep** of 8 combinations (``--sweep n_estimators=10,20,30,40 --sweep
   max_depth=3,5 --no-mlflow``) with ``--parallel 1`` and with ``--parallel 2``:
   ``sweep_parallel_speedup`` = time(parallel 1) / time(parallel 2) (goal >= 1.6 on a
   2-core machine: kernels are independent processes, so two at a time should nearly
   halve the time).

Isolation: one private temporary ``NBDEPLOY_HOME`` per benchmark invocation (shared by its
runs, so the MLflow database is created once, as on a user's machine),
``MLFLOW_TRACKING_URI`` removed from the environment (nbdeploy then uses its own SQLite
store in ``NBDEPLOY_HOME``), papermill outputs in a temporary folder. Every command has a
timeout; a failing command stops the benchmark with its output tail and a non-zero exit
status, so no number is ever reported for a failed run. Processes a command leaves behind
(for example a helper still finishing after the command exited) are counted, awaited
before the next timed command, and reported.

Usage::

    .venv/bin/python bench/pipeline.py [--quick] [--json]

``--quick``: 3 repetitions of each single run and one sweep of each kind (under two minutes
on 2 cores); otherwise 7 and 3. ``--json``: the last line of stdout is one JSON object with
the results. Missing a goal does not change the exit status (this is a measurement, not a
test); failing to measure does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchkit import TOKEN_ENV, BenchError, end_processes, log
from benchkit import marked_pids as _marked_pids
from benchkit import tail as _tail

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "example_notebooks" / "train.ipynb"
# The venv's bin folder: the directory of the interpreter running this script (not resolved:
# a venv's python is a symlink to the base interpreter).
VENV_BIN = Path(sys.executable).parent
NBDEPLOY = VENV_BIN / "nbdeploy"
PAPERMILL = VENV_BIN / "papermill"

PARAMETERS: list[tuple[str, str]] = [("n_estimators", "20"), ("max_depth", "5")]
SWEEP_ARGS = ["--sweep", "n_estimators=10,20,30,40", "--sweep", "max_depth=3,5"]
SWEEP_COMBINATIONS = 8

RUN_TIMEOUT_S = 180.0
SWEEP_TIMEOUT_S = 600.0
LINGER_WAIT_S = 15.0  # how long leftover processes may take to go away before being ended

GOAL_RUN_RATIO = 0.8  # nbdeploy / papermill, at most
GOAL_SWEEP_SPEEDUP = 1.6  # parallel 1 / parallel 2, at least


@dataclass
class Sample:
    seconds: float
    stdout: str
    stderr: str
    lingering: int


@dataclass
class System:
    """One command under test and its timed samples."""

    name: str
    label: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def times(self) -> list[float]:
        return [s.seconds for s in self.samples]

    @property
    def median(self) -> float:
        return statistics.median(self.times)


# --- processes -----------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != b"Z"


def _await_leftovers(token: str) -> int:
    """Number of marked processes still alive after a command exited; waits for them to go
    (ends them after LINGER_WAIT_S) so they cannot slow down the next timed command."""
    leftovers = [pid for pid in _marked_pids(token) if _alive(pid)]
    if not leftovers:
        return 0
    deadline = time.monotonic() + LINGER_WAIT_S
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in leftovers):
            return len(leftovers)
        time.sleep(0.05)
    still = [pid for pid in leftovers if _alive(pid)]
    log(f"  ! {len(still)} process(es) still alive {LINGER_WAIT_S:.0f}s after exit: ending them")
    end_processes(still, grace=3.0)
    return len(leftovers)


def run_command(
    label: str, argv: Sequence[str | Path], env: dict[str, str], timeout: float
) -> Sample:
    """Run a command to completion and time it (wall clock, start to exit).

    Output goes to temporary files rather than pipes, so the time is the command's own
    exit, not whenever the last inheritor of a pipe lets go of it.
    """
    token = env[TOKEN_ENV]
    command = [str(part) for part in argv]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=ROOT
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            end_processes([process.pid, *_marked_pids(token)], grace=3.0)
            process.wait()
            code = None
        seconds = time.perf_counter() - start
        lingering = _await_leftovers(token)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if code != 0:
        what = f"timed out after {timeout:.0f}s" if code is None else f"exited with {code}"
        raise BenchError(
            f"{label} {what}\n  command: {' '.join(command)}\n"
            f"--- stderr (tail) ---\n{_tail(stderr) or '(empty)'}\n"
            f"--- stdout (tail) ---\n{_tail(stdout) or '(empty)'}"
        )
    return Sample(seconds, stdout, stderr, lingering)


# --- the benchmark -------------------------------------------------------------------------


def _parameter_args() -> list[str]:
    return [arg for name, value in PARAMETERS for arg in ("-p", name, value)]


def bench_environment(home: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "MLFLOW_TRACKING_URI" and not key.startswith("NBDEPLOY_")
    }
    env["NBDEPLOY_HOME"] = str(home)
    env[TOKEN_ENV] = uuid.uuid4().hex
    return env


def _count_notebooks(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*.ipynb"))


@dataclass
class Results:
    quick: bool
    repetitions: int
    sweep_repetitions: int
    first_run: Sample
    nbdeploy: System
    nbdeploy_no_mlflow: System
    papermill: System
    sweep_p1: System
    sweep_p2: System
    mlflow_db_created: bool
    warmups: dict[str, Sample]

    @property
    def single_systems(self) -> list[System]:
        return [self.nbdeploy, self.nbdeploy_no_mlflow, self.papermill]

    @property
    def sweep_systems(self) -> list[System]:
        return [self.sweep_p1, self.sweep_p2]

    def ratios(self) -> dict[str, float]:
        return {
            "run_vs_papermill_cli": self.nbdeploy.median / self.papermill.median,
            "run_vs_papermill_cli_no_mlflow": (
                self.nbdeploy_no_mlflow.median / self.papermill.median
            ),
            "sweep_parallel_speedup": self.sweep_p1.median / self.sweep_p2.median,
        }

    def lingering(self) -> int:
        systems = self.single_systems + self.sweep_systems
        samples = [self.first_run, *self.warmups.values()]
        samples += [s for system in systems for s in system.samples]
        return sum(s.lingering for s in samples)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: round(value, 4) for name, value in self.ratios().items()}
        data.update(
            {
                "nbdeploy_run_s": round(self.nbdeploy.median, 3),
                "nbdeploy_run_no_mlflow_s": round(self.nbdeploy_no_mlflow.median, 3),
                "papermill_cli_s": round(self.papermill.median, 3),
                "sweep_parallel1_s": round(self.sweep_p1.median, 3),
                "sweep_parallel2_s": round(self.sweep_p2.median, 3),
                "nbdeploy_first_run_s": round(self.first_run.seconds, 3),
                "repetitions": self.repetitions,
                "sweep_repetitions": self.sweep_repetitions,
                "quick": self.quick,
                "samples_s": {
                    system.name: [round(t, 3) for t in system.times]
                    for system in self.single_systems + self.sweep_systems
                },
                "goals": {
                    "run_vs_papermill_cli": f"<= {GOAL_RUN_RATIO}",
                    "run_vs_papermill_cli_no_mlflow": f"<= {GOAL_RUN_RATIO}",
                    "sweep_parallel_speedup": f">= {GOAL_SWEEP_SPEEDUP}",
                },
                "lingering_processes": self.lingering(),
                "mlflow_db_created": self.mlflow_db_created,
                "cpu_count": os.cpu_count(),
            }
        )
        return data


def run_benchmarks(quick: bool, workdir: Path) -> Results:
    repetitions = 3 if quick else 7
    sweep_repetitions = 1 if quick else 3
    home = workdir / "home"
    papermill_out = workdir / "papermill"
    sweep_out = workdir / "sweeps"
    for folder in (home, papermill_out, sweep_out):
        folder.mkdir()
    env = bench_environment(home)

    nbdeploy_run: list[str | Path] = [NBDEPLOY, "run", NOTEBOOK, *_parameter_args()]
    nbdeploy_run_no_mlflow: list[str | Path] = [*nbdeploy_run, "--no-mlflow"]

    def papermill_run(tag: str) -> list[str | Path]:
        output = papermill_out / f"train-{tag}.ipynb"
        return [PAPERMILL, NOTEBOOK, output, *_parameter_args(), "--cwd", NOTEBOOK.parent]

    # Warm-ups (untimed in the comparison): papermill first, so that the first nbdeploy run
    # finds warm file caches and its extra time is mostly the MLflow database set-up.
    warmups: dict[str, Sample] = {}
    log("warm-up: papermill")
    warmups["papermill"] = run_command(
        "papermill (warm-up)", papermill_run("warmup"), env, RUN_TIMEOUT_S
    )
    log("warm-up: nbdeploy run (first run in a fresh NBDEPLOY_HOME)")
    first_run = run_command("nbdeploy run (first run)", nbdeploy_run, env, RUN_TIMEOUT_S)
    mlflow_db_created = (home / "mlflow.db").exists()
    if not mlflow_db_created:
        log(f"  ! no mlflow.db in {home} after a run with MLflow on")
    log("warm-up: nbdeploy run --no-mlflow")
    warmups["nbdeploy_no_mlflow"] = run_command(
        "nbdeploy run --no-mlflow (warm-up)", nbdeploy_run_no_mlflow, env, RUN_TIMEOUT_S
    )

    nbdeploy = System("nbdeploy_run", "nbdeploy run")
    no_mlflow = System("nbdeploy_run_no_mlflow", "nbdeploy run --no-mlflow")
    papermill = System("papermill_cli", "papermill CLI")
    commands: list[tuple[System, Callable[[int], list[str | Path]]]] = [
        (nbdeploy, lambda i: nbdeploy_run),
        (papermill, lambda i: papermill_run(str(i))),
        (no_mlflow, lambda i: nbdeploy_run_no_mlflow),
    ]
    for i in range(repetitions):
        for system, command_for in commands:
            sample = run_command(system.label, command_for(i), env, RUN_TIMEOUT_S)
            if system is papermill and not (papermill_out / f"train-{i}.ipynb").exists():
                raise BenchError(f"papermill exited 0 but wrote no output notebook (run {i})")
            system.samples.append(sample)
            log(f"[{i + 1}/{repetitions}] {system.label:<26} {sample.seconds:6.2f}s")

    sweep_p1 = System("sweep_parallel1", "sweep x8 --parallel 1")
    sweep_p2 = System("sweep_parallel2", "sweep x8 --parallel 2")
    for i in range(sweep_repetitions):
        for system, parallel in ((sweep_p1, 1), (sweep_p2, 2)):
            out = sweep_out / f"p{parallel}-{i}"
            sweep: list[str | Path] = [NBDEPLOY, "run", NOTEBOOK, *SWEEP_ARGS]
            sweep += ["--parallel", str(parallel), "--no-mlflow", "--output-dir", out]
            sample = run_command(system.label, sweep, env, SWEEP_TIMEOUT_S)
            written = _count_notebooks(out) if out.exists() else 0
            if written != SWEEP_COMBINATIONS:
                raise BenchError(
                    f"{system.label}: exited 0 but wrote {written} output notebooks in {out}, "
                    f"expected {SWEEP_COMBINATIONS}\n--- stderr (tail) ---\n{_tail(sample.stderr)}"
                )
            system.samples.append(sample)
            log(f"[{i + 1}/{sweep_repetitions}] {system.label:<26} {sample.seconds:6.2f}s")

    return Results(
        quick=quick,
        repetitions=repetitions,
        sweep_repetitions=sweep_repetitions,
        first_run=first_run,
        nbdeploy=nbdeploy,
        nbdeploy_no_mlflow=no_mlflow,
        papermill=papermill,
        sweep_p1=sweep_p1,
        sweep_p2=sweep_p2,
        mlflow_db_created=mlflow_db_created,
        warmups=warmups,
    )


# --- report --------------------------------------------------------------------------------


def _verdict(value: float, goal: float, at_most: bool) -> str:
    ok = value <= goal if at_most else value >= goal
    return "PASS" if ok else "MISS"


def report(results: Results) -> str:
    mode = "quick" if results.quick else "full"
    lines = [
        f"nbdeploy pipeline benchmark ({mode}; {os.cpu_count()} CPUs; {NOTEBOOK.name}, "
        f"{' '.join(_parameter_args())})",
        "",
        f"{'system':<28} {'n':>2} {'median s':>9} {'min s':>7} {'max s':>7}",
    ]
    for system in results.single_systems + results.sweep_systems:
        times = system.times
        lines.append(
            f"{system.label:<28} {len(times):>2} {system.median:>9.2f} "
            f"{min(times):>7.2f} {max(times):>7.2f}"
        )
    lines.append(
        f"{'nbdeploy run, first run':<28} {1:>2} {results.first_run.seconds:>9.2f}"
        "   (creates the MLflow database; not in the ratios)"
    )
    lines += ["", f"{'ratio':<32} {'value':>6}  {'goal':<7} verdict"]
    ratios = results.ratios()
    goals = {
        "run_vs_papermill_cli": (GOAL_RUN_RATIO, True),
        "run_vs_papermill_cli_no_mlflow": (GOAL_RUN_RATIO, True),
        "sweep_parallel_speedup": (GOAL_SWEEP_SPEEDUP, False),
    }
    for name, value in ratios.items():
        goal, at_most = goals[name]
        sign = "<=" if at_most else ">="
        lines.append(f"{name:<32} {value:>6.3f}  {sign} {goal:<4} {_verdict(value, goal, at_most)}")
    lingering = results.lingering()
    if lingering:
        lines += [
            "",
            f"note: {lingering} process(es) outlived the command that started them "
            "(awaited before the next timed command; not in the times)",
        ]
    if not results.mlflow_db_created:
        lines += ["", "note: nbdeploy created no mlflow.db in NBDEPLOY_HOME with MLflow on"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="3 runs each, 1 sweep each (under 2 minutes)"
    )
    parser.add_argument(
        "--json", action="store_true", help="end stdout with one JSON object of results"
    )
    args = parser.parse_args(argv)

    for executable in (NBDEPLOY, PAPERMILL):
        if not os.access(executable, os.X_OK):
            print(
                f"bench: {executable} not found: run this script with the venv's python "
                "(.venv/bin/python bench/pipeline.py)",
                file=sys.stderr,
            )
            return 2
    if not NOTEBOOK.exists():
        print(f"bench: {NOTEBOOK} not found", file=sys.stderr)
        return 2

    try:
        with tempfile.TemporaryDirectory(prefix="nbdeploy-bench-") as workdir:
            results = run_benchmarks(args.quick, Path(workdir))
    except BenchError as error:
        print(f"bench: FAILED: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130

    print(report(results))
    if args.json:
        print(json.dumps(results.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
