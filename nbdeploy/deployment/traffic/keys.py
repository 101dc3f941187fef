"""API keys of deployments' routers.

127.0.0.1 is not private on a shared host (a JupyterHub node serves many users on one
machine): with ``--auth key`` a deployment's router answers only requests that carry
``Authorization: Bearer KEY``. The router's configuration holds only the key's SHA-256;
the key itself is kept for its owner in ``$NBDEPLOY_HOME/keys/NAME`` (mode 0600, in a 0700
folder), so that ``nbdeploy key NAME`` can give it to scripts (``curl -H "Authorization:
Bearer $(nbdeploy key NAME)"``) and notebook outputs, which get saved and committed, never
show it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from nbdeploy import config


def _path(name: str) -> Path:
    folder = config.home() / "keys"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder / name


def read_key(name: str) -> str | None:
    try:
        return _path(name).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def create_key(name: str) -> str:
    """A new random key for ``name`` (replacing any), saved for its owner only."""
    from nbdeploy.private_files import write_private_text

    key = secrets.token_urlsafe(32)
    write_private_text(_path(name), key + "\n")
    return key


def delete_key(name: str) -> None:
    _path(name).unlink(missing_ok=True)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
