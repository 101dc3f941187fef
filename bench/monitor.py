"""Benchmark: what monitoring a deployment costs: drift statistics of served inputs.

What is compared, and why
-------------------------
A deployed model is watched by setting windows of the inputs it served against its training
data (nbdeploy/monitor/drift.py): the reference is profiled once, at deploy time, and every
window is compared with that profile. Windows can be large (a day of traffic), and the
comparison runs beside the service, so it must be quick: the goal is a window of 1,000,000
rows x 20 numeric features compared in at most 2 s (PSI and a KS test for every feature).

**drift.** A seeded numpy generator draws a reference of 1,000,000 x 20 standard normal
features and a window of the same size in which three features moved: ``f3`` by one standard
deviation, ``f7`` to twice the spread, ``f11`` by 0.75 standard deviation (PSI 0.5 to 0.9,
normed Wasserstein distance 0.75 to 1).

- ``drift_profile_seconds_1m_x20``: ``profile_reference`` of the reference (once per deploy);
- ``drift_seconds_1m_x20``: ``compare`` of the window (a 2-D float array) against that
  profile, best of 3 (of 1 with ``--quick``), after one untimed call on 1,000 rows; goal
  <= 2 s. The same window as a pandas DataFrame is timed once too
  (``drift_seconds_1m_x20_dataframe``);
- Evidently's data-drift preset, ``Report([DataDriftPreset()]).run(current_data=...,
  reference_data=...)`` on pandas DataFrames of the same data (timed from the DataFrames to
  the finished run, once; its import is timed apart). Evidently takes minutes for 1,000,000
  rows (4 to 5 minutes on 2 busy cores), so with ``--quick`` it runs on the first 100,000
  rows of the reference and of the window (``--evidently-rows`` to choose), and says so.
  nbdeploy is then timed on the same rows as well (its profile of those rows, then
  ``compare``; with all rows, the figures above): ``drift_vs_evidently`` = nbdeploy
  ``compare`` / Evidently on the same rows (below 1: nbdeploy is quicker). Evidently builds
  nothing ahead, so ``drift_with_profile_vs_evidently`` also counts nbdeploy's profile;
  ``drift_vs_evidently_per_row`` sets the seconds per row of nbdeploy's 1,000,000-row compare
  against Evidently's at its row count;
- ``drift_agreement``: the features each tool flags on those same rows (nbdeploy: status
  "drift", PSI >= 0.25; Evidently: its per-column drift test, a normed Wasserstein distance
  >= 0.1 for numeric columns of more than 1,000 rows), which both flag, and which only one.

Evidently runs in an environment of its own, ``bench/.venv-evidently`` (``make bench`` makes
it): Evidently 0.7 pins plotly < 6 and imports a function that pandas 3 removed, while nbdeploy
uses plotly 7 and pandas 3. The arrays go to it as .npy files; its import and its run are
timed inside that process, the run alone is compared.

Sections
--------
``main()`` runs the sections in ``SECTIONS`` and merges their results; each section returns
its results (a dict, merged into the JSON) and the lines it adds to the printed report.

Usage::

    .venv/bin/python bench/monitor.py [--quick] [--json] [--evidently-rows N]

``--quick``: each timing once and Evidently on 100,000 rows (under a minute on 2 cores);
otherwise nbdeploy's ``compare`` best of 3 and Evidently on all 1,000,000 rows, once (several
minutes). ``--json``: the last line of stdout is one JSON object with the results. Missing
the goal does not change the exit status (this is a measurement, not a test); failing to
measure (Evidently missing included) does.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchkit import BenchError, log, tail

ROWS = 1_000_000
FEATURES = 20
SEED = 20_240_601
SHIFTS = {"f3": ("+1 sd", 1.0, 1.0), "f7": ("x2 sd", 0.0, 2.0), "f11": ("+0.75 sd", 0.75, 1.0)}
QUICK_EVIDENTLY_ROWS = 100_000
GOAL_DRIFT_S = 2.0  # compare of 1,000,000 x 20 numeric features, at most
EVIDENTLY_SPEC = "evidently>=0.7,<0.8"
EVIDENTLY_VENV = Path(__file__).resolve().parent / ".venv-evidently"


class EvidentlyMissing(BenchError):
    """Evidently cannot be imported: its half of the comparison is not measured."""


@dataclass
class Section:
    """What one section measured: results for the JSON, lines for the printed report, and
    the problems that mean a measurement is missing."""

    results: dict[str, Any]
    lines: list[str]
    problems: list[str] = field(default_factory=list)


# --- drift ---------------------------------------------------------------------------------


def make_data() -> tuple[Any, Any, list[str]]:
    """The reference and the window, ``ROWS`` x ``FEATURES`` float64, and the feature names."""
    import numpy as np

    generator = np.random.default_rng(SEED)
    reference = generator.standard_normal((ROWS, FEATURES))
    window = generator.standard_normal((ROWS, FEATURES))
    names = [f"f{j}" for j in range(FEATURES)]
    for name, (_, shift, scale) in SHIFTS.items():
        column = names.index(name)
        window[:, column] = window[:, column] * scale + shift
    return reference, window, names


def best_of(runs: int, call: Callable[[], Any]) -> tuple[float, Any]:
    """The shortest wall time of ``runs`` calls, and the last call's result."""
    best, result = float("inf"), None
    for _ in range(runs):
        gc.collect()
        started = time.perf_counter()
        result = call()
        best = min(best, time.perf_counter() - started)
    return best, result


def evidently_python() -> str:
    """The interpreter of Evidently's own environment: ``make bench`` makes it, apart from
    nbdeploy's (Evidently 0.7 pins plotly < 6 and needs pandas < 3; nbdeploy uses both newer)."""
    python = os.environ.get("NBDEPLOY_BENCH_EVIDENTLY_PYTHON") or str(
        EVIDENTLY_VENV / "bin" / "python"
    )
    if not Path(python).exists():
        raise EvidentlyMissing(
            f"Evidently's environment {EVIDENTLY_VENV} is missing: run `make bench`, or make it "
            f"with `python3 -m venv {EVIDENTLY_VENV} && {EVIDENTLY_VENV}/bin/pip install "
            f"'{EVIDENTLY_SPEC}' 'pandas<3'`"
        )
    return python


def run_evidently_worker(reference: Any, window: Any, names: list[str]) -> dict[str, Any]:
    """Evidently's drift preset on the two arrays, in Evidently's environment: its import
    and run times (measured there) and the columns it flags."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="nbdeploy-bench-") as folder:
        np.save(Path(folder) / "reference.npy", reference)
        np.save(Path(folder) / "window.npy", window)
        (Path(folder) / "names.json").write_text(json.dumps(names))
        completed = subprocess.run(
            [evidently_python(), __file__, "--evidently-worker", folder],
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
    if completed.returncode != 0:
        raise EvidentlyMissing(f"Evidently failed: {tail(completed.stderr)}")
    answer: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return answer


def evidently_worker(folder: str) -> int:
    """Runs in Evidently's environment: time its import and its DataDriftPreset run."""
    import numpy as np

    started = time.perf_counter()
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    import_s = time.perf_counter() - started
    names = json.loads((Path(folder) / "names.json").read_text())
    reference = pd.DataFrame(np.load(Path(folder) / "reference.npy"), columns=names)
    window = pd.DataFrame(np.load(Path(folder) / "window.npy"), columns=names)
    gc.collect()
    started = time.perf_counter()
    snapshot = Report([DataDriftPreset()], include_tests=True).run(
        current_data=window, reference_data=reference
    )
    seconds = time.perf_counter() - started
    flagged = []
    for test in snapshot.dict().get("tests", []):
        params = (test.get("metric_config") or {}).get("params") or {}
        if str(params.get("type", "")).endswith("ValueDrift") and test.get("status") == "FAIL":
            flagged.append(str(params["column"]))
    version = importlib.metadata.version("evidently")
    print(
        json.dumps(
            {"seconds": seconds, "import_seconds": import_s, "flagged": flagged, "version": version}
        )
    )
    return 0


@dataclass
class Timed:
    """nbdeploy on one reference and window: the profile, its time, the time of compare and
    the features it flagged."""

    profile: Any
    profile_s: float
    compare_s: float
    flagged: list[str]


def time_nbdeploy(reference: Any, window: Any, runs: int) -> Timed:
    """``profile_reference`` once, then ``compare`` best of ``runs`` (after one untimed call
    on 1,000 rows, so that no first-call cost is counted in a single run)."""
    from nbdeploy.monitor.drift import compare, profile_reference

    profile_s, profile = best_of(1, lambda: profile_reference(reference))
    compare(profile, window[:1_000])
    compare_s, report = best_of(runs, lambda: compare(profile, window))
    return Timed(profile, profile_s, compare_s, report.drifted)


def drift_section(quick: bool, evidently_rows: int) -> Section:
    import pandas as pd

    from nbdeploy.monitor.drift import compare

    runs = 1 if quick else 3
    log(f"drift: drawing {ROWS:,} x {FEATURES} reference and window rows")
    reference, window, names = make_data()
    log(f"drift: nbdeploy profile_reference, then compare (best of {runs})")
    full = time_nbdeploy(reference, window, runs)
    as_frame = pd.DataFrame(window, columns=names)
    frame_s, _ = best_of(1, lambda: compare(full.profile, as_frame))

    results: dict[str, Any] = {
        "drift_rows": ROWS,
        "drift_features": FEATURES,
        "drift_seconds_1m_x20": round(full.compare_s, 3),
        "drift_timing_runs": runs,
        "drift_seconds_1m_x20_dataframe": round(frame_s, 3),
        "drift_profile_seconds_1m_x20": round(full.profile_s, 3),
        "drift_flagged_1m": full.flagged,
        "drift_shifted": list(SHIFTS),
    }
    shifted = ", ".join(f"{name} {label}" for name, (label, _, _) in SHIFTS.items())
    lines = [
        f"drift: reference {ROWS:,} x {FEATURES} floats, window {ROWS:,} x {FEATURES} ({shifted})",
        f"  {'nbdeploy profile_reference (once per deploy)':<58} {full.profile_s:>8.2f} s",
        f"  {f'nbdeploy compare, PSI + KS per feature (best of {runs})':<58} "
        f"{full.compare_s:>8.2f} s",
        f"  {'nbdeploy compare, the window as a DataFrame (once)':<58} {frame_s:>8.2f} s",
        f"  nbdeploy flags: {', '.join(full.flagged) or 'nothing'}",
    ]
    try:
        evidently = evidently_part(reference, window, names, min(evidently_rows, ROWS), full, runs)
    except EvidentlyMissing as error:
        results.update(evidently_seconds=None, evidently_rows=None, drift_vs_evidently=None)
        results["drift_agreement"] = None
        lines.append(f"  Evidently: not measured: {error}")
        return Section(results, lines, [str(error)])
    results.update(evidently.results)
    return Section(results, lines + evidently.lines)


def evidently_part(
    reference: Any, window: Any, names: list[str], rows: int, full: Timed, runs: int
) -> Section:
    """Evidently's drift preset on the first ``rows`` rows, and nbdeploy on the same."""
    import numpy as np

    sample = "all rows" if rows == ROWS else f"the first {rows:,} rows of each (a sample)"
    log(f"drift: Evidently DataDriftPreset on {sample} (in its own environment)")
    answer = run_evidently_worker(reference[:rows], window[:rows], names)
    evidently_s, import_s = float(answer["seconds"]), float(answer["import_seconds"])
    by_evidently = list(answer["flagged"])
    note = f"Evidently {answer['version']}"
    if rows == ROWS:
        same = full
    else:
        log(f"drift: nbdeploy on the same {rows:,} rows")
        same_reference = np.ascontiguousarray(reference[:rows])
        same = time_nbdeploy(same_reference, np.ascontiguousarray(window[:rows]), runs)

    both = [name for name in names if name in same.flagged and name in by_evidently]
    only_nbdeploy = [name for name in same.flagged if name not in by_evidently]
    only_evidently = [name for name in by_evidently if name not in same.flagged]
    agree = not only_nbdeploy and not only_evidently
    results = {
        "evidently_seconds": round(evidently_s, 3),
        "evidently_rows": rows,
        "evidently_sampled": rows != ROWS,
        "evidently_import_seconds": round(import_s, 3),
        "evidently_note": note or None,
        "drift_seconds_evidently_rows": round(same.compare_s, 4),
        "drift_profile_seconds_evidently_rows": round(same.profile_s, 4),
        "drift_vs_evidently": round(same.compare_s / evidently_s, 5),
        "drift_with_profile_vs_evidently": round(
            (same.profile_s + same.compare_s) / evidently_s, 5
        ),
        "drift_vs_evidently_per_row": round((full.compare_s / ROWS) / (evidently_s / rows), 5),
        "drift_agreement": {
            "rows": rows,
            "both": both,
            "nbdeploy_only": only_nbdeploy,
            "evidently_only": only_evidently,
            "agree": agree,
        },
    }
    lines = [
        f"  Evidently DataDriftPreset on {sample}:",
        f"  {'  Evidently run (import ' + f'{import_s:.1f} s, not counted)':<58} "
        f"{evidently_s:>8.2f} s",
        f"  {'  nbdeploy profile_reference of the same rows':<58} {same.profile_s:>8.3f} s",
        f"  {f'  nbdeploy compare of the same rows (best of {runs})':<58} {same.compare_s:>8.3f} s",
        f"  flagged on these rows: nbdeploy {', '.join(same.flagged) or 'nothing'}; "
        f"Evidently {', '.join(by_evidently) or 'nothing'} -> {'agree' if agree else 'DISAGREE'}",
    ]
    if note:
        lines.append(f"  note: {note}")
    return Section(results, lines)


# --- overhead ------------------------------------------------------------------------------

OVERHEAD_FEATURES = 20
OVERHEAD_CONNECTIONS = 8
GOAL_MONITOR_RATIO = 0.95  # throughput with monitoring on / off, at least
LUA_POST = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
"""


class MonitoredServer:
    """One server of the deployed version, started the way nbdeploy starts it (its serving
    leader and BentoML workers), with the request log on or off."""

    def __init__(self, version: Any, folder: Path, logging: bool, env: dict[str, str]) -> None:
        from nbdeploy.deployment.runtime.processes import free_port
        from nbdeploy.deployment.traffic.strategies import REQUESTS_DIR, REQUESTS_STATS_DIR
        from nbdeploy.service.builder import bentoml_environment

        self.port = free_port("127.0.0.1")
        label = "on" if logging else "off"
        spec: dict[str, Any] = {
            "bento_tag": version.bento_tag,
            "host": "127.0.0.1",
            "port": self.port,
            "workers": 1,
            "metrics_dir": str(folder / "metrics" / f"bench-{label}"),
            "version": version.version,
        }
        if logging:
            spec["request_log_dir"] = str(folder / REQUESTS_DIR)
            spec["request_log_stats_dir"] = str(folder / REQUESTS_STATS_DIR)
        # Monitoring off means all of it: BentoML's own access log too. One OpenMP thread
        # per worker, as a server with several workers would run: the model's two spinning
        # OpenMP threads on two cores would turn any other thread (wrk's, the dashboard's)
        # into stalls out of proportion to its CPU, on both sides alike.
        environment = {
            **env,
            **bentoml_environment(),
            "NBDEPLOY_ACCESS_LOG": "0",
            "OMP_NUM_THREADS": "1",
        }
        self.log = open(folder / f"bench-{label}.log", "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nbdeploy.deployment.runtime.serving", json.dumps(spec)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=folder,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"the server at {self.url} exited ({self.process.returncode})")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise BenchError(f"the server at {self.url} was not ready in {timeout:g} s")

    def stop(self) -> None:
        import signal

        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.close()


def run_wrk_post(
    url: str, body: dict[str, Any], work: Path, env: dict[str, str], seconds: int
) -> Any:
    from benchkit import parse_wrk

    script = work / "post.lua"
    script.write_text(LUA_POST.format(body=json.dumps(json.dumps(body))))
    command = [
        "wrk", "-t2", f"-c{OVERHEAD_CONNECTIONS}", f"-d{seconds}s", "--latency",
        "-s", str(script), url,
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=seconds + 60, check=False
        )
    except FileNotFoundError:
        raise BenchError("wrk is missing: run `make bench` (it installs Debian's wrk)") from None
    if done.returncode != 0 or "Requests/sec" not in done.stdout:
        raise BenchError(f"wrk failed against {url}:\n{tail(done.stderr or done.stdout)}")
    result = parse_wrk(done.stdout)
    if result.failed:
        raise BenchError(f"{result.failed} failed requests against {url}")
    return result


class DashboardLoad:
    """What a notebook's dashboard does while it is open: a metrics snapshot (traffic from
    the request log, quality and drift of the window against the reference) every second."""

    def __init__(self, name: str) -> None:
        import threading

        self.name = name
        self.stopping = threading.Event()
        self.snapshots = 0
        self.seconds: list[float] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        from nbdeploy.monitor.metrics import snapshot

        while not self.stopping.is_set():
            started = time.perf_counter()
            snapshot(self.name, 300)
            self.seconds.append(time.perf_counter() - started)
            self.snapshots += 1
            self.stopping.wait(max(0.0, 1.0 - (time.perf_counter() - started)))

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)


def overhead_section(quick: bool) -> Section:
    """Throughput of one version with monitoring on (request log, no BentoML access log,
    a dashboard's snapshot every second) against the same version with it off, at
    concurrency 8, in alternating rounds."""
    import numpy as np
    import pandas as pd
    from benchkit import TOKEN_ENV, base_environment, end_processes, marked_pids
    from sklearn.ensemble import HistGradientBoostingClassifier

    seconds, rounds = (8, 3) if quick else (15, 4)
    token = f"monitor-{os.getpid()}-{time.monotonic_ns()}"
    env = base_environment(token)
    with tempfile.TemporaryDirectory(prefix="nbdeploy-bench-monitor-") as work_dir:
        work = Path(work_dir)
        os.environ["NBDEPLOY_HOME"] = str(work / "home")
        os.environ[TOKEN_ENV] = token
        env["NBDEPLOY_HOME"] = str(work / "home")
        servers: list[MonitoredServer] = []
        try:
            import nbdeploy
            from nbdeploy.deployment import traffic
            from nbdeploy.deployment.store import DeploymentStore
            from nbdeploy.store import default_store

            rng = np.random.default_rng(SEED)
            names = [f"f{i}" for i in range(OVERHEAD_FEATURES)]
            X = pd.DataFrame(rng.normal(size=(20_000, OVERHEAD_FEATURES)), columns=names)
            y = (X["f0"] + X["f3"] > 0).astype(int)
            model = HistGradientBoostingClassifier(max_iter=30).fit(X, y)
            log("overhead: deploying a 20-feature classifier with --reference X")
            nbdeploy.deploy(model, name="watched", namespace={"X": X, "model": model},
                            reference="X", mlflow=False)  # fmt: skip
            version = DeploymentStore(default_store()).versions("watched")[-1]
            folder = traffic.folder("watched")
            on = MonitoredServer(version, folder, True, env)
            off = MonitoredServer(version, folder, False, env)
            servers += [on, off]
            on.wait_ready()
            off.wait_ready()
            body = {"rows": [dict(zip(names, map(float, X.iloc[7]), strict=True))]}
            for server in (on, off):  # warm both
                run_wrk_post(server.url + "/predict", body, work, env, 2)
            rps: dict[str, list[float]] = {"on": [], "off": []}
            p50: dict[str, list[float]] = {"on": [], "off": []}
            snapshots: list[float] = []
            for index in range(rounds):
                order = [("on", on), ("off", off)] if index % 2 == 0 else [("off", off), ("on", on)]
                for label, server in order:
                    log(f"overhead: round {index + 1}/{rounds}, monitoring {label}, {seconds} s")
                    dashboard = DashboardLoad("watched") if label == "on" else None
                    try:
                        result = run_wrk_post(server.url + "/predict", body, work, env, seconds)
                    finally:
                        if dashboard is not None:
                            dashboard.stop()
                            snapshots += dashboard.seconds
                    rps[label].append(result.rps)
                    p50[label].append(result.p50_ms)
            from nbdeploy.monitor.requests import log_stats

            stats = log_stats("watched")
        finally:
            for server in servers:
                server.stop()
            with contextlib.suppress(Exception):
                nbdeploy.stop("watched")
            from nbdeploy.deployment.runtime import launcher

            launcher.shutdown(work / "home")
            end_processes(marked_pids(token))
            os.environ.pop(TOKEN_ENV, None)
    on_rps, off_rps = statistics.mean(rps["on"]), statistics.mean(rps["off"])
    ratio = on_rps / off_rps
    results = {
        "monitor_on_vs_off_rps": round(ratio, 3),
        "monitor_on_rps": round(on_rps, 1),
        "monitor_off_rps": round(off_rps, 1),
        "monitor_on_p50_ms": round(statistics.mean(p50["on"]), 2),
        "monitor_off_p50_ms": round(statistics.mean(p50["off"]), 2),
        "monitor_rounds": rounds,
        "monitor_seconds_per_run": seconds,
        "monitor_log_rows_written": stats["written"],
        "monitor_log_rows_dropped": stats["dropped"],
        "monitor_snapshot_ms_p50": round(1000 * statistics.median(snapshots), 1)
        if snapshots
        else None,
    }
    lines = [
        f"overhead: one worker, wrk -c{OVERHEAD_CONNECTIONS}, {rounds} alternating rounds of "
        f"{seconds} s; on = request log + a dashboard snapshot every second",
        f"  {'monitoring off':<40} {off_rps:>8.1f} req/s  p50 {results['monitor_off_p50_ms']} ms",
        f"  {'monitoring on':<40} {on_rps:>8.1f} req/s  p50 {results['monitor_on_p50_ms']} ms",
        f"  request log: {stats['written']} rows written, {stats['dropped']} dropped; "
        f"snapshot p50 {results['monitor_snapshot_ms_p50']} ms",
    ]
    return Section(results, lines)


# --- sections ------------------------------------------------------------------------------


def run_drift(args: argparse.Namespace) -> Section:
    rows = args.evidently_rows or (QUICK_EVIDENTLY_ROWS if args.quick else ROWS)
    return drift_section(args.quick, rows)


def run_overhead(args: argparse.Namespace) -> Section:
    return overhead_section(args.quick)


SECTIONS: list[tuple[str, Callable[[argparse.Namespace], Section]]] = [
    ("drift", run_drift),
    ("overhead", run_overhead),
]


def ratio_lines(results: dict[str, Any]) -> list[str]:
    lines = [f"{'result':<34} {'value':>10}  {'goal':<8} verdict"]
    goals = {"drift_seconds_1m_x20": GOAL_DRIFT_S}
    at_least = {"monitor_on_vs_off_rps": GOAL_MONITOR_RATIO}
    for name, goal in at_least.items():
        value = results.get(name)
        if value is not None:
            verdict = "PASS" if value >= goal else "MISS"
            lines.append(f"{name:<34} {value:>10.4g}  >= {goal:<5g} {verdict}")
    for name in (
        "drift_seconds_1m_x20",
        "drift_profile_seconds_1m_x20",
        "drift_vs_evidently",
        "drift_with_profile_vs_evidently",
        "drift_vs_evidently_per_row",
    ):
        value = results.get(name)
        if value is None:
            continue
        goal = goals.get(name)
        if goal is None:
            lines.append(f"{name:<34} {value:>10.4g}")
        else:
            verdict = "PASS" if value <= goal else "MISS"
            lines.append(f"{name:<34} {value:>10.4g}  <= {goal:<5g} {verdict}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="each timing once, Evidently on 100,000 rows"
    )
    parser.add_argument(
        "--json", action="store_true", help="end stdout with one JSON object of results"
    )
    parser.add_argument(
        "--evidently-rows",
        type=int,
        default=None,
        help=f"rows of each side given to Evidently (default {QUICK_EVIDENTLY_ROWS:,} with "
        f"--quick, else {ROWS:,})",
    )
    parser.add_argument(
        "--section",
        action="append",
        choices=[name for name, _ in SECTIONS],
        help="run only this section (repeatable)",
    )
    parser.add_argument("--evidently-worker", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.evidently_worker:
        return evidently_worker(args.evidently_worker)
    if args.evidently_rows is not None and args.evidently_rows < 1_000:
        parser.error("--evidently-rows must be at least 1000")

    chosen = [(name, run) for name, run in SECTIONS if not args.section or name in args.section]
    results: dict[str, Any] = {"quick": args.quick, "cpus": os.cpu_count()}
    mode = "quick" if args.quick else "full"
    lines = [f"nbdeploy monitoring benchmark ({mode}; {os.cpu_count()} CPUs)"]
    problems: list[str] = []
    try:
        for name, run in chosen:
            section = run(args)
            overlap = set(section.results) & set(results)
            if overlap:
                raise BenchError(f"section {name} reports keys already taken: {sorted(overlap)}")
            results.update(section.results)
            lines += ["", *section.lines]
            problems += section.problems
    except (BenchError, OSError, RuntimeError, ValueError) as error:
        print(f"bench: FAILED: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130

    lines += ["", *ratio_lines(results)]
    print("\n".join(lines))
    for problem in problems:
        print(f"bench: NOT MEASURED: {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps(results))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
