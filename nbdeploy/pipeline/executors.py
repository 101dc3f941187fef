"""Where the runs of a sweep or pipeline execute: here, or on a Dask cluster.

Sweeps (:mod:`nbdeploy.pipeline.sweep`) and pipelines (:mod:`nbdeploy.pipeline.dag`) run
every combination or step through an :class:`Executor`, which gives them a pool of threads
(each thread drives one run) and the function that executes and records a run; that
function is always :func:`nbdeploy.pipeline.runner.execute_run`, so a run is recorded the
same way (state store, MLflow, output notebook) whichever executor ran it.

``local`` (the default) runs ``parallel`` kernels at once on this machine.

``dask`` runs each combination or step as one task on a Dask cluster: a
``distributed.LocalCluster`` of worker processes on this machine, or any scheduler named by
``--scheduler`` / ``NBDEPLOY_DASK_SCHEDULER`` (dask-gateway, dask-kubernetes, Coiled, ``dask
scheduler``). The task (:func:`nbdeploy.pipeline.dask_worker.run_task`) carries the
notebook, its parameter values and its input files, runs the notebook with nbdeploy's engine
in a temporary folder of the worker, and returns the output notebook, what the notebook
logged, its artifacts and its declared outputs; the client writes them where a local run
leaves them and records the run. What travels with each task:

- the notebook's folder (the kernel's working directory, as locally), without hidden
  entries, ``__pycache__``, nbdeploy's home and the output folder; or, when given, only the
  files and folders named by ``--input`` (pipeline.yaml: a step's ``inputs:``);
- for a pipeline step, the declared outputs of the steps it needs (other steps' outputs
  never travel in a folder), and its own declared outputs come back;
- at most ``NBDEPLOY_DASK_MAX_MB`` (100) MB each way, else a clear error.

A failed notebook is an outcome, as locally; a lost worker makes Dask run the task again
elsewhere (``distributed.scheduler.allowed-failures``). Ctrl-C stops the running tasks'
kernels, records their runs as interrupted with the output they have so far, cancels what
has not started and raises KeyboardInterrupt again. dask and distributed are imported only
when the dask executor is chosen.

As locally, at most ``parallel`` runs are under way (one client thread each): the others
are not submitted yet, so Ctrl-C drops them as it drops runs not started locally. The
files a sweep's runs share are sent to the cluster once. The local cluster starts in the
background while the sweep or pipeline is checked; on Linux its workers are forked after
this process imported the engine (ready at once, nothing imported twice), and they skip
Dask's profiler and work stealing, which only cost the kernels CPU here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbdeploy import config
from nbdeploy.errors import NbdeployError
from nbdeploy.pipeline.runner import (
    INTERRUPTED_MESSAGE,
    Notify,
    OnKernel,
    PreparedRun,
    RunOutcome,
    RunPool,
    _ignore,
    execute_run,
)
from nbdeploy.private_files import (
    open_private,
    private_dir,
    write_private_bytes,
    write_private_text,
)
from nbdeploy.store.runs import INTERRUPTED, RunStore

if TYPE_CHECKING:
    from nbdeploy.pipeline.execute import ExecutionResult
    from nbdeploy.pipeline.progress import Progress

KINDS = ("local", "dask")
SCHEDULER_ENV = "NBDEPLOY_DASK_SCHEDULER"
MAX_MB_ENV = "NBDEPLOY_DASK_MAX_MB"
CONNECT_TIMEOUT_ENV = "NBDEPLOY_DASK_CONNECT_TIMEOUT"
DEFAULT_MAX_MB = 100.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0
MAX_FILES = 10_000
STOP_WAIT_S = 15.0  # after Ctrl-C: how long a stopped task may take to hand back its output
BROADCAST_LIMIT = 256 << 20  # shared files go to every worker when that costs less than this
INSTALL_HINT = "pip install 'dask[distributed]'"
SKIPPED_NAMES = ("__pycache__",)


def _local_cluster_config() -> dict[str, Any]:
    """Dask settings for the local cluster nbdeploy starts (decided in the caller's thread,
    before the cluster starts in the background)."""
    from nbdeploy.pipeline.context import _kernel_shell

    settings: dict[str, Any] = {
        # A task is a notebook run of seconds or more, in a kernel of its own: sampling the
        # worker's threads every 10 ms, ticking every 20 ms and stealing tasks between
        # workers tell or gain nothing and cost CPU the kernels need.
        "distributed.worker.profile.enabled": False,
        "distributed.admin.tick.interval": "500ms",
        "distributed.admin.system-monitor.interval": "2s",
        "distributed.worker.memory.monitor-interval": "1s",
        "distributed.scheduler.work-stealing": False,
    }
    # Forked workers are ready at once, with the engine this process imported; spawned
    # ones start a fresh interpreter and import it all again (seconds on 2 cores). Only on
    # Linux (fork is unsafe with macOS's frameworks) and not inside a Jupyter kernel
    # (%deploy run: its sockets and threads are no state to copy).
    if sys.platform.startswith("linux") and _kernel_shell() is None:
        settings["distributed.worker.multiprocessing-method"] = "fork"
    return settings


class ExecutorError(NbdeployError):
    """The executor cannot run the runs: Dask missing, scheduler unreachable, bad spec."""


@dataclass(frozen=True)
class ExecutorSpec:
    """Which executor runs a sweep's or pipeline's runs; ``scheduler`` for ``dask``."""

    kind: str = "local"
    scheduler: str | None = None


def parse_executor_field(raw: Any, where: str) -> ExecutorSpec:
    """pipeline.yaml's ``executor:``: ``local``, ``dask`` or ``{kind: dask, scheduler: ...}``."""
    from nbdeploy.errors import PipelineSpecError

    hint = "e.g. `executor: dask` or `executor: {kind: dask, scheduler: tcp://HOST:8786}`"
    if isinstance(raw, str):
        raw = {"kind": raw}
    if not isinstance(raw, dict):
        raise PipelineSpecError(
            f"{where}: `executor` must be local, dask or a mapping, got {raw!r}", hint
        )
    extra = sorted(set(raw) - {"kind", "scheduler"})
    if extra:
        raise PipelineSpecError(
            f"{where}: unknown field(s) {', '.join(map(str, extra))} in `executor`",
            "fields: kind, scheduler",
        )
    kind, scheduler = raw.get("kind"), raw.get("scheduler")
    if kind not in KINDS:
        raise PipelineSpecError(
            f"{where}: `executor` kind must be one of {', '.join(KINDS)}, got {kind!r}", hint
        )
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
        raise PipelineSpecError(
            f"{where}: `executor.scheduler` must be an address like tcp://HOST:8786", hint
        )
    if scheduler and kind != "dask":
        raise PipelineSpecError(f"{where}: `executor.scheduler` applies to kind dask", hint)
    return ExecutorSpec(kind, scheduler.strip() if scheduler else None)


def resolve_executor(
    executor: str | None, scheduler: str | None, default: ExecutorSpec | None = None
) -> ExecutorSpec:
    """The executor asked for (``--executor``/``--scheduler``), else ``default`` (a
    pipeline.yaml's), else local. A scheduler alone means dask; a dask executor without a
    scheduler takes ``NBDEPLOY_DASK_SCHEDULER``, else a local cluster."""
    if executor is not None and executor not in KINDS:
        raise ExecutorError(f"unknown executor {executor!r}", f"choose {' or '.join(KINDS)}")
    if executor == "local" and scheduler:
        raise ExecutorError(
            f"--scheduler {scheduler} applies to the dask executor, not to --executor local",
            "use --executor dask (or leave out --executor)",
        )
    kind = executor or ("dask" if scheduler else default.kind if default else "local")
    if kind == "local":
        return ExecutorSpec("local")
    address = scheduler or (default.scheduler if default else None)
    return ExecutorSpec("dask", address or os.environ.get(SCHEDULER_ENV) or None)


def dask_installed() -> bool:
    """Whether Dask's distributed scheduler can be imported (without importing it)."""
    return importlib.util.find_spec("distributed") is not None


def start_executor(
    spec: ExecutorSpec, parallel: int | None = None, *, notify: Notify = _ignore
) -> Executor:
    """The executor for ``spec``; use it as a context manager. A local Dask cluster starts in
    the background meanwhile (:meth:`Executor.ready` waits for it); a scheduler address is
    connected to at once, so an unreachable one fails before anything runs."""
    if spec.kind == "dask":
        return DaskExecutor(spec.scheduler, parallel, notify=notify)
    return Executor(parallel)


class Executor:
    """Runs here: ``parallel`` threads, each running one kernel at a time."""

    kind = "local"

    def __init__(self, parallel: int | None = None) -> None:
        self.parallel = max(1, parallel or 1)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        self.close(abandon=exc_type is not None)

    def ready(self) -> None:
        """Wait until runs can start; raises ExecutorError if they cannot."""

    def check(self, runs: Sequence[PreparedRun]) -> None:
        """Checks that need no kernel (what travels with each run); raises ExecutorError."""

    def group_spec(self) -> dict[str, Any]:
        """What a sweep's or pipeline's record says about the executor."""
        return {}

    def pool(self, records: RunStore, group_id: str, thread_name_prefix: str) -> RunPool:
        """The threads driving the runs (see :class:`RunPool` for Ctrl-C)."""
        return RunPool(records, group_id, self.parallel, thread_name_prefix)

    def execute_run(self, prepared: PreparedRun, **options: Any) -> RunOutcome:
        """Execute and record one run (``execute_run``'s options)."""
        return execute_run(prepared, **options)

    def close(self, abandon: bool = False) -> None:
        """Release what the executor holds (``abandon``: leaving on an error)."""


@dataclass
class _Bundle:
    signature: tuple[tuple[str, int, int], ...]
    future: Any
    size: int


class DaskExecutor(Executor):
    """Runs each run as one task of a Dask cluster (see the module docstring)."""

    kind = "dask"

    def __init__(self, scheduler: str | None, parallel: int | None, notify: Notify) -> None:
        if not dask_installed():
            raise ExecutorError(
                "--executor dask needs Dask's distributed scheduler, which is not installed",
                INSTALL_HINT,
            )
        self.address = scheduler
        self.notify = notify
        self.max_bytes = _max_bytes()
        self._client: Any = None
        self._cluster: Any = None
        self._error: BaseException | None = None
        self._starting: threading.Thread | None = None
        self._worker_kernels: set[str] | None = None
        self._bundles: dict[tuple[Any, ...], _Bundle] = {}
        self._bundle_lock = threading.Lock()
        self._n_workers = 0
        if scheduler is None:
            self.parallel = max(1, parallel or os.cpu_count() or 1)
            self._starting = threading.Thread(
                target=self._start_local_cluster,
                args=(_local_cluster_config(),),
                name="nbdeploy-dask-start",
                daemon=True,
            )
            self._starting.start()
        else:
            self._connect(scheduler)
            self.parallel = max(1, parallel or self._cluster_threads())

    # -- the cluster ---------------------------------------------------------------------
    def _start_local_cluster(self, settings: dict[str, Any]) -> None:
        try:
            import dask
            from distributed import Client, LocalCluster

            if settings.get("distributed.worker.multiprocessing-method") == "fork":
                # Import the engine once here, meanwhile the sweep is prepared: the forked
                # workers inherit it instead of each importing it while kernels start.
                from nbdeploy.pipeline.dask_worker import warm_up

                warm_up()
            with dask.config.set(settings):
                self._cluster = LocalCluster(
                    n_workers=self.parallel,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    # no dashboard; its HTTP server (health checks) on a free loopback port
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                    # nbdeploy reports what fails in a task itself; distributed's own error
                    # logs are about its connections (a worker's heartbeat to a scheduler a
                    # Ctrl-C already ended prints a traceback): not for the user's terminal.
                    silence_logs=logging.CRITICAL,
                    preload=["nbdeploy.pipeline.dask_worker"],
                )
            self._client = Client(self._cluster, set_as_default=False)
            self._n_workers = self.parallel
        except BaseException as exc:  # reported by ready()
            self._error = exc

    def _connect(self, address: str) -> None:
        from distributed import Client

        timeout = _connect_timeout()
        try:
            client = Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ExecutorError(
                f"could not connect to the Dask scheduler at {address} within {timeout:g} s "
                f"({type(exc).__name__}: {exc})",
                "check the address (tcp://HOST:8786) and that the scheduler runs: start one "
                "with `dask scheduler` and `dask worker tcp://HOST:8786` on each machine, or "
                "leave out --scheduler for a cluster on this machine",
            ) from None
        except (ValueError, TypeError) as exc:
            raise ExecutorError(
                f"{address!r} is not a Dask scheduler address ({exc})", "e.g. tcp://HOST:8786"
            ) from None
        self._client = client
        try:
            self._check_workers(address)
        except BaseException:
            self._client = None
            with contextlib.suppress(BaseException):
                client.close(timeout=5)
            raise

    def _check_workers(self, address: str) -> None:
        from nbdeploy import __version__
        from nbdeploy.pipeline.dask_worker import warm_up_in_background, worker_info

        try:
            infos = self._client.run(worker_info, on_error="return")
        except Exception as exc:
            infos = {"?": exc}
        self._n_workers = len(infos)
        if not infos:
            self.notify(
                f"the Dask cluster at {address} has no workers yet: the runs wait for workers"
            )
            return
        broken = {worker: info for worker, info in infos.items() if isinstance(info, Exception)}
        if broken:
            worker, problem = next(iter(broken.items()))
            raise ExecutorError(
                f"the Dask workers at {address} cannot run nbdeploy's tasks ({worker}: "
                f"{type(problem).__name__}: {problem})",
                f"install nbdeploy {__version__} and the notebooks' packages on every worker",
            )
        versions = {info["version"] for info in infos.values()}
        if versions != {__version__}:
            self.notify(
                f"the Dask workers have nbdeploy {', '.join(sorted(versions))}; "
                f"this is {__version__}"
            )
        self._worker_kernels = set.union(*(set(info["kernels"]) for info in infos.values()))
        with contextlib.suppress(Exception):
            self._client.run(warm_up_in_background, on_error="ignore")

    def _cluster_threads(self) -> int:
        with contextlib.suppress(Exception):
            return max(1, sum(self._client.nthreads().values()))
        return 1

    def ready(self) -> None:
        if self._starting is not None:
            self._starting.join()
        if self._error is not None:
            error = self._error
            raise ExecutorError(
                f"the local Dask cluster did not start: {type(error).__name__}: {error}",
                "start a scheduler yourself (`dask scheduler`, `dask worker ...`) and pass "
                "--scheduler, or use --executor local",
            ) from error

    @property
    def client(self) -> Any:
        self.ready()
        return self._client

    def group_spec(self) -> dict[str, Any]:
        return {"executor": "dask", "scheduler": self.address or "local cluster"}

    def close(self, abandon: bool = False) -> None:
        if abandon and self._starting is not None and self._starting.is_alive():
            # Leaving on an error while the cluster still starts: do not make the user
            # wait for it; it closes in the background (its workers end with this process).
            threading.Thread(target=self.close, name="nbdeploy-dask-close", daemon=True).start()
            return
        if self._starting is not None:
            self._starting.join()
        with contextlib.suppress(BaseException):
            for bundle in self._bundles.values():
                bundle.future.release()
            self._bundles.clear()
        client, cluster, self._client, self._cluster = self._client, self._cluster, None, None
        if client is not None:
            with contextlib.suppress(BaseException):
                client.close(timeout=5)
        if cluster is not None:
            with contextlib.suppress(BaseException):
                cluster.close(timeout=10)

    # -- runs ------------------------------------------------------------------------------
    def check(self, runs: Sequence[PreparedRun]) -> None:
        for prepared in runs:
            self._static_files(prepared)  # raises when too large or outside
        if self._worker_kernels is not None:
            missing = sorted({p.kernel.name for p in runs} - self._worker_kernels)
            if missing:
                raise ExecutorError(
                    f"no Dask worker has the kernel {missing[0]!r} "
                    f"(they have: {', '.join(sorted(self._worker_kernels)) or 'none'})",
                    "install it on the workers (python -m ipykernel install --user), or "
                    "choose one they have with --kernel",
                )

    def execute_run(self, prepared: PreparedRun, **options: Any) -> RunOutcome:
        return execute_run(prepared, run_notebook=self.run_notebook, **options)

    def run_notebook(
        self,
        prepared: PreparedRun,
        *,
        output_path: Path,
        run_dir: Path,
        run_id: str,
        timeout: float | None,
        progress: Progress | None,
        epilogue: str | None,
        on_kernel: OnKernel | None,
    ) -> ExecutionResult:
        """Run the notebook as a Dask task and write what it hands back where a local run
        writes it (see :class:`nbdeploy.pipeline.runner.RunNotebook`)."""
        from nbdeploy.pipeline.dask_worker import run_task
        from nbdeploy.pipeline.execute import ExecutionResult
        from nbdeploy.pipeline.progress import NullProgress

        nb = prepared.notebook
        result = ExecutionResult(ok=False, output_path=output_path, kernel=prepared.kernel.name)
        client = self.client
        try:
            task, bundle = self._task(prepared, run_id, output_path, timeout, epilogue)
        except ExecutorError as exc:
            result.message = f"{nb.name}: {exc}"
            return result
        topic = None
        if progress is not None and type(progress) is not NullProgress:
            topic = task["progress_topic"] = f"nbdeploy-progress-{run_id}"
            task["progress_output"] = bool(getattr(progress, "log_output", True))
            client.subscribe_topic(topic, _progress_handler(progress))
        stop, done = threading.Event(), threading.Event()
        future = client.submit(run_task, task, bundle, key=task["key"], pure=False)
        future.add_done_callback(lambda _: done.set())
        try:
            if on_kernel is not None:
                on_kernel(lambda: self._stop(run_id, stop))
            interrupted = self._wait(done, stop, run_id, task["key"])
            payload, problem = self._outcome(future, done)
        finally:
            if topic is not None:
                with contextlib.suppress(Exception):
                    client.unsubscribe_topic(topic)
            with contextlib.suppress(Exception):
                future.release()
        if payload is not None:
            self._receive(payload, prepared, output_path, run_dir)
            result.ok = bool(payload["ok"])
            result.failure = payload["failure"]
            result.message = payload["message"]
            result.epilogue_output = payload["epilogue_output"]
            if payload["too_large"]:
                result.ok = False
                result.message = _too_large_message(nb.name, payload["too_large"], self.max_bytes)
        elif problem is not None:
            result.message = f"{nb.name}: {problem}"
        if interrupted:  # Ctrl-C in this thread: a single run
            result.ok = False
            failure = result.failure or {}
            if "cell" in failure:
                note = f"{INTERRUPTED_MESSAGE} while this cell was running"
                result.failure = {
                    **failure,
                    "kind": INTERRUPTED,
                    "ename": "KeyboardInterrupt",
                    "evalue": note,
                }
                result.message = (
                    f"{nb.name}, cell {failure['cell']} ({failure['first_line']}): {note}"
                )
            else:
                result.failure = {"kind": INTERRUPTED}
                result.message = f"{nb.name}: {INTERRUPTED_MESSAGE}"
        return result

    def _stop(self, run_id: str, stop: threading.Event) -> None:
        """Kill the run's kernel on whichever worker has it (or will start it), without
        blocking the caller (Ctrl-C handling)."""
        from nbdeploy.pipeline.runner import stop_group

        stop.set()
        client = self._client

        def broadcast() -> None:
            with contextlib.suppress(BaseException):
                client.run(stop_group, run_id, on_error="ignore")

        if client is not None:
            threading.Thread(target=broadcast, name="nbdeploy-dask-stop", daemon=True).start()

    def _wait(self, done: threading.Event, stop: threading.Event, run_id: str, key: str) -> bool:
        """Wait for the task; once the run is stopped, for what ran so far (at most
        STOP_WAIT_S), unless no worker has started it. True when Ctrl-C reached this thread
        (a single run)."""
        interrupted = False
        deadline: float | None = None
        while True:
            try:
                if done.wait(0.2):
                    return interrupted
            except KeyboardInterrupt:
                if interrupted:  # a second Ctrl-C: stop waiting for the task's output
                    return interrupted
                interrupted = True
                self._stop(run_id, stop)
            if stop.is_set():
                if deadline is None:
                    deadline = time.monotonic() + STOP_WAIT_S
                    if not self._started(key):
                        return interrupted
                if time.monotonic() >= deadline:
                    return interrupted

    def _started(self, key: str) -> bool:
        """Whether a worker runs (or holds) the task, as far as the scheduler knows."""
        try:
            processing = self._client.processing()
        except Exception:
            return True  # cannot tell: wait for it
        return any(key in keys for keys in processing.values())

    def _outcome(self, future: Any, done: threading.Event) -> tuple[Any, str | None]:
        """The task's payload, or why there is none."""
        if not done.is_set():
            with contextlib.suppress(Exception):
                self._client.cancel([future])
            return None, None
        if future.status == "cancelled":
            return None, None
        try:
            return future.result(), None
        except Exception as exc:
            return None, _task_problem(exc)

    def _receive(
        self, payload: dict[str, Any], prepared: PreparedRun, output_path: Path, run_dir: Path
    ) -> None:
        """Write the task's files where a local run leaves them."""
        from nbdeploy.pipeline.context import ARTIFACTS_DIR, RESULTS_FILE
        from nbdeploy.pipeline.execute import KERNEL_LOG

        if payload["notebook"] is not None:
            _write_atomically(output_path, payload["notebook"])
        if payload["kernel_log"]:
            with open_private(run_dir / KERNEL_LOG, "ab") as log:
                log.write(payload["kernel_log"])
        artifacts = run_dir / ARTIFACTS_DIR
        for name, data in payload["artifacts"].items():
            write_private_bytes(private_dir(artifacts) / Path(name).name, data)
        lines = []
        for line in payload["results"]:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                entry = json.loads(line)
                if entry.get("kind") == "artifact" and isinstance(entry.get("path"), str):
                    entry["path"] = str(artifacts / Path(entry["path"]).name)
                    line = json.dumps(entry)
            lines.append(line + "\n")
        if lines:
            write_private_text(run_dir / RESULTS_FILE, "".join(lines))
        for name, data in payload["outputs"].items():
            if name in prepared.outputs:
                _write_atomically(Path(prepared.outputs[name]), data)

    # -- what travels ----------------------------------------------------------------------
    def _task(
        self,
        prepared: PreparedRun,
        run_id: str,
        output_path: Path,
        timeout: float | None,
        epilogue: str | None,
    ) -> tuple[dict[str, Any], Any]:
        root, files = self._static_files(prepared)
        bundle = self._bundle(root, files)
        nb = prepared.notebook
        handed: dict[str, bytes] = {}
        relocate: dict[str, str] = {}
        size = bundle.size if bundle is not None else 0
        for name, path_text in {**prepared.files.handed, **prepared.outputs}.items():
            relative = _relative(Path(path_text), root, f"{nb.name}: {name}")
            if name in prepared.values:
                relocate[name] = relative
        for name, path_text in prepared.files.handed.items():
            path = Path(path_text)
            if path.is_file():
                handed[_relative(path, root, f"{nb.name}: {name}")] = path.read_bytes()
                size += path.stat().st_size
        if size > self.max_bytes:
            raise ExecutorError(
                f"its input files are {_mb(size)} MB, more than the {_mb(self.max_bytes)} MB "
                f"that travel with a Dask task ({MAX_MB_ENV})"
            )
        task = {
            "run_id": run_id,
            "key": f"nbdeploy-run-{run_id}",
            "notebook_path": _relative(nb.path, root, nb.name),
            "notebook": json.dumps(nb.data).encode(),
            "values": dict(prepared.values),
            "relocate": relocate,
            "kernel": prepared.kernel.name,
            "timeout": timeout,
            "epilogue": epilogue,
            "outputs": {
                name: _relative(Path(path), root, f"{nb.name}: output {name}")
                for name, path in prepared.outputs.items()
            },
            "handed": handed,
            "output_name": output_path.name,
            "max_bytes": self.max_bytes,
            "progress_topic": None,
            "progress_output": False,
        }
        return task, bundle.future if bundle is not None else None

    def _static_files(self, prepared: PreparedRun) -> tuple[Path, dict[str, Path]]:
        """The folder mirrored on the worker and the files under it that travel."""
        nb = prepared.notebook
        folder = nb.path.parent
        explicit = prepared.files.paths is not None
        paths = [p.resolve() for p in prepared.files.paths or []] if explicit else [folder]
        root = prepared.files.root or Path(os.path.commonpath([folder, *paths]))
        exclude = [config.home(), *(p.resolve() for p in prepared.files.exclude)]
        exclude += [Path(p).resolve() for p in prepared.outputs.values()]
        for path in paths:
            # Other steps' outputs travel when handed (and may not exist yet).
            if not path.exists() and path not in exclude:
                raise ExecutorError(
                    f"{nb.name}: input {path} does not exist",
                    "inputs are files or folders the notebook reads",
                )
        files: dict[str, Path] = {}
        total = 0
        for file in _walk(paths, exclude, skip=nb.path):
            files[_relative(file, root, f"{nb.name}: input")] = file
            total += file.stat().st_size
            if total > self.max_bytes or len(files) > MAX_FILES:
                what = (
                    f"the inputs of {nb.name}"
                    if explicit
                    else f"the folder of {nb.name} ({folder}, the kernel's working directory)"
                )
                raise ExecutorError(
                    f"{what} hold more than {_mb(self.max_bytes)} MB or {MAX_FILES} files, "
                    "which would travel with every Dask task",
                    "name the files the notebook reads with --input PATH (pipeline.yaml: "
                    f"`inputs:` of the step), or raise {MAX_MB_ENV}",
                )
        return root, files

    def _bundle(self, root: Path, files: dict[str, Path]) -> _Bundle | None:
        """The shared files, sent to the cluster once for all the runs that need them."""
        if not files:
            return None
        signature = tuple(
            (relative, path.stat().st_size, path.stat().st_mtime_ns)
            for relative, path in sorted(files.items())
        )
        key = (str(root), signature)
        with self._bundle_lock:
            cached = self._bundles.get(key)
            if cached is not None:
                return cached
            data = {relative: path.read_bytes() for relative, path in files.items()}
            size = sum(map(len, data.values()))
            broadcast = size * max(1, self._n_workers) <= BROADCAST_LIMIT
            [future] = self.client.scatter([data], broadcast=broadcast, hash=False)
            bundle = self._bundles[key] = _Bundle(signature, future, size)
            return bundle


def _walk(paths: Sequence[Path], exclude: Sequence[Path], skip: Path) -> Iterator[Path]:
    """Files under ``paths`` (folders walked, hidden entries and caches left out)."""

    def excluded(path: Path) -> bool:
        return any(path == e or e in path.parents for e in exclude)

    seen: set[Path] = set()
    for path in paths:
        if path.is_file():
            if path != skip and path not in seen and not excluded(path):
                seen.add(path)
                yield path
            continue
        for folder, dirnames, filenames in os.walk(path):
            here = Path(folder)
            dirnames[:] = sorted(
                name
                for name in dirnames
                if not name.startswith(".")
                and name not in SKIPPED_NAMES
                and not excluded(here / name)
            )
            for name in sorted(filenames):
                file = here / name
                if name.startswith(".") or file == skip or file in seen or excluded(file):
                    continue
                if file.is_file():
                    seen.add(file)
                    yield file


def _relative(path: Path, root: Path, what: str) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        raise ExecutorError(
            f"{what}: {path} is outside {root}, the folder that travels to the Dask workers",
            "keep the files a run reads and writes inside that folder",
        ) from None


def _progress_handler(progress: Progress) -> Callable[[Any], None]:
    """Feeds a run's Dask progress events (see dask_worker._EventProgress) to ``progress``."""

    def handle(event: Any) -> None:
        with contextlib.suppress(Exception):
            _, message = event
            kind, *args = message
            if kind == "start":
                progress.start(args[0], int(args[1]))
            elif kind == "cell":
                progress.cell_started(int(args[0]), int(args[1]), str(args[2]))
            elif kind == "output":
                progress.output(str(args[0]), str(args[1]))

    return handle


def _task_problem(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "KilledWorker":
        return (
            f"the Dask workers running it died ({exc}); Dask gave up after "
            "distributed.scheduler.allowed-failures attempts"
        )
    if isinstance(exc, ImportError) and "nbdeploy" in str(exc):
        return (
            f"the Dask worker cannot import nbdeploy ({exc}): install nbdeploy and the "
            "notebook's packages on the workers"
        )
    return f"the Dask task failed: {name}: {exc}"


def _too_large_message(name: str, too_large: dict[str, Any], max_bytes: int) -> str:
    largest = ", ".join(f"{what} {_mb(size)} MB" for what, size in too_large["largest"].items())
    return (
        f"{name}: its results are {_mb(too_large['total'])} MB ({largest}), more than the "
        f"{_mb(max_bytes)} MB a Dask task sends back ({MAX_MB_ENV}); artifacts and outputs "
        "were left on the worker"
    )


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mb(size: float) -> str:
    return f"{size / (1 << 20):.3g}"


def _max_bytes() -> int:
    text = os.environ.get(MAX_MB_ENV)
    try:
        value = float(text) if text else DEFAULT_MAX_MB
    except ValueError:
        raise ExecutorError(f"{MAX_MB_ENV}={text!r} is not a number of megabytes") from None
    if value <= 0:
        raise ExecutorError(f"{MAX_MB_ENV} must be positive, got {text}")
    return int(value * (1 << 20))


def _connect_timeout() -> float:
    text = os.environ.get(CONNECT_TIMEOUT_ENV)
    try:
        value = float(text) if text else DEFAULT_CONNECT_TIMEOUT_S
    except ValueError:
        raise ExecutorError(f"{CONNECT_TIMEOUT_ENV}={text!r} is not a number of seconds") from None
    return value if value > 0 else DEFAULT_CONNECT_TIMEOUT_S
