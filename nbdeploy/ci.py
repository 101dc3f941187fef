"""``nbdeploy ci init``: a GitHub Actions workflow, written at the git repository's root, that
installs nbdeploy and the project and runs its notebook pipelines, publishing output notebooks
and JUnit reports."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from nbdeploy.errors import NbdeployError
from nbdeploy.templating import render

Notify = Callable[[str], None]

DEFAULT_WORKFLOW = ".github/workflows/nbdeploy.yml"
GIT_TIMEOUT_SECONDS = 10.0
_SAFE_PATH = re.compile(r"[A-Za-z0-9._/ -]+")
# A wheel's file name may hold a local version (nbdeploy-0.1.0+g1a2b3c-py3-none-any.whl).
_SAFE_WHEEL_PATH = re.compile(r"[A-Za-z0-9._/+ -]+")
# What a requirement or a Git URL needs, and nothing a shell or a GitHub expression reads
# ($, {, quotes, backslashes, ;, |, newlines): the value goes into YAML and a shell line.
_SAFE_SPEC = re.compile(r"[A-Za-z0-9._/@:+=~!<>,\[\]#?&% -]+")
_SKIP_DIRS = {".git", ".venv", "venv", "node_modules", ".ipynb_checkpoints", ".nbdeploy"}
INSTALL_FORMS = (
    "give --install one of: a release on the package index (nbdeploy==0.1.0), a Git URL "
    "('nbdeploy @ git+https://github.com/OWNER/nbdeploy@TAG'), or the path of an nbdeploy "
    "wheel committed to the repository (dist/nbdeploy-0.1.0-py3-none-any.whl)"
)


def _ignore(_message: str) -> None:
    return None


def find_pipelines(root: Path) -> list[Path]:
    """Every pipeline.yaml under ``root`` (outside virtualenvs and checkpoints)."""
    found = []
    for path in sorted(root.rglob("pipeline.y*ml")):
        if not _SKIP_DIRS.intersection(part for part in path.relative_to(root).parts):
            found.append(path.relative_to(root))
    return found


def _git(folder: Path, *arguments: str) -> subprocess.CompletedProcess[str] | None:
    """``git ARGUMENTS`` in ``folder``; None when git is missing or does not answer."""
    try:
        return subprocess.run(
            ["git", *arguments],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def repository_root(start: Path) -> Path | None:
    """The top folder of the git repository that holds ``start``, or None outside one.

    Asks git (which knows worktrees and submodules); without git, or when git refuses the
    folder (e.g. "dubious ownership"), the nearest parent that has a ``.git`` entry."""
    start = start.resolve()
    answer = _git(start, "rev-parse", "--show-toplevel")
    if answer is not None and answer.returncode == 0 and answer.stdout.strip():
        return Path(answer.stdout.strip()).resolve()
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return None


def _uncommitted(root: Path, paths: Sequence[str]) -> list[str]:
    """Those of ``paths`` (relative to ``root``) that git does not track: a workflow's
    checkout will not have them."""
    answer = _git(root, "ls-files", "-z", "--", *paths)
    if answer is None or answer.returncode != 0:
        return []
    tracked = set(answer.stdout.split("\0"))
    return [path for path in paths if path not in tracked]


# -- how the workflow installs nbdeploy ----------------------------------------------------
@dataclass(frozen=True)
class NbdeployInstall:
    """What the workflow gives pip to install nbdeploy: a requirement, or the path of a
    wheel relative to the repository's root (then ``wheel`` is that path)."""

    argument: str
    wheel: str | None = None

    @property
    def line(self) -> str:
        return f"python -m pip install {shlex.quote(self.argument)}"


def _install_error(value: str, reason: str) -> NbdeployError:
    return NbdeployError(f"--install {value!r}: {reason}", INSTALL_FORMS)


def parse_install(value: str, *, cwd: Path, root: Path) -> NbdeployInstall:
    """An ``--install`` value, validated: a pinned release, a Git URL over HTTPS, or a
    wheel inside the repository (a relative path is taken from ``cwd``, like targets, and
    written relative to ``root``, where the workflow runs)."""
    if not value.strip():
        raise _install_error(value, "empty")
    if not _SAFE_SPEC.fullmatch(value):
        raise _install_error(
            value,
            "only letters, digits, spaces and . _ / @ : + = ~ ! < > , [ ] # ? & % - may appear "
            "(no quotes, $, {, ;, | or line breaks: the value goes into YAML and a shell line)",
        )
    text = value.strip()
    if text.endswith(".whl") and "://" not in text and "@" not in text:
        wheel = _wheel_path(text, cwd=cwd, root=root)
        return NbdeployInstall("./" + wheel, wheel)
    return NbdeployInstall(_requirement(value, text))


def _requirement(value: str, text: str) -> str:
    from packaging.requirements import InvalidRequirement, Requirement

    if text.startswith("git+"):
        text = f"nbdeploy @ {text}"
    try:
        requirement = Requirement(text)
    except InvalidRequirement as error:
        raise _install_error(value, f"not a requirement ({error})") from None
    if re.sub(r"[-_.]+", "-", requirement.name).lower() != "nbdeploy":
        raise _install_error(value, f"names {requirement.name!r}, not nbdeploy")
    if requirement.marker is not None:
        raise _install_error(value, "environment markers have no use here")
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    if requirement.url is not None:
        _check_git_url(value, requirement.url)
        return f"{requirement.name}{extras} @ {requirement.url}"
    _check_pinned(value, requirement)
    return f"{requirement.name}{extras}{requirement.specifier}"


def _check_git_url(value: str, url: str) -> None:
    problem = git_url_problem(url)
    if problem:
        raise _install_error(value, problem)


def git_url_problem(url: str) -> str | None:
    """Why the workflow cannot install from ``url`` (a requirement's URL), or None."""
    if not url.startswith("git+https://"):
        return (
            "a URL must be a Git URL over HTTPS (git+https://...): the runner has no SSH key, "
            "and cannot reach this machine's files"
        )
    parts = urlsplit(url[len("git+") :])
    if not parts.hostname:
        return "the Git URL names no host"
    if parts.username or parts.password:
        return (
            "the Git URL holds a user name or password, which would be written into the "
            "workflow file for everyone who can read the repository"
        )
    return None


def _check_pinned(value: str, requirement: Any) -> None:
    specifiers = list(requirement.specifier)
    # (No wildcard gets here: * is not an allowed character.)
    if len(specifiers) != 1 or specifiers[0].operator not in ("==", "==="):
        raise _install_error(
            value,
            "a release from the package index must be pinned to one version (nbdeploy==X.Y.Z), "
            "so that the workflow runs the nbdeploy it was written for",
        )


def _wheel_path(text: str, *, cwd: Path, root: Path) -> str:
    from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

    wheel = (cwd / text).resolve()
    if not wheel.is_file():
        raise _install_error(text, f"no such wheel ({wheel}; relative paths are taken from {cwd})")
    if not wheel.is_relative_to(root):
        raise _install_error(
            text,
            f"the wheel is outside the repository {root}: the workflow's checkout only has the "
            "repository's files; copy it into the repository and commit it",
        )
    try:
        name = parse_wheel_filename(wheel.name)[0]
    except InvalidWheelFilename as error:
        raise _install_error(text, f"not a wheel's file name ({error})") from None
    if name != canonicalize_name("nbdeploy"):
        raise _install_error(text, f"a wheel of {name}, not of nbdeploy")
    relative = wheel.relative_to(root).as_posix()
    if not _SAFE_WHEEL_PATH.fullmatch(relative):
        raise _install_error(
            text, "the wheel's path may only contain letters, digits, spaces and . _ + - /"
        )
    return relative


def installed_source() -> tuple[str, dict[str, Any]]:
    """This nbdeploy's version and its PEP 610 ``direct_url.json`` ({} when it was installed
    from a package index, or is not installed as a distribution)."""
    from nbdeploy import __version__

    try:
        distribution = metadata.distribution("nbdeploy")
    except metadata.PackageNotFoundError:
        return __version__, {}
    try:
        info = json.loads(distribution.read_text("direct_url.json") or "{}")
    except ValueError:
        info = {}
    return distribution.version, info if isinstance(info, dict) else {}


def default_install(
    version: str, direct_url: dict[str, Any], *, notify: Notify = _ignore
) -> NbdeployInstall:
    """nbdeploy as it is installed here: from its Git URL (at the installed commit) when it
    came from one, else ``nbdeploy==VERSION`` from the index, with a notice that says so
    and how to name another source."""
    url = str(direct_url.get("url", ""))
    vcs = direct_url.get("vcs_info")
    if isinstance(vcs, dict) and vcs.get("vcs") == "git" and url:
        spec = f"git+{url}"
        if vcs.get("commit_id"):
            spec += f"@{vcs['commit_id']}"
        if direct_url.get("subdirectory"):
            spec += f"#subdirectory={direct_url['subdirectory']}"
        problem = git_url_problem(spec) if _SAFE_SPEC.fullmatch(spec) else "unusual characters"
        if problem is None:
            try:
                chosen = NbdeployInstall(_requirement(spec, spec))
            except NbdeployError as error:
                problem = error.message
            else:
                notify(f"the workflow installs nbdeploy from {spec}, as it is installed here")
                return chosen
        notify(f"nbdeploy's Git URL here, {spec}, cannot serve the workflow: {problem}")
    if url.startswith("file://"):
        where = f"{unquote(url[len('file://') :])}, which the runner cannot reach"
    elif url:
        where = url
    else:
        where = "a package index"
    notify(
        f"the workflow installs nbdeploy=={version} from the package index (nbdeploy is "
        f"installed here from {where}); pass --install to name another source: a Git URL "
        "('nbdeploy @ git+https://...') or an nbdeploy wheel committed to the repository"
    )
    return NbdeployInstall(f"nbdeploy=={version}")


# -- the project -----------------------------------------------------------------------------
def _project_requirements(root: Path, cwd: Path) -> tuple[list[str], list[str]]:
    """The lines that install the project's own requirements, and the files they read
    (relative to ``root``): those of the repository's root, and those of the current folder
    when it is another one (a project in a subfolder)."""
    folders = [root] if cwd == root or not cwd.is_relative_to(root) else [root, cwd]
    installs: list[str] = []
    files: list[str] = []
    for folder in folders:
        relative = folder.relative_to(root).as_posix()
        if not _SAFE_PATH.fullmatch(relative):
            continue  # not guessed at: a target there is refused with the reason
        prefix = "" if relative == "." else f"{relative}/"
        if (folder / "requirements.txt").is_file():
            files.append(f"{prefix}requirements.txt")
            installs.append(f"python -m pip install -r {shlex.quote(files[-1])}")
        project = [name for name in ("pyproject.toml", "setup.py") if (folder / name).is_file()]
        if project:
            files.extend(f"{prefix}{name}" for name in project)
            installs.append(
                f"python -m pip install {shlex.quote(f'./{prefix}' if prefix else '.')}"
            )
    return installs, files


def _target_entry(target: str, cwd: Path, root: Path) -> dict[str, Any]:
    resolved = (cwd / target).resolve()
    if not resolved.exists():
        raise NbdeployError(f"{target} does not exist (relative to {cwd})")
    if not resolved.is_relative_to(root):
        raise NbdeployError(
            f"{target} is outside the repository {root}",
            "run nbdeploy ci init inside the repository that holds it",
        )
    relative = resolved.relative_to(root).as_posix()
    if not _SAFE_PATH.fullmatch(relative):
        raise NbdeployError(
            f"{relative!r}: a workflow target may only contain letters, digits, spaces and . _ - /",
            "rename the file (this keeps the workflow free of shell and expression injection)",
        )
    return {
        "label": relative,
        "quoted": shlex.quote(relative),
        "slug": re.sub(r"[^A-Za-z0-9_.-]+", "-", relative.rsplit(".", 1)[0]).strip("-"),
    }


def workflow_root(cwd: Path, *, notify: Notify = _ignore) -> tuple[Path, bool]:
    """Where the workflow goes: the root of the git repository holding ``cwd`` (True), or
    ``cwd`` itself outside a repository (False, with a notice)."""
    found = repository_root(cwd)
    if found is not None:
        return found, True
    notify(
        f"{cwd} is not inside a git repository: the workflow is written there, as if it "
        "were the repository's root (GitHub reads .github/workflows/ at the root only)"
    )
    return cwd, False


def _notify_uncommitted(root: Path, paths: Sequence[str], notify: Notify) -> None:
    for missing in _uncommitted(root, paths):
        notify(
            f"{missing} is not in git yet: the workflow's checkout has committed files only "
            f"(git add {shlex.quote(missing)}, with -f when .gitignore names it)"
        )


def write_github_workflow(
    targets: Sequence[str] = (),
    *,
    cwd: Path | None = None,
    path: str | Path = DEFAULT_WORKFLOW,
    python_version: str = "3.11",
    install: str | None = None,
    overwrite: bool = False,
    notify: Notify = _ignore,
) -> Path:
    """Write the workflow at the root of the git repository that holds ``cwd`` (default:
    the current folder) and return its path. Targets are taken relative to ``cwd`` and
    written relative to the root, where the workflow's checkout runs them.

    ``path`` is relative to the root (GitHub reads ``.github/workflows/`` there only);
    ``install`` is an ``--install`` value (default: nbdeploy as it is installed here)."""
    cwd = (cwd or Path.cwd()).resolve()
    root, in_git = workflow_root(cwd, notify=notify)
    workflow = (root / path).resolve()
    if workflow.exists() and not overwrite:
        raise NbdeployError(f"{workflow} exists already", "pass --force to overwrite it")
    if not re.fullmatch(r"3\.\d{1,2}", python_version):
        raise NbdeployError(f"--python {python_version!r} is not a Python version such as 3.11")
    chosen = list(targets) or [str(root / found) for found in find_pipelines(root)]
    if not chosen:
        raise NbdeployError(
            f"no pipeline.yaml found under {root}",
            "name the notebooks or pipelines to run: nbdeploy ci init train.ipynb",
        )
    entries = [_target_entry(target, cwd, root) for target in chosen]
    if install is None:
        nbdeploy = default_install(*installed_source(), notify=notify)
    else:
        nbdeploy = parse_install(install, cwd=cwd, root=root)
    if not workflow.is_relative_to(root / ".github" / "workflows"):
        notify(f"{workflow} is not in {root / '.github' / 'workflows'}: GitHub runs no other")
    if in_git:
        wheel = [nbdeploy.wheel] if nbdeploy.wheel else []
        _notify_uncommitted(root, [*(entry["label"] for entry in entries), *wheel], notify)
    project, files = _project_requirements(root, cwd)
    text = render(
        "github-workflow.yml.j2",
        targets=entries,
        python_version=python_version,
        # nbdeploy first: a project whose requirements name nbdeploy finds it installed.
        installs=[nbdeploy.line, *project],
        # setup-python's pip cache fails the job when no file keys it: name them, or none.
        cache_files=files,
    )
    workflow.parent.mkdir(parents=True, exist_ok=True)
    workflow.write_text(text, encoding="utf-8")
    return workflow
