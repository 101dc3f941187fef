"""Integration: a corpus of notebooks that real users bring, each deployed and asked the
questions the notebook itself answered.

Every folder under ``tests/notebooks/`` is one case: the notebook ``<case>.ipynb``, the
local modules it imports, and ``case.json``::

    {"target": "predict",                        # function or object to deploy
     "options": ["--reference", "X_train"],      # extra %deploy flags
     "route": "/predict",
     "request": "{'rows': X_test[:5].tolist()}",  # Python, evaluated in the kernel
     "expected": "predict(X_test[:5].tolist())",  # Python, evaluated in the kernel
     "more": [{"route": ..., "request": ..., "expected": ...}],
     "description": "..."}

Public notebooks (written by others) carry a ``PROVENANCE.md``: where they come from, their
licence and every change made to them. Those are also deployed from the command line.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import start_new_kernel

CORPUS = Path(__file__).resolve().parent / "notebooks"
SKIP_TAG = "nbdeploy:skip"
CASES = sorted(path.parent.name for path in CORPUS.glob("*/case.json"))
PUBLIC = [case for case in CASES if (CORPUS / case / "PROVENANCE.md").exists()]
MARK = "<<nbdeploy-corpus>>"


@dataclass
class Check:
    """One request to the service and the answer the notebook gave for it."""

    route: str
    request: Any
    expected: Any


class KernelCellError(AssertionError):
    """A cell failed in the kernel."""


def load_case(case: str) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads((CORPUS / case / "case.json").read_text(encoding="utf-8"))
    return spec


def deployment_name(case: str) -> str:
    """The case's folder name as a deployment name (a DNS label)."""
    name = case.replace("_", "-")
    assert re.fullmatch(r"[a-z][a-z0-9-]{0,38}[a-z0-9]", name), f"{case}: not a DNS label"
    return name


def copy_case(case: str, tmp_path: Path) -> Path:
    """The case folder copied under tmp_path (the kernel writes next to its notebook)."""
    folder = tmp_path / "notebooks" / case
    shutil.copytree(
        CORPUS / case, folder, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")
    )
    return folder


def code_cells(notebook: Path) -> list[tuple[int, str]]:
    """(number among all cells, source) of the code cells not tagged nbdeploy:skip, in order."""
    cells = nbformat.read(notebook, as_version=4).cells
    return [
        (number, cell.source)
        for number, cell in enumerate(cells, start=1)
        if cell.cell_type == "code" and SKIP_TAG not in cell.metadata.get("tags", [])
    ]


def defines_function(notebook: Path, name: str) -> bool:
    pattern = re.compile(rf"^(async\s+)?def\s+{re.escape(name)}\s*\(", re.MULTILINE)
    return any(pattern.search(source) for _, source in code_cells(notebook))


@contextmanager
def kernel(folder: Path, notebook: Path) -> Iterator[BlockingKernelClient]:
    """A python3 kernel in the notebook's folder, as JupyterLab starts one.

    It inherits this process's environment, so NBDEPLOY_HOME (set by the ``home`` fixture)
    reaches it; JPY_SESSION_NAME names the notebook, as JupyterLab sets it.
    """
    env = {**os.environ, "JPY_SESSION_NAME": str(notebook)}
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(folder), env=env)
    try:
        yield client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def execute(client: BlockingKernelClient, code: str, timeout: float = 600) -> str:
    """Run code in the kernel; its printed output, or KernelCellError with that output."""
    chunks: list[str] = []

    def collect(message: dict[str, Any]) -> None:
        kind, content = message["msg_type"], message["content"]
        if kind == "stream":
            chunks.append(content["text"])
        elif kind in {"display_data", "execute_result"}:
            chunks.append(content["data"].get("text/plain", "") + "\n")
        elif kind == "error":
            chunks.append(f"{content['ename']}: {content['evalue']}\n")

    reply = client.execute_interactive(
        code, timeout=timeout, output_hook=collect, allow_stdin=False
    )
    output = "".join(chunks)
    if reply["content"]["status"] != "ok":
        content = reply["content"]
        raise KernelCellError(
            f"{content.get('ename', 'error')}: {content.get('evalue', '')}\n{output[-4000:]}"
        )
    return output


def run_notebook(client: BlockingKernelClient, notebook: Path) -> None:
    """Execute every code cell not tagged nbdeploy:skip, in order, as a user would."""
    for number, source in code_cells(notebook):
        try:
            execute(client, source)
        except KernelCellError as error:
            first = source.strip().splitlines()[0] if source.strip() else ""
            raise KernelCellError(f"{notebook.name}, cell {number} ({first!r}): {error}") from None


def evaluate_json(client: BlockingKernelClient, expression: str) -> Any:
    """The value of a Python expression in the kernel, through JSON."""
    output = execute(client, f"print({MARK!r} + __import__('json').dumps(({expression})))")
    lines = [line for line in output.splitlines() if line.startswith(MARK)]
    assert lines, f"no value printed for {expression!r}: {output[-2000:]}"
    return json.loads(lines[-1][len(MARK) :])


def notebook_checks(client: BlockingKernelClient, spec: dict[str, Any]) -> list[Check]:
    """The case's requests and the notebook's own answers, evaluated in its kernel."""
    return [
        Check(
            item["route"],
            evaluate_json(client, item["request"]),
            evaluate_json(client, item["expected"]),
        )
        for item in [spec, *spec.get("more", [])]
    ]


def post(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            status, text = answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def assert_matches(actual: Any, expected: Any, where: str = "answer") -> None:
    """Equal JSON values; numbers within a relative tolerance of 1e-6, bools exactly."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        assert actual is expected, f"{where}: {actual!r} != {expected!r}"
    elif isinstance(expected, int | float):
        assert isinstance(actual, int | float), f"{where}: {actual!r} is not a number"
        assert math.isclose(actual, expected, rel_tol=1e-6, abs_tol=1e-9), (
            f"{where}: {actual!r} != {expected!r}"
        )
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: {actual!r} is not a list"
        assert len(actual) == len(expected), f"{where}: {len(actual)} items, not {len(expected)}"
        for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
            assert_matches(got, want, f"{where}[{index}]")
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        assert sorted(actual) == sorted(expected), f"{where}: keys {sorted(actual)}"
        for key, want in expected.items():
            assert_matches(actual[key], want, f"{where}[{key!r}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def ask(url: str, check: Check) -> None:
    status, answer = post(url + check.route, check.request)
    assert status == 200, f"POST {check.route}: {status} {str(answer)[:2000]}"
    assert_matches(answer, check.expected, f"POST {check.route}")


def stop_everything() -> None:
    """Stop every deployment of this test's NBDEPLOY_HOME (nothing is left serving)."""
    from nbdeploy import api

    try:
        deployments = api.status()
    except Exception as error:  # cleanup must not hide the test's own failure
        print(f"could not list deployments: {error}")
        return
    for deployment in deployments:
        try:
            api.stop(deployment.name)
        except Exception as error:
            print(f"could not stop {deployment.name}: {error}")


@pytest.mark.parametrize("case", CASES)
def test_case_folder_is_complete(case: str) -> None:
    spec = load_case(case)
    assert {"target", "options", "route", "request", "expected", "description"} <= set(spec)
    deployment_name(case)
    notebook = nbformat.read(CORPUS / case / f"{case}.ipynb", as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    assert notebook.metadata.language_info.name == "python"
    for item in [spec, *spec.get("more", [])]:
        assert item["route"].startswith("/")
        for key in ("request", "expected"):
            compile(item[key], f"{case}/case.json:{key}", "eval")
    if case in PUBLIC:
        provenance = (CORPUS / case / "PROVENANCE.md").read_text(encoding="utf-8")
        assert "Licence" in provenance and "change" in provenance.lower()


def test_the_corpus_has_public_notebooks() -> None:
    assert len(PUBLIC) >= 2, PUBLIC


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.integration
@pytest.mark.usefixtures("python_kernel")
def test_deployed_from_its_kernel_the_notebook_answers_as_in_the_notebook(
    case: str, tmp_path: Path
) -> None:
    spec = load_case(case)
    folder = copy_case(case, tmp_path)
    notebook = folder / f"{case}.ipynb"
    name = deployment_name(case)
    options = " ".join(shlex.quote(option) for option in spec.get("options", []))
    try:
        with kernel(folder, notebook) as client:
            try:
                run_notebook(client, notebook)
                checks = notebook_checks(client, spec)
                execute(client, "%load_ext nbdeploy")
                execute(client, f"%deploy {spec['target']} {options} --name {name}", timeout=900)
                url = evaluate_json(client, f"__import__('nbdeploy').status({name!r})[0].url")
                for check in checks:
                    ask(url, check)
            finally:
                with suppress(KernelCellError):  # not deployed: nothing to stop
                    execute(client, f"%deploy stop {name}", timeout=120)
    finally:
        stop_everything()


@pytest.mark.timeout(1500)
@pytest.mark.parametrize("case", PUBLIC)
@pytest.mark.integration
@pytest.mark.usefixtures("python_kernel")
def test_public_notebook_deployed_from_the_command_line(
    case: str, tmp_path: Path, cli: Callable[..., Any]
) -> None:
    spec = load_case(case)
    folder = copy_case(case, tmp_path)
    notebook = folder / f"{case}.ipynb"
    name = deployment_name(case)
    with kernel(folder, notebook) as client:  # the notebook's own answers
        run_notebook(client, notebook)
        checks = notebook_checks(client, spec)
    flag = "--function" if defines_function(notebook, spec["target"]) else "--object"
    try:
        deployed = cli(
            "deploy",
            str(notebook),
            flag,
            spec["target"],
            *spec.get("options", []),
            "--name",
            name,
            "--json",
            cwd=folder,
            timeout=1200,
        )
        assert deployed.code == 0, deployed
        status = cli("status", name, "--json")
        assert status.code == 0, status
        url = status.json[0]["url"]
        for check in checks:
            ask(url, check)
    finally:
        cli("stop", name)
        stop_everything()
