"""Parameter sweeps: the cartesian product of ``--sweep`` values, run N kernels at a time.

Every combination is checked before any kernel starts; a failed combination does not stop
the others. The combinations run here or on a Dask cluster
(:mod:`nbdeploy.pipeline.executors`).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Mapping
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy.errors import ParameterError
from nbdeploy.notebook.reader import read_notebook
from nbdeploy.pipeline.executors import Executor, resolve_executor, start_executor
from nbdeploy.pipeline.kernels import KernelChoice, choose_kernel
from nbdeploy.pipeline.progress import NullProgress, Progress
from nbdeploy.pipeline.runner import (
    Notify,
    RunFiles,
    RunOutcome,
    _ignore,
    json_safe,
    prepare_run,
)
from nbdeploy.store import StateStore, default_store
from nbdeploy.store.runs import FAILED, SUCCEEDED, RunStore


@dataclass
class SweepResult:
    group_id: str
    notebook: str
    swept: list[str]
    outcomes: list[RunOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(outcome.ok for outcome in self.outcomes)

    @property
    def failed(self) -> int:
        return sum(not outcome.ok for outcome in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "sweep",
            "group_id": self.group_id,
            "notebook": self.notebook,
            "swept": self.swept,
            "ok": self.ok,
            "failed": self.failed,
            "runs": [outcome.to_dict() for outcome in self.outcomes],
        }


def parse_sweep_option(option: str) -> tuple[str, list[Any], bool]:
    """``NAME=V1,V2`` -> (name, ["V1", "V2"], True); ``NAME=[1, [2, 3]]`` (JSON) -> typed values.

    The flag says whether the values are command-line text (to convert) or typed.
    """
    name, sep, values = option.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier() or not values.strip():
        raise ParameterError(
            f"--sweep {option!r} is not of the form NAME=V1,V2,...",
            "e.g. --sweep n_estimators=50,100,200",
        )
    text = values.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ParameterError(
                f"--sweep {name}: {text!r} is not a JSON list ({exc.msg})"
            ) from None
        if not isinstance(parsed, list) or not parsed:
            raise ParameterError(f"--sweep {name}: give a non-empty JSON list of values")
        return name, parsed, False
    return name, [item.strip() for item in text.split(",")], True


def grid(axes: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of the axes, in a stable order (first axis varies slowest)."""
    names = list(axes)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes.values())]


def run_sweep(
    notebook: str | Path,
    sweep_options: list[str],
    *,
    values: Mapping[str, Any] | None = None,
    text_values: Mapping[str, str] | None = None,
    parallel: int | None = None,
    kernel: str | None = None,
    output_dir: str | Path | None = None,
    timeout: float | None = None,
    track_mlflow: bool = True,
    store: StateStore | None = None,
    progress_for: Callable[[int, dict[str, Any]], Progress] | None = None,
    on_done: Callable[[int, RunOutcome], None] | None = None,
    notify: Notify = _ignore,
    warn: Notify = _ignore,
    executor: str | None = None,
    scheduler: str | None = None,
    inputs: list[Path] | None = None,
) -> SweepResult:
    """Run every combination, ``parallel`` at a time (default 1 here; with Dask, every
    worker). ``executor``: "local" (default) or "dask", ``scheduler`` the Dask scheduler's
    address (default: a local cluster); ``inputs``: the files and folders that travel with
    each run to a Dask worker (default: the notebook's folder)."""
    spec = resolve_executor(executor, scheduler)
    with start_executor(spec, parallel, notify=notify) as engine:
        return _run_sweep(
            engine,
            notebook,
            sweep_options,
            values=values,
            text_values=text_values,
            kernel=kernel,
            output_dir=output_dir,
            timeout=timeout,
            track_mlflow=track_mlflow,
            store=store,
            progress_for=progress_for,
            on_done=on_done,
            notify=notify,
            warn=warn,
            inputs=inputs,
        )


def _run_sweep(
    engine: Executor,
    notebook: str | Path,
    sweep_options: list[str],
    *,
    values: Mapping[str, Any] | None,
    text_values: Mapping[str, str] | None,
    kernel: str | None,
    output_dir: str | Path | None,
    timeout: float | None,
    track_mlflow: bool,
    store: StateStore | None,
    progress_for: Callable[[int, dict[str, Any]], Progress] | None,
    on_done: Callable[[int, RunOutcome], None] | None,
    notify: Notify,
    warn: Notify,
    inputs: list[Path] | None,
) -> SweepResult:
    nb = read_notebook(notebook)
    axes_text: dict[str, list[str]] = {}
    axes_typed: dict[str, list[Any]] = {}
    for option in sweep_options:
        name, axis_values, is_text = parse_sweep_option(option)
        (axes_text if is_text else axes_typed)[name] = axis_values
    combos = grid({**axes_text, **axes_typed})
    choice = choose_kernel(nb, kernel)
    if choice.notice:
        notify(choice.notice)
    prepared = []
    for index, combo in enumerate(combos):
        combo_text = {k: v for k, v in combo.items() if k in axes_text}
        combo_typed = {k: v for k, v in combo.items() if k in axes_typed}
        output_path = None
        if output_dir is not None:
            output_path = Path(output_dir) / sweep_output_name(nb.path.stem, index, combo)
        run = prepare_run(
            nb,
            {**(values or {}), **combo_typed},
            {**(text_values or {}), **combo_text},
            output_path=output_path,
            kernel_choice=KernelChoice(choice.name),
        )
        run.files = RunFiles(
            paths=inputs, exclude=[Path(output_dir).resolve()] if output_dir is not None else []
        )
        prepared.append(run)
    engine.check(prepared)
    engine.ready()
    store = store or default_store()
    records = RunStore(store)
    swept = list(axes_text) + list(axes_typed)
    group = records.create_group(
        "sweep",
        str(nb.path),
        {
            "axes": json_safe({**axes_text, **axes_typed}),
            "parallel": engine.parallel,
            **engine.group_spec(),
        },
    )
    result = SweepResult(group_id=group.id, notebook=str(nb.path), swept=swept)
    outcomes: dict[int, RunOutcome] = {}

    def one(index: int) -> RunOutcome:
        progress = progress_for(index, combos[index]) if progress_for else NullProgress()
        return engine.execute_run(
            prepared[index],
            store=store,
            timeout=timeout,
            progress=progress,
            track_mlflow=track_mlflow,
            group_id=group.id,
            warn=warn,
        )

    with engine.pool(records, group.id, thread_name_prefix="nbdeploy-sweep") as pool:
        futures = {pool.submit(one, index): index for index in range(len(prepared))}
        for future in as_completed(futures):
            index = futures[future]
            outcomes[index] = future.result()
            if on_done:
                on_done(index, outcomes[index])
    result.outcomes = [outcomes[i] for i in range(len(prepared))]
    records.finish_group(group.id, SUCCEEDED if result.ok else FAILED)
    return result


def sweep_output_name(stem: str, index: int, combo: Mapping[str, Any]) -> str:
    """``train-03-n_estimators=50-max_depth=5.ipynb``: unique, readable, safe as a file name."""
    label = "-".join(f"{k}={v}" for k, v in combo.items())
    label = re.sub(r"[^A-Za-z0-9._=+-]+", "_", label)[:80]
    return f"{stem}-{index + 1:02d}-{label}.ipynb"
