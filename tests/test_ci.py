"""``nbdeploy ci init`` writes a valid GitHub Actions workflow at the repository's root that
installs nbdeploy from a source the runner can reach; targets and --install are validated;
the workflow's steps run in a fresh clone."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from nbdeploy import __version__
from nbdeploy.ci import default_install, parse_install, write_github_workflow
from nbdeploy.errors import NbdeployError

EXAMPLES = Path(__file__).resolve().parent.parent / "example_notebooks"
GIT_IDENTITY = ["-c", "user.name=nbdeploy tests", "-c", "user.email=tests@example.invalid"]


def git(folder: Path, *arguments: str) -> str:
    completed = subprocess.run(
        ["git", "-c", "init.defaultBranch=main", *GIT_IDENTITY, *arguments],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def workflow_steps(path: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load(path.read_text())["jobs"]["pipelines"]["steps"])


def run_lines(path: Path) -> list[str]:
    return [line for step in workflow_steps(path) for line in step.get("run", "").splitlines()]


def test_ci_init_finds_pipelines_and_writes_a_workflow(tmp_path, cli):
    shutil.copytree(EXAMPLES, tmp_path / "example_notebooks", ignore=shutil.ignore_patterns("data"))
    (tmp_path / "requirements.txt").write_text("scikit-learn\n")
    result = cli("ci", "init", cwd=tmp_path)
    assert result.code == 0, result
    # Outside a git repository: the current folder, and a notice that says so.
    assert "is not inside a git repository" in result.err
    workflow = tmp_path / ".github/workflows/nbdeploy.yml"
    steps = workflow_steps(workflow)
    lines = run_lines(workflow)
    # nbdeploy as installed here (an editable checkout the runner cannot reach): the release
    # of this version, said in a notice; then the project's requirements.
    assert lines.index(f"python -m pip install nbdeploy=={__version__}") < lines.index(
        "python -m pip install -r requirements.txt"
    )
    assert f"installs nbdeploy=={__version__} from the package index" in result.err
    assert "--install" in result.err
    assert steps[1]["with"]["cache-dependency-path"] == "requirements.txt"
    commands = "\n".join(lines)
    assert "nbdeploy run example_notebooks/pipeline.yaml" in commands
    assert "--junit nbdeploy-output/example_notebooks-pipeline.xml" in commands
    assert steps[-1]["if"] == "always()"
    again = cli("ci", "init", cwd=tmp_path)
    assert again.code == 2 and "exists already" in again.err


def test_ci_init_in_a_subfolder_writes_at_the_repository_root(tmp_path):
    git(tmp_path, "init", "-q")
    notebooks = tmp_path / "example_notebooks"
    shutil.copytree(EXAMPLES, notebooks, ignore=shutil.ignore_patterns("data"))
    (notebooks / "requirements.txt").write_text("scikit-learn\n")
    git(tmp_path, "add", "example_notebooks/train.ipynb")
    notices: list[str] = []
    written = write_github_workflow(
        ["train.ipynb", "pipeline.yaml"],
        cwd=notebooks,
        install=f"nbdeploy=={__version__}",
        notify=notices.append,
    )
    assert written == tmp_path / ".github/workflows/nbdeploy.yml"
    assert not (notebooks / ".github").exists()
    commands = run_lines(written)
    assert any(line.startswith("nbdeploy run example_notebooks/train.ipynb ") for line in commands)
    assert any(
        line.startswith("nbdeploy run example_notebooks/pipeline.yaml ") for line in commands
    )
    # The folder's own requirements, relative to the root where the steps run.
    assert "python -m pip install -r example_notebooks/requirements.txt" in commands
    # What the checkout will lack is told (train.ipynb is tracked, pipeline.yaml is not).
    assert notices == [
        "example_notebooks/pipeline.yaml is not in git yet: the workflow's checkout has "
        "committed files only (git add example_notebooks/pipeline.yaml, with -f when "
        ".gitignore names it)"
    ]


def test_without_git_the_root_is_the_nearest_folder_with_a_git_entry(tmp_path, monkeypatch):
    from nbdeploy import ci

    (tmp_path / ".git").mkdir()
    (tmp_path / "a/b").mkdir(parents=True)
    monkeypatch.setattr(ci, "_git", lambda *_arguments: None)  # git missing or refusing
    assert ci.repository_root(tmp_path / "a/b") == tmp_path.resolve()


def test_ci_init_without_requirement_files_caches_nothing(tmp_path):
    (tmp_path / "train.ipynb").write_text("{}")
    written = write_github_workflow(["train.ipynb"], cwd=tmp_path, install="nbdeploy==1.0")
    setup = workflow_steps(written)[1]
    assert "cache" not in setup["with"], "setup-python's pip cache fails with no file to key it"


@pytest.mark.parametrize(
    "target", ["evil${{ github.token }}.ipynb", "a;rm -rf ~.ipynb", "x'y.ipynb"]
)
def test_ci_init_refuses_targets_that_could_inject(tmp_path, target):
    (tmp_path / target).write_text("{}")
    with pytest.raises(NbdeployError, match="may only contain"):
        write_github_workflow([target], cwd=tmp_path, install="nbdeploy==1.0")


def test_ci_init_refuses_targets_outside_the_repository(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    git(project, "init", "-q")
    (tmp_path / "outside.ipynb").write_text("{}")
    with pytest.raises(NbdeployError, match="outside the repository"):
        write_github_workflow(["../outside.ipynb"], cwd=project, install="nbdeploy==1.0")


# -- --install --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "argument"),
    [
        ("nbdeploy==0.1.0", "nbdeploy==0.1.0"),
        ("nbdeploy[dask]==0.2", "nbdeploy[dask]==0.2"),
        (
            "nbdeploy @ git+https://github.com/org/nbdeploy@v0.1.0",
            "nbdeploy @ git+https://github.com/org/nbdeploy@v0.1.0",
        ),
        (
            "git+https://github.com/org/nbdeploy@main#subdirectory=py",
            "nbdeploy @ git+https://github.com/org/nbdeploy@main#subdirectory=py",
        ),
        (
            "wheels/nbdeploy-0.1.0+g1a2b-py3-none-any.whl",
            "./wheels/nbdeploy-0.1.0+g1a2b-py3-none-any.whl",
        ),
    ],
)
def test_install_accepts_a_release_a_git_url_or_a_wheel_in_the_repository(
    tmp_path, value, argument
):
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels/nbdeploy-0.1.0+g1a2b-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "train.ipynb").write_text("{}")
    chosen = parse_install(value, cwd=tmp_path, root=tmp_path)
    assert chosen.argument == argument
    written = write_github_workflow(["train.ipynb"], cwd=tmp_path, install=value)
    line = next(
        line
        for line in run_lines(written)
        if line.startswith("python -m pip install ") and "nbdeploy" in line
    )
    # One shell word, exactly the value pip is given.
    assert shlex.split(line) == ["python", "-m", "pip", "install", argument]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("nbdeploy", "pinned to one version"),
        ("nbdeploy>=0.1", "pinned to one version"),
        ("nbdeploy~=0.1", "pinned to one version"),
        ("nbdeploy==0.*", "only letters, digits"),
        ("numpy==1.0", "names 'numpy', not nbdeploy"),
        ("nbdeploy==0.1.0\nrm -rf ~", "only letters, digits"),
        ("nbdeploy==0.1.0; rm -rf ~", "only letters, digits"),
        ("nbdeploy==0.1.0 && curl x", "not a requirement"),
        ("nbdeploy @ git+https://github.com/${{ github.token }}", "only letters, digits"),
        ("nbdeploy @ git+https://github.com/o/n'$(id)'", "only letters, digits"),
        ("nbdeploy @ git+ssh://git@github.com/org/nbdeploy", "Git URL over HTTPS"),
        ("nbdeploy @ file:///home/me/nbdeploy", "Git URL over HTTPS"),
        ("nbdeploy @ git+https://me:token@github.com/org/nbdeploy", "user name or password"),
        ("--index-url=https://evil.example", "not a requirement"),
        ("", "empty"),
        ("missing/nbdeploy-0.1.0-py3-none-any.whl", "no such wheel"),
        ("../outside/nbdeploy-0.1.0-py3-none-any.whl", "outside the repository"),
        ("wheels/numpy-1.0-py3-none-any.whl", "a wheel of numpy"),
        ("wheels/broken.whl", "not a wheel's file name"),
    ],
)
def test_install_refuses_what_is_not_an_allowed_form_and_says_which_are(tmp_path, value, reason):
    project = tmp_path / "project"
    (project / "wheels").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    for wheel in (
        "outside/nbdeploy-0.1.0-py3-none-any.whl",
        "project/wheels/numpy-1.0-py3-none-any.whl",
        "project/wheels/broken.whl",
    ):
        (tmp_path / wheel).write_bytes(b"")
    with pytest.raises(NbdeployError) as raised:
        parse_install(value, cwd=project, root=project)
    assert raised.value.message.startswith(f"--install {value!r}: ")
    assert reason in raised.value.message
    assert raised.value.hint is not None
    assert "nbdeploy==0.1.0" in raised.value.hint and "git+https://" in raised.value.hint
    assert "wheel committed to the repository" in raised.value.hint


def test_default_install_is_the_git_url_nbdeploy_came_from_at_its_commit():
    notices: list[str] = []
    direct_url = {
        "url": "https://github.com/org/nbdeploy.git",
        "vcs_info": {"vcs": "git", "commit_id": "1a2b3c4d", "requested_revision": "main"},
    }
    chosen = default_install("0.1.0", direct_url, notify=notices.append)
    assert chosen.argument == "nbdeploy @ git+https://github.com/org/nbdeploy.git@1a2b3c4d"
    assert notices == [
        "the workflow installs nbdeploy from git+https://github.com/org/nbdeploy.git@1a2b3c4d, "
        "as it is installed here"
    ]


@pytest.mark.parametrize(
    ("direct_url", "where"),
    [
        ({"url": "file:///work/nbdeploy", "dir_info": {"editable": True}}, "/work/nbdeploy"),
        ({"url": "file:///tmp/nbdeploy-0.1.0-py3-none-any.whl", "archive_info": {}}, "/tmp/"),
        ({"url": "ssh://git@github.com/org/nbdeploy", "vcs_info": {"vcs": "git"}}, "ssh://"),
        ({}, "a package index"),
    ],
)
def test_default_install_is_this_release_from_the_index_otherwise_and_says_so(direct_url, where):
    notices: list[str] = []
    chosen = default_install("0.3.1", direct_url, notify=notices.append)
    assert chosen.argument == "nbdeploy==0.3.1"
    told = notices[-1]
    assert told.startswith("the workflow installs nbdeploy==0.3.1 from the package index")
    assert where in told and "pass --install to name another source" in told


def test_ci_init_cli_names_the_wrong_install_value(tmp_path, cli):
    (tmp_path / "train.ipynb").write_text("{}")
    result = cli("ci", "init", "train.ipynb", "--install", "nbdeploy>=0.1", cwd=tmp_path)
    assert result.code == 2
    assert "--install 'nbdeploy>=0.1'" in result.err and "Traceback" not in result.err
    assert not (tmp_path / ".github").exists()


# -- the workflow runs ------------------------------------------------------------------------
MAKE_CELLS = [
    ('count: int = 3  # numbers to write\nnumbers_path: str = "data/numbers.txt"', ["parameters"]),
    "from pathlib import Path\n\nimport nbdeploy\n\n"
    "Path(numbers_path).parent.mkdir(parents=True, exist_ok=True)\n"
    'Path(numbers_path).write_text("\\n".join(str(i) for i in range(1, count + 1)))\n'
    'nbdeploy.log_metric("count", count)',
]
TOTAL_CELLS = [
    ('numbers_path: str = ""  # the numbers', ["parameters"]),
    "from pathlib import Path\n\nimport nbdeploy\n\n"
    "total = sum(int(n) for n in Path(numbers_path).read_text().split())\n"
    'nbdeploy.log_metric("total", total)\nprint(f"total={total} from {nbdeploy.__file__}")',
]
PIPELINE = """steps:
  - name: make
    notebook: make.ipynb
    parameters:
      count: 4
    outputs:
      numbers_path: data/numbers.txt
  - name: total
    notebook: total.ipynb
    needs: [make]
"""
# The actions the job uses, and what stands for them here: the clone, the fresh venv, and
# a check that the folder the upload would keep is there.
LOCAL_ACTIONS = {"actions/checkout", "actions/setup-python", "actions/upload-artifact"}


def scratch_repository(origin: Path, wheel: Path, make_notebook) -> Path:
    """A git repository with a two-step pipeline in analysis/, a requirements.txt at its
    root and the nbdeploy wheel under wheels/, all committed."""
    analysis = origin / "analysis"
    make_notebook("make.ipynb", MAKE_CELLS, folder=analysis)
    make_notebook("total.ipynb", TOTAL_CELLS, folder=analysis)
    (analysis / "pipeline.yaml").write_text(PIPELINE)
    (origin / "requirements.txt").write_text("pyyaml\n")  # present here: pip stays offline
    (origin / "wheels").mkdir()
    shutil.copy(wheel, origin / "wheels" / wheel.name)
    git(origin, "init", "-q")
    git(origin, "add", ".")
    git(origin, "commit", "-q", "-m", "notebooks")
    return analysis


def run_job(workflow: Path, clone: Path, env: dict[str, str]) -> list[str]:
    """The job's ``run:`` steps in order, with bash as GitHub runs them; the ``uses:`` steps
    must be ones that stand in for here. Returns the actions met."""
    job = yaml.safe_load(workflow.read_text())["jobs"]["pipelines"]
    workspace = {"${{ github.workspace }}": str(clone)}
    for name, value in job.get("env", {}).items():
        for expression, replacement in workspace.items():
            value = value.replace(expression, replacement)
        assert "${{" not in value, f"an expression the test does not know: {value}"
        env[name] = value
    used = []
    for step in job["steps"]:
        if "uses" in step:
            action = step["uses"].split("@")[0]
            assert action in LOCAL_ACTIONS, f"no local stand-in for {action}"
            if action == "actions/upload-artifact":  # what it would keep is there
                kept = clone / step["with"]["path"]
                assert kept.is_dir() and any(kept.iterdir()), f"nothing to upload in {kept}"
            used.append(action)
            continue
        assert "${{" not in step["run"]
        completed = subprocess.run(
            ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", step["run"]],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert completed.returncode == 0, (
            f"step {step.get('name')!r} failed:\n{completed.stdout[-3000:]}\n"
            f"{completed.stderr[-3000:]}"
        )
    return used


def stop_what_ran(venv_bin: Path, env: dict[str, str]) -> None:
    """The daemon and launcher of the job's NBDEPLOY_HOME, when the steps started any."""
    from nbdeploy.deployment.runtime import launcher

    if "NBDEPLOY_HOME" not in env or not (venv_bin / "nbdeploy").exists():
        return
    subprocess.run(
        [str(venv_bin / "nbdeploy"), "daemon", "stop"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    launcher.shutdown(Path(env["NBDEPLOY_HOME"]))


@pytest.mark.integration
def test_the_workflow_steps_run_in_a_fresh_clone(
    tmp_path, cli, nbdeploy_wheel, fresh_venv, make_notebook
):
    origin = tmp_path / "origin"
    analysis = scratch_repository(origin, nbdeploy_wheel, make_notebook)
    wheel = f"../wheels/{nbdeploy_wheel.name}"
    result = cli("ci", "init", "pipeline.yaml", "--install", wheel, cwd=analysis)
    assert result.code == 0, result
    assert "not in git" not in result.err  # everything it needs is committed
    # At the root, with paths from the root (given from analysis/).
    lines = run_lines(origin / ".github/workflows/nbdeploy.yml")
    assert f"python -m pip install ./wheels/{nbdeploy_wheel.name}" in lines
    assert any(line.startswith("nbdeploy run analysis/pipeline.yaml ") for line in lines)
    assert not (analysis / ".github").exists()
    git(origin, "add", ".github")
    git(origin, "commit", "-q", "-m", "workflow")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(origin), str(clone))

    venv = fresh_venv(tmp_path / "runner-venv")
    env = venv.env(home=tmp_path / "runner-home")  # NBDEPLOY_HOME: the job's
    try:
        used = run_job(clone / ".github/workflows/nbdeploy.yml", clone, env)
    finally:
        stop_what_ran(venv.bin, env)
    assert used == ["actions/checkout", "actions/setup-python", "actions/upload-artifact"]
    assert env["NBDEPLOY_HOME"] == f"{clone}/.nbdeploy"
    assert (clone / "analysis/data/numbers.txt").read_text().split() == ["1", "2", "3", "4"]
    output = clone / "nbdeploy-output"
    report = (output / "analysis-pipeline.xml").read_text()
    assert 'failures="0"' in report and 'errors="0"' in report, report
    notebooks = {path.name: path for path in (output / "analysis-pipeline").rglob("*.ipynb")}
    assert set(notebooks) >= {"make.ipynb", "total.ipynb"}, sorted(notebooks)
    printed = json.dumps(json.loads(notebooks["total.ipynb"].read_text())["cells"])
    # The sum of 1..4, by the nbdeploy the workflow installed from the wheel.
    assert "total=10 from " + str(venv.prefix) in printed, printed[-2000:]
