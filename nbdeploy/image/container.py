"""A version's image run as a container on this machine (``nbdeploy image run``): a
deployment target beside the local processes.

The container publishes its port 3000 on 127.0.0.1 only, is recorded as a server of the
deployment (role ``container``, with the engine's id), and answers to the same verbs:
``nbdeploy status`` reconciles it with the engine, ``nbdeploy stop`` stops and removes it,
``nbdeploy logs`` shows its output (copied from the engine into the server's log file).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbdeploy.deployment.runtime.processes import LOOPBACK, free_port, probe, tail
from nbdeploy.deployment.store import CONTAINER, FAILED_START, READY, DeploymentStore, Server
from nbdeploy.errors import NbdeployError
from nbdeploy.image import engine
from nbdeploy.image.context import PORT, check_reference
from nbdeploy.private_files import private_dir, write_private_bytes
from nbdeploy.store import StateStore, default_store

READY_TIMEOUT_SECONDS = 90.0
LOG_LINES = 400


class ContainerStartError(NbdeployError):
    """The container did not start or did not become ready."""


@dataclass
class RunningImage:
    server: Server
    image: str

    @property
    def url(self) -> str:
        return self.server.url

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, **self.server.to_dict()}


def run_image(
    spec: str,
    *,
    image: str | None = None,
    port: int | None = None,
    store: StateStore | None = None,
    timeout: float = READY_TIMEOUT_SECONDS,
) -> RunningImage:
    """Run the image of ``spec`` (``NAME[:VERSION]``; ``image`` defaults to the tag
    ``nbdeploy image build`` gives) on 127.0.0.1:``port`` and wait until /readyz answers."""
    from docker.errors import APIError, ImageNotFound

    from nbdeploy.image.build import default_tag, resolve_version

    store = store or default_store()
    version = resolve_version(spec, store)
    reference = check_reference(image or default_tag(version), "--image")
    api = engine.client()
    if engine.image_exists(api, reference) is None:
        raise ContainerStartError(
            f"the engine has no image {reference}",
            f"build it first: nbdeploy image build {version.deployment}:{version.version}",
        )
    port = port or free_port()
    deployments = DeploymentStore(store)
    log_path = _log_path(version.deployment, version.version)
    name = f"nbdeploy-{version.deployment}-v{version.version}-{port}"
    try:
        created = api.create_container(
            reference,
            name=name,
            detach=True,
            labels={
                "ai.nbdeploy.deployment": version.deployment,
                "ai.nbdeploy.version": str(version.version),
            },
            host_config=api.create_host_config(
                port_bindings={f"{PORT}/tcp": (LOOPBACK, port)},
                read_only=True,
                tmpfs={"/tmp": "", "/var/lib/nbdeploy/requests": "uid=10001,gid=10001"},
                security_opt=["no-new-privileges"],
                cap_drop=["ALL"],
            ),
            ports=[PORT],
        )
        container_id = str(created["Id"])
        api.start(container_id)
    except (APIError, ImageNotFound) as error:
        reason = getattr(error, "explanation", None) or error
        raise ContainerStartError(
            f"the engine could not start {reference}: {reason}",
            f"is port {port} free? try another with --port",
        ) from None
    server = deployments.add_server(
        version.deployment,
        version.version,
        pid=None,
        start_ticks=None,
        host=LOOPBACK,
        port=port,
        log_path=str(log_path),
        role=CONTAINER,
        status=READY,
        container=container_id,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe(f"{server.url}/readyz", timeout=2.0):
            deployments.add_event(
                version.deployment, "container", version=version.version, image=reference, port=port
            )
            return RunningImage(deployments.server(server.id), reference)
        state = api.inspect_container(container_id).get("State") or {}
        if not state.get("Running"):
            break
        time.sleep(0.25)
    copy_logs(container_id, log_path)
    remove(container_id)
    deployments.set_role(server.id, FAILED_START)
    lines = tail(log_path, 15)
    deployments.end_server(server.id, "failed", "\n".join(lines))
    raise ContainerStartError(
        f"{reference} did not answer on {server.url}/readyz",
        ("its last lines:\n  " + "\n  ".join(lines)) if lines else "see nbdeploy logs",
    )


def _log_path(name: str, version: int) -> Path:
    from nbdeploy.deployment.versions.build import deployments_dir

    folder = private_dir(deployments_dir() / name / "logs")
    return folder / f"container-v{version}-{int(time.time() * 1000)}.log"


def copy_logs(container_id: str, log_path: Path) -> None:
    """The container's last output into ``log_path`` (best effort: the engine may be gone)."""
    try:
        api = engine.client()
        output: bytes = api.logs(container_id, stdout=True, stderr=True, tail=LOG_LINES)
    except Exception:
        return
    write_private_bytes(private_dir(log_path.parent) / log_path.name, output)


def gone(container_id: str, log_path: Path) -> str | None:
    """Why the container no longer serves (its last lines), or None while it runs or when
    the engine cannot be asked (then nothing is concluded)."""
    from docker.errors import NotFound

    try:
        api = engine.client()
        state = api.inspect_container(container_id).get("State") or {}
    except NotFound:
        return "the container is gone"
    except Exception:
        return None
    if state.get("Running"):
        return None
    copy_logs(container_id, log_path)
    last = "\n".join(tail(log_path, 20))
    return f"the container exited with code {state.get('ExitCode')}\n{last}"


def remove(container_id: str) -> None:
    """Stop (10 s grace) and remove the container; quiet when it is gone already."""
    from docker.errors import NotFound

    try:
        api = engine.client()
        api.stop(container_id, timeout=10)
        api.remove_container(container_id, force=True)
    except NotFound:
        return
    except engine.EngineUnavailableError:
        return


def stop_server(server: Server) -> None:
    """What ``nbdeploy stop`` does to a container server: keep its logs, then remove it."""
    if server.container:
        copy_logs(server.container, Path(server.log_path))
        remove(server.container)
