"""What a notebook records into its current run: metrics, parameters and artifacts.

``nbdeploy run`` starts the kernel with ``NBDEPLOY_RUN_DIR`` set; these functions append
JSON lines to ``results.jsonl`` there, and the runner files them into the state store and
MLflow when the run ends. Run by hand, they print a one-line notice and do nothing else.
This module is imported inside user kernels, so it imports only the standard library.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from nbdeploy.numbers import finite_or_none
from nbdeploy.private_files import make_private, open_private, private_dir

RUN_DIR_ENV = "NBDEPLOY_RUN_DIR"
RUN_ID_ENV = "NBDEPLOY_RUN_ID"
# Set in the kernel of a run that ends with nbdeploy's own deploy step (nbdeploy deploy
# NOTEBOOK, the sidebar's Deploy): %deploy lines in the notebook then do not deploy.
DEPLOY_STEP_ENV = "NBDEPLOY_DEPLOY_STEP"
RESULTS_FILE = "results.jsonl"
ARTIFACTS_DIR = "artifacts"

_lock = threading.Lock()
_notice_shown = False


def current_run_dir() -> Path | None:
    value = os.environ.get(RUN_DIR_ENV)
    return Path(value) if value else None


def _record(kind: str, **fields: Any) -> bool:
    run_dir = current_run_dir()
    if run_dir is None:
        _notice(kind)
        return False
    line = json.dumps({"kind": kind, "at": time.time(), **fields}, default=str)
    with _lock, open_private(run_dir / RESULTS_FILE, "a", encoding="utf-8") as results:
        results.write(line + "\n")
    return True


def _notice(kind: str) -> None:
    global _notice_shown
    if not _notice_shown:
        _notice_shown = True
        show_note(
            f"nbdeploy: log_{kind} is not recorded: this notebook is not running under "
            "`nbdeploy run` (further calls are ignored as well)"
        )


def show_note(text: str) -> None:
    """A note, not an error: in a Jupyter kernel a small grey line of HTML (stderr would
    show in the pink box of errors), elsewhere a line on stdout."""
    shell = _kernel_shell()
    if shell is None:
        print(text, flush=True)
        return
    from html import escape

    from IPython.display import display

    note = (
        '<div class="nbdeploy-note" style="color: var(--jp-ui-font-color2, #616161); '
        f'font-size: var(--jp-ui-font-size1, 13px); padding: 2px 0">{escape(text)}</div>'
    )
    display({"text/html": note, "text/plain": text}, raw=True)


def _kernel_shell() -> Any:
    """The IPython shell of a Jupyter kernel, if this runs in one (IPython is only looked
    up when already imported: this module imports only the standard library)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell if is_kernel_shell(shell) else None


def is_kernel_shell(shell: Any) -> bool:
    """Whether ``shell`` is a Jupyter kernel's, whose front end can show rich output and
    widgets (a terminal IPython cannot)."""
    return type(shell).__name__ == "ZMQInteractiveShell"


def log_metric(name: str, value: float, step: int = 0) -> None:
    """Record a numeric result (accuracy, loss, ...) of the current run.

    NaN and infinities are no result to compare runs by: the metric is recorded as missing
    (null), with a one-line warning, and the run goes on."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"log_metric: the name must be a non-empty string, got {name!r}")
    if isinstance(value, bool):
        value = int(value)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(
            f"log_metric({name!r}, ...): the value must be a number, got {value!r}"
        ) from None
    if not math.isfinite(number):
        print(
            f"nbdeploy: warning: metric {name!r} is {number!r}, not a finite number: "
            "recorded as missing",
            file=sys.stderr,
        )
        _record("metric", name=name, value=None, step=int(step), invalid=repr(number))
        return
    _record("metric", name=name, value=number, step=int(step))


def log_param(name: str, value: Any) -> None:
    """Record a parameter the notebook derived or chose (beyond its declared parameters)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"log_param: the name must be a non-empty string, got {name!r}")
    _record("param", name=name, value=value)


def log_artifact(path: str | os.PathLike[str]) -> None:
    """Keep a file (a plot, a report, a model file) with the current run."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"log_artifact: no file at {source.resolve()}")
    run_dir = current_run_dir()
    if run_dir is None:
        _notice("artifact")
        return
    target_dir = run_dir / ARTIFACTS_DIR
    target = private_dir(target_dir) / source.name
    shutil.copy2(source, target)
    make_private(target)  # copy2 copied the source's mode: the run's copy is owner-only
    _record("artifact", path=str(target), source=str(source.resolve()))


def record_deployed(name: str, version: int, url: str | None) -> None:
    """Note in the current run (if any: silently otherwise) that the notebook deployed."""
    if current_run_dir() is not None:
        _record("deployed", name=name, version=version, url=url)


def record_deploy_note(name: str, version: int | None, url: str | None, note: str) -> None:
    """Note in the current run what its pipeline step's deploy did: the version it deployed
    (``version`` None: it did not deploy) and why (``deployed: ...`` / ``not deployed:
    ...``)."""
    if current_run_dir() is not None:
        _record(
            "deployed", name=name, version=version, url=url, deployed=version is not None,
            note=note,
        )  # fmt: skip


def read_results(run_dir: Path) -> dict[str, Any]:
    """What a run logged: ``metrics`` [(name, value, step)], ``params`` {}, ``artifacts`` [],
    ``deployed`` [{name, version, url}] (what %deploy lines deployed; a pipeline step's
    deploy adds ``deployed`` and ``note``, and version None when it did not deploy), and ``missing``
    {name: what was logged} for metrics logged as NaN or infinity (their value is None in
    ``metrics``). A malformed line is skipped, never fatal."""
    metrics: list[tuple[str, float | None, int]] = []
    missing: dict[str, str] = {}
    params: dict[str, Any] = {}
    artifacts: list[str] = []
    deployed: list[dict[str, Any]] = []
    results = run_dir / RESULTS_FILE
    if results.exists():
        for line in results.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                kind = entry.get("kind")
                if kind == "metric":
                    name, raw = str(entry["name"]), entry.get("value")
                    value = finite_or_none(raw)
                    if value is None:
                        missing[name] = str(entry.get("invalid", raw))
                    metrics.append((name, value, int(entry.get("step", 0))))
                elif kind == "param":
                    params[entry["name"]] = entry["value"]
                elif kind == "artifact" and entry["path"] not in artifacts:
                    artifacts.append(entry["path"])
                elif kind == "deployed":
                    version = entry["version"]
                    item = {"name": str(entry["name"]),
                            "version": None if version is None else int(version),
                            "url": entry.get("url")}  # fmt: skip
                    if "note" in entry:  # a pipeline step's deploy: whether, and why
                        item["deployed"] = version is not None
                        item["note"] = str(entry["note"])
                    deployed.append(item)
            except (ValueError, TypeError, KeyError, AttributeError):
                continue  # a line cut short by a killed kernel, or written by hand
    return {
        "metrics": metrics,
        "params": params,
        "artifacts": artifacts,
        "deployed": deployed,
        "missing": missing,
    }
