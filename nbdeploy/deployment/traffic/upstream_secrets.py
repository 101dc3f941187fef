"""The secret that makes a version answer only its deployment's router.

Each start of a version gets a random secret of its own: the version refuses every request
without it (:mod:`nbdeploy.service.upstream_guard`), the router sends it with every request
it forwards. It is kept for the two of them in ``<deployment folder>/secrets/<log
stem>.secret`` (mode 0600, in a 0700 folder; the log stem names one start of a server, as
its metrics folder does): the version's leader reads it when it starts, the core reads it
to write the router's configuration (``router.json``, mode 0600). It is never in the state
store, ``nbdeploy status``, a log or a notebook's output, nor on a command line.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from nbdeploy.deployment.store import Server
from nbdeploy.deployment.versions.build import deployments_dir
from nbdeploy.private_files import private_dir, write_private_text
from nbdeploy.service.upstream_guard import HEADER

SECRETS_DIR = "secrets"  # in the deployment's folder
SUFFIX = ".secret"


def secret_path(deployment: str, log_path: str | Path) -> Path:
    """Where the secret of the server that logs to ``log_path`` is kept."""
    return deployments_dir() / deployment / SECRETS_DIR / (Path(log_path).stem + SUFFIX)


def create(path: Path, reuse: str | None = None) -> str:
    """A new secret (or ``reuse``), saved at ``path`` for its owner only."""
    private_dir(path.parent)
    secret = reuse or secrets.token_urlsafe(32)
    write_private_text(path, secret + "\n")
    return secret


def routed(deployment: str, host: str, port: int) -> str | None:
    """The secret the deployment's router sends to ``host:port`` (None: none, or nothing
    routed there). A version restarted in place on its port keeps it: the router's
    configuration then stays as it is, and the restart needs no new routing."""
    from nbdeploy.deployment import traffic

    for entry in traffic.read_config(deployment).get("upstreams", {}).values():
        if (entry.get("host"), entry.get("port")) == (host, port) and entry.get("secret"):
            return str(entry["secret"])
    return None


def read(server: Server) -> str | None:
    """The secret ``server`` was started with; None for a server started without one (a
    container, or a version started before secrets existed): it checks nothing."""
    try:
        path = secret_path(server.deployment, server.log_path)
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def server_of(deployment: str, version: int) -> Server | None:
    """The running server of ``version`` (live, candidate or standby), to call it straight."""
    from nbdeploy.deployment.store import CANDIDATE, LIVE, STANDBY, DeploymentStore
    from nbdeploy.store import default_store

    servers = DeploymentStore(default_store()).active_servers(deployment)
    for server in servers:
        if server.version == version and server.role in (LIVE, CANDIDATE, STANDBY):
            return server
    return None


def headers(server: Server) -> dict[str, str]:
    """What a request straight to ``server`` (not through its router: a smoke test, a
    benchmark) must carry to be answered."""
    secret = read(server)
    return {HEADER: secret} if secret else {}


def forget(server: Server) -> None:
    """Delete the secret of a server that no longer runs."""
    secret_path(server.deployment, server.log_path).unlink(missing_ok=True)


def drop_stale(folder: Path, running: set[str]) -> None:
    """Delete the secrets of servers that no longer run (``running``: the log stems of the
    ones that do), e.g. a standby its router stopped."""
    directory = folder / SECRETS_DIR
    if not directory.is_dir():
        return
    for path in directory.glob("*" + SUFFIX):
        if path.name.removesuffix(SUFFIX) not in running:
            path.unlink(missing_ok=True)
