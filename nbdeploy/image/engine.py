"""The Docker Engine, through the ``docker`` package's low-level API: connect (DOCKER_HOST
and the usual environment respected), build with the classic builder while streaming its
steps, pull (with a deadline) and push, and turn the engine's failures into errors that say
what to do.

A build's own record of its steps (which ones the engine took from its cache) is kept, so
that callers and tests can tell a rebuild that reused the dependency layer from one that
did not.
"""

from __future__ import annotations

import contextlib
import io
import json
import queue
import re
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbdeploy.errors import NbdeployError
from nbdeploy.pipeline.progress import NullProgress, Progress

_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")


class EngineUnavailableError(NbdeployError):
    """No Docker engine answers."""


class ImageBuildError(NbdeployError):
    """The engine refused or failed a build, a push or a run."""


NO_ENGINE_HINT = (
    "start a Docker engine, or point DOCKER_HOST at one (e.g. "
    "DOCKER_HOST=unix:///run/docker.sock or ssh://user@build-host); or write the Dockerfile "
    "and build context with --context-only DIR and build the image elsewhere "
    "(docker build DIR)"
)


def client() -> Any:
    """A low-level API client of the engine named by the environment (DOCKER_HOST, ...)."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:  # pragma: no cover - docker is a dependency
        raise EngineUnavailableError(
            "the docker Python package is not installed", "pip install docker"
        ) from None
    try:
        api = docker.from_env(timeout=600).api
        api.ping()
    except DockerException as error:
        raise EngineUnavailableError(
            f"no Docker engine is reachable ({_short(error)})", NO_ENGINE_HINT
        ) from None
    except Exception as error:  # requests' connection errors, a socket that refuses
        raise EngineUnavailableError(
            f"no Docker engine is reachable ({_short(error)})", NO_ENGINE_HINT
        ) from None
    return api


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[-1][:300] if text else type(error).__name__


@dataclass
class Step:
    number: int
    instruction: str
    cached: bool = False


@dataclass
class BuildRecord:
    """What one ``docker build`` did: its steps (with the engine's "Using cache" marks),
    the image it made and the output lines."""

    tag: str
    image_id: str = ""
    steps: list[Step] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    @property
    def cached_steps(self) -> int:
        return sum(step.cached for step in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "image_id": self.image_id,
            "steps": [
                {"number": s.number, "instruction": s.instruction, "cached": s.cached}
                for s in self.steps
            ],
        }


def context_tar(directory: Path, dockerfile: str, include: list[str]) -> io.BytesIO:
    """The build context as the engine takes it: ``dockerfile`` as ``Dockerfile`` and the
    entries of ``directory`` named in ``include`` (uncompressed: the engine is local or the
    wheels are already compressed)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        data = (directory / dockerfile).read_bytes()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        info.mode = 0o644
        archive.addfile(info, io.BytesIO(data))
        for name in include:
            archive.add(directory / name, arcname=name, filter=_normalise)
    buffer.seek(0)
    return buffer


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Root-owned, readable entries with a fixed time: the same files give the same layer."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    info.mode = (info.mode | 0o444 | (0o111 if info.isdir() or info.mode & 0o100 else 0)) & 0o755
    return info


def build(
    api: Any,
    context: io.BytesIO,
    tag: str,
    *,
    labels: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> BuildRecord:
    """Build ``context`` with the classic builder and tag it. Builds use no network (the
    context carries everything; RUN steps get network "none")."""
    from docker.errors import APIError

    progress = progress or NullProgress()
    record = BuildRecord(tag)
    try:
        stream: Iterator[dict[str, Any]] = api.build(
            fileobj=context,
            custom_context=True,
            tag=tag,
            rm=True,
            forcerm=True,
            decode=True,
            labels=labels or None,
            network_mode="none",
        )
        for chunk in stream:
            _take(chunk, record, progress)
    except APIError as error:
        raise ImageBuildError(
            f"the engine refused to build {tag}: {error.explanation or error}",
        ) from None
    if not record.image_id:
        raise ImageBuildError(f"the build of {tag} ended without an image")
    return record


def _take(chunk: dict[str, Any], record: BuildRecord, progress: Progress) -> None:
    if "error" in chunk:
        tail = [line for line in record.lines[-8:] if line.strip()]
        detail = str(chunk.get("error", "")).strip()
        raise ImageBuildError(
            f"the build of {record.tag} failed: {detail}",
            ("last lines of the build:\n  " + "\n  ".join(tail)) if tail else None,
        )
    if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
        record.image_id = str(chunk["aux"]["ID"])
    text = str(chunk.get("stream", ""))
    for line in text.splitlines():
        line = line.rstrip()
        if not line:
            continue
        record.lines.append(line)
        match = _STEP.match(line)
        if match:
            number, total, instruction = int(match[1]), int(match[2]), match[3]
            if number == 1:
                progress.start(record.tag, total)
            record.steps.append(Step(number, instruction))
            progress.cell_started(number - 1, number, instruction)
        elif line.strip() == "---> Using cache" and record.steps:
            record.steps[-1].cached = True
        elif not line.startswith(" ---> "):
            progress.output(line + "\n", "stdout")


def image_exists(api: Any, tag: str) -> dict[str, Any] | None:
    from docker.errors import ImageNotFound

    try:
        found: dict[str, Any] = api.inspect_image(tag)
        return found
    except ImageNotFound:
        return None


def push(api: Any, repository: str, tag: str, progress: Progress | None = None) -> str:
    """Push ``repository:tag``; the digest the registry gave it."""
    from docker.errors import APIError

    progress = progress or NullProgress()
    digest = ""
    try:
        for chunk in api.push(repository, tag=tag, stream=True, decode=True):
            if "error" in chunk:
                raise ImageBuildError(
                    f"the push of {repository}:{tag} failed: {chunk['error']}",
                    "check that the registry is reachable and that `docker login` has "
                    "credentials for it",
                )
            status = str(chunk.get("status", ""))
            if status:
                progress.output(f"{status} {chunk.get('id', '')}".strip() + "\n", "stdout")
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = str(aux["Digest"])
    except APIError as error:
        raise ImageBuildError(
            f"the push of {repository}:{tag} failed: {error.explanation or error}",
            "check that the registry is reachable and that `docker login` has credentials for it",
        ) from None
    return digest


PULL_TIMEOUT = 600.0
"""Seconds a pull may take in all: a base image is tens of MB; a registry that does not
answer is given up on well before."""


def pull(api: Any, reference: str, timeout: float = PULL_TIMEOUT) -> None:
    """Pull ``reference`` into the engine, waiting at most ``timeout`` seconds in all.
    Raises ImageBuildError whose message is the engine's reason, shortened (see
    :func:`pull_failure`); the caller says what the image was for and what to do.

    The docker package reads a pull's answer with no timeout, so the pull runs in a daemon
    thread and this waits for its messages with a deadline; a pull given up on is left to
    the engine, which cancels it when the connection closes."""
    repository, tag = split_reference(reference)
    messages: queue.Queue[tuple[str, Any]] = queue.Queue()

    def stream() -> None:
        try:
            for chunk in api.pull(repository, tag=tag, stream=True, decode=True):
                messages.put(("chunk", chunk))
            messages.put(("done", None))
        except Exception as error:  # the engine's APIError, a dropped connection
            messages.put(("error", error))

    threading.Thread(target=stream, name=f"nbdeploy-pull-{reference}", daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            kind, value = messages.get(timeout=max(remaining, 0.0))
        except queue.Empty:
            raise ImageBuildError(f"timeout: the pull did not finish in {timeout:.0f} s") from None
        if kind == "done":
            return
        if kind == "error":
            explanation = getattr(value, "explanation", None)
            raise ImageBuildError(pull_failure(str(explanation or value))) from None
        if isinstance(value, dict) and "error" in value:
            raise ImageBuildError(pull_failure(str(value["error"])))


def split_reference(reference: str) -> tuple[str, str | None]:
    """``repository`` and ``tag`` (None for a digest, which stays in the repository)."""
    if "@" in reference:
        return reference, None
    repository, colon, tag = reference.rpartition(":")
    if not colon or "/" in tag:  # no tag, or the colon was a registry's port
        return reference, "latest"
    return repository, tag


_PULL_REASONS: list[tuple[str, str]] = [
    # (a pattern in the engine's message, what it means), the first that matches wins
    (r"no such host|server misbehaving|lookup \S+", "DNS: {host} does not resolve"),
    (r"timeout|timed out|deadline exceeded", "timeout reaching {host}"),
    (r"x509|certificate|tls:|TLS handshake|server gave HTTP response", "TLS failed with {host}"),
    (
        r"connection refused|no route to host|network is unreachable|connection reset"
        r"|dial tcp",
        "no registry reachable at {host}",
    ),
    (
        r"manifest unknown|not found|pull access denied|repository does not exist"
        r"|unauthorized|authentication required",
        "{host} has no such image, or needs docker login",
    ),
]


def pull_failure(detail: str) -> str:
    """The engine's reason a pull failed, shortened: no registry reachable, DNS, TLS,
    timeout or no such image, the registry's host, and the engine's last words, e.g.
    ``DNS: registry-1.docker.io does not resolve, no such host``."""
    text = _last_line(detail) or "no reason given"
    url = re.search(r"https?://([^/\"\s]+)", text)
    lookup = re.search(r"lookup (\S+?)(?: on |:|$)", text)
    named = lookup or url
    host = named[1] if named else "the registry"
    cause = text.rsplit(": ", 1)[-1].strip()[:160]
    for pattern, meaning in _PULL_REASONS:
        if re.search(pattern, text, re.IGNORECASE):
            return f"{meaning.format(host=host)}, {cause}"
    return text[-200:]


def label_of(image: dict[str, Any], key: str) -> str | None:
    labels = (image.get("Config") or {}).get("Labels") or {}
    value = labels.get(key)
    return str(value) if value is not None else None


def describe(image: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": image.get("Id"),
        "size": int(image.get("Size") or 0),
        "labels": json.loads(json.dumps((image.get("Config") or {}).get("Labels") or {})),
    }


@dataclass
class RunOutcome:
    """What a throwaway container did: its output when it exited 0, else None and why."""

    output: str | None
    problem: str = ""
    timed_out: bool = False


def run_once(api: Any, image: str, command: list[str], timeout: float = 60) -> RunOutcome:
    """Run ``command`` in a throwaway container of ``image`` with no network, waiting at
    most ``timeout`` seconds; its output, or why it gave none (the engine could not start
    it, it exited non-zero, it did not finish in time)."""
    from docker.errors import APIError

    container = None
    try:
        container = api.create_container(
            image, command=command, host_config=api.create_host_config(network_mode="none")
        )
        api.start(container["Id"])
        status = api.wait(container["Id"], timeout=timeout)
        output = api.logs(container["Id"], stdout=True, stderr=False).decode().strip()
        code = status.get("StatusCode")
        if code == 0:
            return RunOutcome(output)
        errors = api.logs(container["Id"], stdout=False, stderr=True).decode().strip()
        return RunOutcome(None, f"exit status {code}: {_last_line(errors) or 'no output'}")
    except APIError as error:
        return RunOutcome(None, _last_line(str(error.explanation or error)))
    except Exception as error:  # requests' read timeout of the wait, a dropped connection
        return RunOutcome(None, f"no answer within {timeout:.0f} s ({_short(error)})", True)
    finally:
        if container is not None:
            with contextlib.suppress(Exception):
                api.remove_container(container["Id"], force=True)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
