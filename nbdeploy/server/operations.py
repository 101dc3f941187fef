"""Long operations of the REST API (a deploy, a run) in threads off the event loop.

An :class:`Operation` collects the core's notices as messages and its progress (cells
executed of all cells, or runs finished of a sweep) as ``step``/``steps``; clients poll
``GET operations/ID``. One operation per subject (a deployment name) at a time: a second
one is refused with 409 while the first runs.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from nbdeploy.errors import NbdeployError
from nbdeploy.server.errors import ApiError

RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"
MAX_MESSAGES = 500
KEEP_FINISHED = 200
log = logging.getLogger("nbdeploy.server")


@dataclass
class Operation:
    """One deploy or run: its messages, progress, and result or error."""

    id: str
    kind: str
    subject: str | None
    status: str = RUNNING
    messages: list[str] = field(default_factory=list)
    step: int = 0
    steps: int = 0
    result: Any = None
    error: dict[str, Any] | None = None
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def say(self, message: str) -> None:
        """A notice of the core (``notify``), kept for the client."""
        with self._lock:
            self.messages.append(str(message))
            del self.messages[:-MAX_MESSAGES]

    def warn(self, message: str) -> None:
        self.say(f"warning: {message}")

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "id": self.id,
                "kind": self.kind,
                "subject": self.subject,
                "status": self.status,
                "messages": list(self.messages),
                "step": self.step,
                "steps": self.steps,
                "result": self.result,
                "error": self.error,
                "started_at": self.started_at,
                "ended_at": self.ended_at,
            }


class OperationFailed(Exception):
    """Work that finished but did not succeed (a failed run): the operation fails with
    ``message`` and keeps ``result``."""

    def __init__(self, result: Any, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.result = result
        self.message = message
        self.hint = hint


class OperationProgress:
    """A core :class:`~nbdeploy.pipeline.progress.Progress` that moves an operation's steps
    (cells executed of the notebook's cells)."""

    def __init__(self, operation: Operation) -> None:
        self.operation = operation

    def start(self, label: str, total_cells: int) -> None:
        self.operation.steps = total_cells
        self.operation.step = 0
        self.operation.say(f"running {label}")

    def cell_started(self, position: int, cell_number: int, first_line: str) -> None:
        # ``position`` counts from 1; the epilogue nbdeploy adds runs as the last step
        self.operation.step = min(position, self.operation.steps or position)

    def output(self, text: str, stream: str) -> None:
        pass

    def finish(self, ok: bool, summary: str, interrupted: bool = False) -> None:
        if ok:
            self.operation.step = self.operation.steps
        self.operation.say(summary)


class Operations:
    """The server's operations: started in a thread pool, kept (the latest) for polling."""

    def __init__(self, max_workers: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="nbdeploy-op")
        self._lock = threading.Lock()
        self._operations: OrderedDict[str, Operation] = OrderedDict()
        self._busy: dict[str, str] = {}  # subject -> id of its running operation

    def start(self, kind: str, subject: str | None, work: Callable[[Operation], Any]) -> Operation:
        """Run ``work(operation)`` in the pool; its return value is the result (JSON-ready).
        409 when ``subject`` has an operation running."""
        with self._lock:
            if subject is not None and subject in self._busy:
                running = self._busy[subject]
                raise ApiError(
                    409,
                    f"{subject} has an operation in progress ({running})",
                    None,
                    f"wait for it: GET operations/{running}",
                )
            operation = Operation(id=uuid.uuid4().hex[:12], kind=kind, subject=subject)
            self._operations[operation.id] = operation
            if subject is not None:
                self._busy[subject] = operation.id
            self._forget_old()
        self._pool.submit(self._run, operation, work)
        return operation

    def busy(self, subject: str) -> str | None:
        """The id of ``subject``'s running operation, if any."""
        with self._lock:
            return self._busy.get(subject)

    def refuse_if_busy(self, subject: str) -> None:
        running = self.busy(subject)
        if running is not None:
            raise ApiError(
                409,
                f"{subject} has an operation in progress ({running})",
                None,
                f"wait for it: GET operations/{running}",
            )

    def get(self, operation_id: str) -> Operation:
        with self._lock:
            operation = self._operations.get(operation_id)
        if operation is None:
            raise ApiError(404, f"no operation {operation_id!r}", None, "GET operations lists them")
        return operation

    def recent(self, limit: int = 50) -> list[Operation]:
        with self._lock:
            return list(reversed(self._operations.values()))[:limit]

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, operation: Operation, work: Callable[[Operation], Any]) -> None:
        try:
            result = work(operation)
        except OperationFailed as failed:
            error = {"error": failed.message, "hint": failed.hint}
            self._end(operation, FAILED, result=failed.result, error=error)
        except NbdeployError as error:
            self._end(operation, FAILED, error={"error": error.message, "hint": error.hint})
        except ApiError as error:
            self._end(operation, FAILED, error={"error": error.message, "hint": error.hint})
        except BaseException as error:  # an operation never stays "running"
            log.exception("nbdeploy operation %s (%s) failed", operation.id, operation.kind)
            self._end(
                operation,
                FAILED,
                error={
                    "error": f"{type(error).__name__}: {error}",
                    "hint": "the Jupyter server's log has the details",
                },
            )
        else:
            self._end(operation, SUCCEEDED, result=result)

    def _end(
        self,
        operation: Operation,
        status: str,
        result: Any = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        with operation._lock:
            operation.result = result
            operation.error = error
            operation.ended_at = time.time()
            operation.status = status
        with self._lock:
            if operation.subject is not None and self._busy.get(operation.subject) == operation.id:
                del self._busy[operation.subject]

    def _forget_old(self) -> None:
        finished = [op.id for op in self._operations.values() if op.status != RUNNING]
        for operation_id in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._operations[operation_id]
