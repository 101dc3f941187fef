"""Long operations (a deploy, a run) in a process of their own, so that the Jupyter server
that asked for them keeps answering at once: their imports (papermill, BentoML) and CPU
work never hold the server's interpreter lock, and a crash in them cannot take it down.

The server side (:func:`run_in_child`, called from an operation's worker thread) starts
``python -m nbdeploy.server.child``, writes the request as one JSON line to its standard
input and reads its events, one JSON line each, from its standard output: ``say``
(a notice), ``steps``/``step`` (progress), then ``result``, ``failed`` (work that ended
without success, with its result) or ``error``. The child runs the same view functions
the server would run in a thread, with an operation that forwards what they report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from nbdeploy.errors import NbdeployError
from nbdeploy.private_files import restrict_umask
from nbdeploy.server.operations import Operation, OperationFailed

_EVENT_PREFIX = "@@nbdeploy-event "  # other output of the work (prints) is not an event


def run_in_child(kind: str, arguments: dict[str, Any], operation: Operation) -> Any:
    """Run operation ``kind`` ("deploy", "run" or "batch") with ``arguments`` in a child process,
    forwarding its events to ``operation``; the result, or OperationFailed/NbdeployError
    as the work in a thread would raise them."""
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8") as errors_file:  # never a full pipe
        process = subprocess.Popen(
            [sys.executable, "-m", "nbdeploy.server.child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors_file,
            text=True,
            env=dict(os.environ),
            start_new_session=True,  # the server's Ctrl-C is not the operation's
        )
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps({"kind": kind, "arguments": arguments}) + "\n")
        process.stdin.close()
        outcome = _forward(process.stdout, operation)
        process.wait()
        errors_file.seek(0)
        errors = errors_file.read()
    if outcome is None:
        tail = [line for line in errors.strip().splitlines() if line.strip()][-1:]
        raise NbdeployError(
            f"the {kind} stopped unexpectedly (exit code {process.returncode})"
            + (f": {tail[0]}" if tail else "")
        )
    if "failed" in outcome:
        failed = outcome["failed"]
        raise OperationFailed(failed["result"], failed["error"], failed.get("hint"))
    if "error" in outcome:
        raise NbdeployError(outcome["error"]["error"], outcome["error"].get("hint"))
    return outcome["result"]


class _ForwardingOperation(Operation):
    """The child's operation: what the work reports goes to the server as events."""

    def say(self, message: str) -> None:
        _emit({"say": str(message)})

    def __setattr__(self, key: str, value: Any) -> None:
        super().__setattr__(key, value)
        if key in ("step", "steps") and "steps" in self.__dict__ and "step" in self.__dict__:
            _emit({"progress": [self.__dict__["step"], self.__dict__["steps"]]})


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(_EVENT_PREFIX + json.dumps(event, default=str) + "\n")
    sys.stdout.flush()


def _forward(lines: Any, operation: Operation) -> dict[str, Any] | None:
    """Apply the child's progress events to ``operation``; its last event (the outcome)."""
    outcome: dict[str, Any] | None = None
    for line in lines:
        if not line.startswith(_EVENT_PREFIX):
            continue
        event = json.loads(line[len(_EVENT_PREFIX) :])
        if "say" in event:
            operation.say(event["say"])
        elif "progress" in event:
            operation.step, operation.steps = event["progress"]
        else:
            outcome = event
    return outcome


def _work(kind: str, arguments: dict[str, Any], operation: Operation) -> Any:
    from nbdeploy.server import views
    from nbdeploy.server.models import DeployBody, RunBody

    if kind == "batch":
        from nbdeploy.server import scheduling
        from nbdeploy.server.models import BatchBody

        job = BatchBody(**arguments["body"])
        return scheduling.batch(arguments["name"], job, arguments["paths"], operation)
    path = Path(arguments["path"])
    if kind == "deploy":
        body = DeployBody(**arguments["body"])
        return views.deploy(path, body, arguments["name"], operation)
    return views.run(path, RunBody(**arguments["body"]), operation)


def main() -> None:
    restrict_umask()  # deploys and runs write under NBDEPLOY_HOME: owner-only
    request = json.loads(sys.stdin.readline())
    operation = _ForwardingOperation(id="child", kind=request["kind"], subject=None)
    try:
        result = _work(request["kind"], request["arguments"], operation)
    except OperationFailed as failed:
        _emit({"failed": {"result": failed.result, "error": failed.message, "hint": failed.hint}})
    except NbdeployError as error:
        _emit({"error": {"error": error.message, "hint": error.hint}})
    except BaseException as error:  # the server shows it; the traceback goes to stderr
        import traceback

        traceback.print_exc()
        _emit({"error": {"error": f"{type(error).__name__}: {error}", "hint": None}})
    else:
        _emit({"result": result})
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
