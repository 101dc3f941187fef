"""``%deploy``: the notebook face of nbdeploy (``%load_ext nbdeploy`` registers it).

``%deploy run [-p NAME VALUE]...`` runs this notebook's saved file as a tracked pipeline
run, with the same options as ``nbdeploy run``; ``%deploy params`` and ``%deploy runs``
mirror the CLI. The magic only translates: the work is done by :mod:`nbdeploy.api`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from nbdeploy.errors import NbdeployError, RunFailedError
from nbdeploy.pipeline.context import (
    DEPLOY_STEP_ENV,
    RUN_DIR_ENV,
    is_kernel_shell,
    record_deployed,
)

SESSION_ENV = "JPY_SESSION_NAME"
VSCODE_NOTEBOOK_VARIABLE = "__vsc_ipynb_file__"
USAGE = """\
%deploy FUNCTION|MODEL [--name NAME] [--port N] [--workers N] [--batch|--no-batch]
                 [--reference VAR] [--extra-columns refuse|drop] [--requirements REQ ...]
                                      deploy a function, or a fitted model, of this notebook
%deploy status [NAME] [--text] | stop NAME | logs NAME | rollback NAME | promote NAME | show NAME
%deploy run [NOTEBOOK] [-p NAME VALUE]... [-f FILE] [--sweep NAME=V1,V2]... [--parallel N]
            [--output-dir DIR] [--kernel NAME] [--timeout S] [--log-output] [--no-mlflow]
%deploy params [NOTEBOOK]
%deploy runs [ID]
%deploy schedule add NAME [--cron CRON] [--tz ZONE] [--on TRIGGER] ... -- run NOTEBOOK ...
%deploy schedule list | show NAME | pause NAME | resume NAME | remove NAME | run-now NAME
                 | history NAME
%deploy batch NAME INPUT --output FILE [--version N] [--keep COL ...] [--features COL ...]
Add --help after a subcommand for its options."""


class _MagicParser(argparse.ArgumentParser):
    """argparse that raises instead of exiting the kernel."""

    def error(self, message: str) -> Any:
        raise NbdeployError(f"{self.prog}: {message}", f"see `{self.prog} --help`")

    def exit(self, status: int = 0, message: str | None = None) -> Any:
        if message:
            print(message)
        raise _HelpShown()


class _HelpShown(Exception):
    pass


def notebook_of(namespace: dict[str, Any]) -> Path | None:
    """The notebook file of the kernel whose user namespace is ``namespace``, when its front
    end tells: JupyterLab and Notebook 7 set JPY_SESSION_NAME in the kernel's environment,
    VS Code sets ``__vsc_ipynb_file__`` in its namespace (both the notebook's path)."""
    given = os.environ.get(SESSION_ENV) or namespace.get(VSCODE_NOTEBOOK_VARIABLE)
    if not isinstance(given, str) or not given:
        return None
    path = Path(given).expanduser()
    if not path.is_absolute():
        # An older Jupyter server's session path is relative to its root, and the kernel
        # runs in the notebook's folder.
        path = Path.cwd() / path.name
    return path.resolve()


def current_notebook(namespace: dict[str, Any], command: str) -> Path:
    """:func:`notebook_of`, or an error that says to name the notebook to ``%deploy COMMAND``."""
    notebook = notebook_of(namespace)
    if notebook is None:
        raise NbdeployError(
            f"%deploy {command}: this kernel does not know its notebook (JupyterLab and "
            f"Notebook 7 name it in {SESSION_ENV}, VS Code in {VSCODE_NOTEBOOK_VARIABLE}: "
            "neither is set)",
            f"pass the notebook's path: %deploy {command} train.ipynb",
        )
    return notebook


@magics_class
class DeployMagics(Magics):
    """The ``%deploy`` line magic."""

    @line_magic
    def deploy(self, line: str) -> Any:
        """Run this notebook as a tracked pipeline, list its parameters, or list runs.

        %deploy run [-p NAME VALUE]...   run this notebook's saved file (see --help)
        %deploy params                   its typed parameters
        %deploy runs [ID]                recent runs with metrics, or one run
        """
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"nbdeploy: cannot parse {line!r}: {exc}") from None
        if not words or words[0] in {"-h", "--help", "help"}:
            print(USAGE)
            return None
        command, rest = words[0], words[1:]
        handlers = {
            "run": self._run,
            "params": self._params,
            "runs": self._runs,
            "status": self._status,
            "stop": self._stop,
            "logs": self._logs,
            "rollback": self._rollback,
            "promote": self._promote,
            "show": self._show,
            "batch": self._batch,
            "schedule": self._schedule,
        }
        handler = handlers.get(command)
        try:
            if handler is not None:
                return handler(rest)
            value = self._shell.user_ns.get(command) if command.isidentifier() else None
            if value is not None and (callable(value) or callable(getattr(value, "predict", None))):
                return self._deploy(command, rest)
            raise NbdeployError(
                f"unknown subcommand {command!r}, and no function or fitted model {command!r} "
                "in this notebook",
                "one of: " + ", ".join(handlers) + ", or the name of a function or model to deploy",
            )
        except _HelpShown:
            return None
        except NbdeployError as error:
            # UsageError: IPython shows the message without a traceback, and the cell fails
            # (so a notebook that calls %deploy under papermill or CI fails too).
            raise UsageError(f"nbdeploy: {error}") from None

    @property
    def _shell(self) -> Any:
        assert self.shell is not None, "the magics are registered with a shell"
        return self.shell

    @cell_magic("deploy")  # type: ignore[arg-type]
    def deploy_cell(self, line: str, cell: str) -> Any:
        """%%deploy [NAME] [options]: run the cell, then deploy the last function it defines."""
        import ast

        result = self._shell.run_cell(cell, store_history=True)
        if not result.success:
            return None
        # %pip and !shell lines are not Python: parse what IPython ran.
        python = self._shell.transform_cell(cell)
        functions = [n.name for n in ast.parse(python).body if isinstance(n, ast.FunctionDef)]
        try:
            if not functions:
                raise NbdeployError("%%deploy: the cell defines no function to deploy")
            words = shlex.split(line)
            if words and not words[0].startswith("-"):
                words = ["--name", words[0], *words[1:]]
            return self._deploy(functions[-1], words)
        except _HelpShown:
            return None
        except NbdeployError as error:
            raise UsageError(f"nbdeploy: {error}") from None

    # -- subcommands -------------------------------------------------------------------
    def _deploy(self, target: str, words: list[str]) -> Any:
        from nbdeploy import api
        from nbdeploy.deployment.options import DeployOptions, add_deploy_arguments
        from nbdeploy.deployment.report import describe_deploy

        parser = _MagicParser(prog=f"%deploy {target}")
        add_deploy_arguments(parser)
        add_image_arguments(parser)
        parsed = parser.parse_args(words)
        options = DeployOptions.from_args(parsed)
        if os.environ.get(DEPLOY_STEP_ENV):  # nbdeploy deploys this run's result itself
            _note(
                f"%deploy {target} skipped: nbdeploy runs this notebook to deploy from it "
                "after its last cell (one version per deploy)"
            )
            return None
        namespace = self._shell.user_ns
        notebook = notebook_of(namespace)
        in_kernel = is_kernel_shell(self.shell)
        notify: Any = _note
        progress: Any = contextlib.nullcontext()
        if in_kernel:
            from nbdeploy.pipeline.progress import ending
            from nbdeploy.widgets.progress import DeployProgress

            bar = DeployProgress(f"deploy {target}", echo=_note)
            notify, progress = bar.note, ending(bar)
        with progress:
            try:
                result = api.deploy(
                    namespace[target],
                    namespace=namespace,
                    history=list(namespace.get("In", [])),
                    source={"notebook": str(notebook) if notebook else None, "target": target},
                    notify=notify,
                    **vars(options),
                )
            except KeyboardInterrupt:
                raise NbdeployError(
                    "the deploy was interrupted: the server it was starting is stopped, and "
                    "the previous version (if any) serves as before"
                ) from None
        record_deployed(result.deployment.name, result.version.version, result.deployment.url)
        if in_kernel:
            from nbdeploy.widgets.deployment import show_deployment

            show_deployment(result)
        else:
            print(describe_deploy(result))
        if parsed.image:
            self._build_image(result, parsed, in_kernel)
        return None

    def _build_image(self, result: Any, parsed: Any, in_kernel: bool) -> None:
        """``%deploy ... --image``: the new version's image, its build steps as a bar."""
        from nbdeploy.image.build import build_image
        from nbdeploy.pipeline.progress import TerminalProgress, ending

        spec = f"{result.deployment.name}:{result.version.version}"
        if in_kernel:
            from nbdeploy.widgets.progress import WidgetProgress

            progress: Any = WidgetProgress(f"image {spec}", log_output=True)
        else:
            progress = TerminalProgress()
        with ending(progress) as tracked:
            built = build_image(
                spec,
                base_image=parsed.base_image,
                offline=parsed.offline,
                progress=tracked,
                notify=_note,
            )
        reused = " (dependencies reused)" if built.dependencies_reused else ""
        print(f"✓ image {built.image}: {built.size / 1e6:.0f} MB in {built.seconds:.1f} s{reused}")

    def _status(self, words: list[str]) -> Any:
        from nbdeploy import api
        from nbdeploy.deployment.report import describe_status

        parser = _MagicParser(prog="%deploy status")
        parser.add_argument("name", nargs="?")
        parser.add_argument(
            "--text", action="store_true", help="the status table as text, not the dashboard"
        )
        args = parser.parse_args(words)
        deployments = api.status(args.name)  # an unknown name fails here, as a UsageError
        if is_kernel_shell(self.shell) and not args.text:
            from IPython.display import display

            from nbdeploy.widgets.dashboard import dashboard

            display(dashboard(args.name))
            return None
        rollout = api.rollout_state(args.name) if args.name else None
        print(describe_status(deployments, rollout))
        return None

    def _stop(self, words: list[str]) -> None:
        from nbdeploy import api

        parser = _MagicParser(prog="%deploy stop")
        parser.add_argument("name")
        print(f"stopped {api.stop(parser.parse_args(words).name).name}")

    def _logs(self, words: list[str]) -> None:
        from nbdeploy import api

        parser = _MagicParser(prog="%deploy logs")
        parser.add_argument("name")
        parser.add_argument("--tail", type=int, default=50)
        args = parser.parse_args(words)
        print("\n".join(api.logs(args.name, args.tail)))

    def _rollback(self, words: list[str]) -> None:
        from nbdeploy import api

        self._switch("rollback", api.rollback, words)

    def _promote(self, words: list[str]) -> None:
        from nbdeploy import api

        self._switch("promote", api.promote, words)

    @staticmethod
    def _switch(verb: str, action: Any, words: list[str]) -> None:
        from nbdeploy.deployment.report import describe_switch

        parser = _MagicParser(prog=f"%deploy {verb}")
        parser.add_argument("name")
        print(describe_switch(action(parser.parse_args(words).name, notify=_note)))

    def _show(self, words: list[str]) -> None:
        from nbdeploy import api

        parser = _MagicParser(prog="%deploy show")
        parser.add_argument("name")
        print(api.show_code(parser.parse_args(words).name), end="")

    def _run(self, words: list[str]) -> Any:
        from nbdeploy import api
        from nbdeploy.pipeline import summary
        from nbdeploy.pipeline.options import add_run_arguments, run_request_from_args
        from nbdeploy.pipeline.progress import NullProgress, TerminalProgress, ending

        parser = _MagicParser(prog="%deploy run", add_help=True)
        add_run_arguments(parser, notebook_optional=True)
        args = parser.parse_args(words)
        if os.environ.get(RUN_DIR_ENV):
            print(
                "nbdeploy: `%deploy run` ignored: this notebook is itself running under nbdeploy "
                "(tag this cell nbdeploy:skip)"
            )
            return None
        notebook = (
            Path(args.notebook).resolve()
            if args.notebook
            else current_notebook(self._shell.user_ns, "run")
        )
        request = run_request_from_args(args)
        if not args.notebook and notebook.exists():
            age = time.time() - notebook.stat().st_mtime
            print(
                f"nbdeploy: running the saved file {notebook.name} (saved {_ago(age)}); "
                "unsaved changes are not part of the run"
            )
        many = bool(args.sweep) or notebook.suffix in api.PIPELINE_SUFFIXES
        progress: Any = NullProgress()
        progress_for = None
        if is_kernel_shell(self.shell):
            from nbdeploy.widgets.progress import WidgetProgress, WidgetProgressGroup

            if many:
                progress = WidgetProgressGroup(notebook.name, log_output=args.log_output)
                progress_for = progress.bar_for
            else:
                progress = WidgetProgress(notebook.name, log_output=args.log_output)
        elif not many:
            progress = TerminalProgress(log_output=args.log_output)
        with ending(progress) as tracked:  # the bars end on every path, errors included
            result = _off_the_event_loop(
                lambda: api.run(
                    notebook,
                    **request,
                    progress=tracked,
                    progress_for=progress_for,
                    on_done=lambda *event: print(summary.event_line(*event), flush=True),
                    notify=_note,
                    warn=lambda message: print(f"nbdeploy: warning: {message}", flush=True),
                )
            )
            if args.junit:
                from nbdeploy.pipeline.junit import write_junit_for_result

                write_junit_for_result(args.junit, notebook, result)
            print(summary.describe_result(result))
            if not result.ok:
                raise RunFailedError("the run failed (see above)")
        return None

    def _schedule(self, words: list[str]) -> None:
        from nbdeploy.schedule.cli import add_schedule_arguments, cmd_schedule

        parser = _MagicParser(prog="%deploy schedule")
        add_schedule_arguments(parser)
        cmd_schedule(parser.parse_args(words))

    def _batch(self, words: list[str]) -> None:
        from nbdeploy.batching.options import run_magic

        run_magic(words, _MagicParser(prog="%deploy batch"), is_kernel_shell(self.shell))

    def _params(self, words: list[str]) -> None:
        from nbdeploy import api
        from nbdeploy.pipeline.summary import params_table

        parser = _MagicParser(prog="%deploy params")
        parser.add_argument("notebook", nargs="?")
        args = parser.parse_args(words)
        notebook = (
            Path(args.notebook)
            if args.notebook
            else current_notebook(self._shell.user_ns, "params")
        )
        parameters = api.params(notebook)
        print(params_table(parameters) if parameters else f"{notebook.name} declares no parameters")

    def _runs(self, words: list[str]) -> None:
        from nbdeploy import api
        from nbdeploy.pipeline.summary import run_details, runs_table

        parser = _MagicParser(prog="%deploy runs")
        parser.add_argument("run_id", nargs="?")
        parser.add_argument("--limit", type=int, default=20)
        args = parser.parse_args(words)
        if args.run_id:
            print(run_details(api.get_run(args.run_id)))
        else:
            records = api.runs(limit=args.limit)
            print(runs_table(records) if records else "no runs yet")


INTERRUPT_GRACE_SECONDS = 30.0  # for a run to record itself as interrupted after Ctrl-C

_T = TypeVar("_T")


def _off_the_event_loop(work: Callable[[], _T]) -> _T:
    """Run ``work`` in a thread of its own (a run's nbclient runs an event loop, which the
    kernel's own loop would block). Ctrl-C in the kernel is raised inside that thread too,
    so that the run ends as interrupted (recorded, its bar amber, the output notebook
    saved) before the KeyboardInterrupt reaches the cell."""
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            outcome["result"] = work()
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=target, name="nbdeploy-run", daemon=True)
    worker.start()
    # An Event, not Thread.join: a join interrupted by Ctrl-C marks a running thread as
    # stopped on Python < 3.13 (bpo-45274), and a later join would return at once.
    try:
        while not done.wait(0.1):
            pass
    except KeyboardInterrupt:
        _raise_in_thread(worker, KeyboardInterrupt)
        done.wait(INTERRUPT_GRACE_SECONDS)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return cast(_T, outcome["result"])


def _raise_in_thread(thread: threading.Thread, exception: type[BaseException]) -> None:
    """Raise ``exception`` in ``thread`` at its next Python instruction (CPython's
    PyThreadState_SetAsyncExc: the way to deliver a Ctrl-C to a thread)."""
    import ctypes

    if thread.ident is not None and thread.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(thread.ident), ctypes.py_object(exception)
        )


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{int(seconds)} s ago"
    if seconds < 5400:
        return f"{int(seconds // 60)} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _note(message: str) -> None:
    print(f"nbdeploy: {message}", flush=True)


def register(ipython: Any) -> None:
    ipython.register_magics(DeployMagics)
    _warm_up()
    import sys

    if not any(isinstance(finder, _FrameworkWatch) for finder in sys.meta_path):
        sys.meta_path.insert(0, _FrameworkWatch())


def _warm_up() -> None:
    """In the background: bring back the deployments that should serve (a daemon is started
    when none runs, e.g. after a reboot), and start the launcher, so that the first
    ``%deploy`` finds BentoML's serving stack (and the frameworks imported so far) loaded.
    It never delays the notebook: a failure only means the first command starts them."""
    threading.Thread(target=_start_daemon, name="nbdeploy-warm-up", daemon=True).start()


def _start_daemon() -> None:
    from nbdeploy.deployment import verbs
    from nbdeploy.deployment.runtime import launcher

    try:
        verbs.status()  # a daemon when deployments want serving: it brings them back
        if launcher.enabled() and launcher.running(timeout=1.0) is None:
            launcher.start(launcher.framework_modules())
    except Exception:  # a warm-up; the first command says what is wrong
        return


class _FrameworkWatch:
    """An import hook: when the notebook imports a model framework's module
    (``sklearn.ensemble``, ``lightgbm``, ...) for the first time, the launcher is asked to
    import it too, at once, so that it loads while the notebook trains. It never finds a
    module itself and costs a dictionary lookup per first import of a module."""

    def __init__(self) -> None:
        from nbdeploy.deployment.runtime import launcher

        self.launcher = launcher
        self.busy = False
        self.pending: set[str] = set()  # seen before the launcher listened

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        # Packages and their direct submodules: importing sklearn.ensemble brings the rest.
        if (
            self.busy
            or name.count(".") > 1
            or name.partition(".")[0] not in self.launcher.FRAMEWORKS
        ):
            return None
        self.busy = True  # sending must not re-enter through imports of its own
        try:
            self.pending.update(self.launcher.framework_modules([name]))
            if self.launcher.Launcher(self.launcher.socket_path()).preload(self.pending):
                self.pending.clear()
        except Exception:  # a hint to a helper process must never break an import
            pass
        finally:
            self.busy = False
        return None


def add_image_arguments(parser: Any) -> None:
    """``%deploy ... --image [--base-image IMAGE] [--offline]``."""
    parser.add_argument(
        "--image", action="store_true", help="then build the version's container image"
    )
    parser.add_argument("--base-image", metavar="IMAGE", help="with --image: the base image")
    parser.add_argument(
        "--offline", action="store_true", help="with --image: build with no network"
    )
