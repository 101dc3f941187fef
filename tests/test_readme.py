"""The README's code runs as written: every bash and python block that needs no cluster,
registry, Docker engine or notebook kernel is run, in order, in a folder holding the example
notebooks, with a fresh NBDEPLOY_HOME; every other block says why it is not run, with an
HTML comment just before it (``<!-- readme-test: not run: REASON -->``, invisible on the
rendered page)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
README = REPOSITORY / "README.md"
NOT_RUN = re.compile(r"<!-- readme-test: not run: (?P<reason>[^>]+?) -->\s*$")
FENCE = re.compile(r"^```(?P<language>\w*)\s*$")
RUN_LANGUAGES = {"bash", "python"}
# In the README's shell blocks, an HTTP error is a failure (as it is to the reader).
BASH_PRELUDE = 'curl() { command curl --silent --show-error --fail-with-body "$@"; echo; }\n'


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    not_run: str | None  # the reason given, or None: it runs

    def where(self) -> str:
        return f"README.md line {self.line} ({self.language})"


def blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text`` with their language and whether they run."""
    found: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines) and not lines[index].startswith("```"):
            body.append(lines[index])
            index += 1
        before = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        marked = NOT_RUN.match(before.strip())
        found.append(
            Block(
                start + 1,
                fence.group("language"),
                "\n".join(body) + "\n",
                marked.group("reason") if marked else None,
            )
        )
        index += 1
    return found


def test_every_block_runs_or_says_why_not():
    found = blocks(README.read_text(encoding="utf-8"))
    assert len(found) > 20
    for block in found:
        if block.language not in RUN_LANGUAGES:
            assert block.not_run is None, f"{block.where()}: only bash and python blocks run"
            continue
        magics = [line for line in block.code.splitlines() if line.lstrip().startswith("%")]
        assert not magics or block.not_run, f"{block.where()}: magics need a kernel: {magics}"
        placeholders = re.findall(r"\bPORT\b|<[A-Z][\w-]*>|\$TOKEN", _without_comments(block))
        assert not placeholders or block.not_run, (
            f"{block.where()}: placeholders {placeholders} cannot run as written"
        )
    runs = [block for block in found if block.language in RUN_LANGUAGES and not block.not_run]
    assert len(runs) >= 8, [block.where() for block in runs]


def _without_comments(block: Block) -> str:
    if block.language == "python":
        return "\n".join(line.split("#", 1)[0] for line in block.code.splitlines())
    return "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in block.code.splitlines())


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_the_readme_runs_as_written(tmp_path, home, python_kernel):
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copytree(
        REPOSITORY / "example_notebooks",
        folder / "example_notebooks",
        ignore=shutil.ignore_patterns("data", ".ipynb_checkpoints"),
    )
    (folder / ".venv").symlink_to(Path(sys.prefix))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "JPY_"))}
    env.update(
        NBDEPLOY_HOME=str(home),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
    )
    ran: list[str] = []
    try:
        for block in blocks(README.read_text(encoding="utf-8")):
            if block.language not in RUN_LANGUAGES or block.not_run:
                continue
            if block.language == "bash":
                command = ["bash", "-e", "-o", "pipefail", "-c", BASH_PRELUDE + block.code]
            else:
                script = tmp_path / f"readme-{block.line}.py"
                script.write_text(block.code, encoding="utf-8")
                command = [sys.executable, str(script)]
            completed = subprocess.run(
                command,
                cwd=folder,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            assert completed.returncode == 0, (
                f"{block.where()} failed (exit {completed.returncode}):\n{block.code}\n"
                f"--- stdout\n{completed.stdout[-4000:]}\n--- stderr\n{completed.stderr[-4000:]}"
            )
            ran.append(block.where())
        # What the blocks made is there: runs, a deployment answering, a workflow, a report.
        assert (folder / "example_notebooks" / "data" / "train.csv").is_file()
        assert (folder / ".github" / "workflows" / "nbdeploy.yml").is_file()
        assert (folder / "report.html").is_file()
        assert len(ran) >= 8, ran
    finally:  # the daemon and launcher end with the home fixture; the services here
        import nbdeploy

        for deployment in nbdeploy.status():
            if deployment.status != "stopped":
                nbdeploy.stop(deployment.name)
