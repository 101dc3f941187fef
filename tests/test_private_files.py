"""Everything under NBDEPLOY_HOME is owner-only (issue 17): the home is 0700 (made so, and
repaired when it is not), and what nbdeploy writes in it (state store, request logs, pickles,
logs, run folders, keys) has no permission bit for the group or others."""

from __future__ import annotations

import json
import os
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import nbdeploy
from nbdeploy import config
from nbdeploy.deployment.traffic import keys
from nbdeploy.errors import NbdeployError
from nbdeploy.private_files import (
    PRIVATE_UMASK,
    create_private,
    open_private,
    private_dir,
    restrict_umask,
    write_private_text,
)
from nbdeploy.service.requestlog_runtime import RequestLog, segments
from nbdeploy.store import StateStore

SHARED_BITS = stat.S_IRWXG | stat.S_IRWXO
# Written by BentoML in its home (a bento's entrypoint.sh is made 0755 on purpose): only the
# home's mode protects what is inside; the folder itself is nbdeploy's and is checked.
THIRD_PARTY = ("bentoml",)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def shared(root: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Every folder and file under ``root`` (itself included; not inside the folders
    ``skip`` names) that the group or others may use, with its mode: a failure names each."""
    found, skipped = [], [root / name for name in skip]
    for path in [root, *sorted(root.rglob("*"))]:
        if path.is_symlink() or path.is_socket():
            continue  # a link's own mode means nothing; sockets live outside the home
        if any(folder in path.parents for folder in skipped):
            continue
        if mode(path) & SHARED_BITS:
            found.append(f"{oct(mode(path))} {path.relative_to(root.parent)}")
    return found


# -- the home ------------------------------------------------------------------------------
def test_home_is_created_owner_only(home):
    assert not home.exists()
    assert config.home() == home.resolve()
    assert mode(home) == 0o700


def test_an_open_home_is_made_owner_only_again(home):
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)  # as a home made before issue 17 is
    config.home()
    assert mode(home) == 0o700


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a folder to another user")
def test_a_home_of_another_user_is_refused(home):
    home.mkdir()
    os.chown(home, 65534, 65534)  # nobody
    with pytest.raises(NbdeployError, match="belongs to another user") as raised:
        config.home()
    assert raised.value.hint and "NBDEPLOY_HOME" in raised.value.hint


# -- the helpers ---------------------------------------------------------------------------
def test_helpers_make_owner_only_folders_and_files(tmp_path):
    folder = private_dir(tmp_path / "a" / "b")
    assert mode(tmp_path / "a") == mode(folder) == 0o700
    with open_private(folder / "log", "ab") as handle:
        handle.write(b"one\n")
    with open_private(folder / "log", "a", encoding="utf-8") as handle:
        handle.write("two\n")
    assert (folder / "log").read_text() == "one\ntwo\n" and mode(folder / "log") == 0o600
    os.chmod(folder / "log", 0o644)
    open_private(folder / "log", "ab").close()  # an existing open file is repaired
    assert mode(folder / "log") == 0o600
    write_private_text(folder / "plan.json", "{}")
    write_private_text(folder / "plan.json", '{"a": 1}')
    assert json.loads((folder / "plan.json").read_text()) == {"a": 1}
    assert mode(folder / "plan.json") == 0o600
    assert sorted(p.name for p in folder.iterdir()) == ["log", "plan.json"]  # no temporaries
    assert mode(create_private(folder / "empty")) == 0o600


def test_restrict_umask_makes_new_files_owner_only(tmp_path):
    before = os.umask(0o022)
    try:
        restrict_umask()
        assert os.umask(0o022) == PRIVATE_UMASK
        restrict_umask()
        (tmp_path / "plain").write_text("x")
        (tmp_path / "folder").mkdir()
    finally:
        os.umask(before)
    assert mode(tmp_path / "plain") == 0o600 and mode(tmp_path / "folder") == 0o700


def test_the_state_store_and_its_wal_are_owner_only_and_repaired(tmp_path):
    path = tmp_path / "store" / "state.db"
    store = StateStore(path)
    store.connection().execute("SELECT 1")
    with store.transaction() as conn:
        conn.execute("PRAGMA user_version")
    written = [p for p in path.parent.iterdir() if p.name.startswith("state.db")]
    assert {p.name for p in written} >= {"state.db", "state.db-wal", "state.db-shm"}
    assert {p.name: mode(p) for p in written} == {p.name: 0o600 for p in written}
    for file in written:  # the first store keeps its -wal and -shm open
        os.chmod(file, 0o644)  # as a store made before issue 17 has them
    second = StateStore(path)
    second.connection()
    assert {p.name: mode(p) for p in written} == {p.name: 0o600 for p in written}
    second.close()
    store.close()


def test_request_log_segments_are_owner_only(tmp_path):
    # A container's server has no restricted umask: the log's own modes must hold.
    before = os.umask(0o022)
    try:
        log = RequestLog(tmp_path / "requests")
        log.submit((time.time(), b"id-1", "/f", 1.0, 200, [b"{}"], False, [b"[1]"], False, []))
        log.close()
    finally:
        os.umask(before)
    assert segments(tmp_path / "requests"), "nothing was written"
    assert shared(tmp_path / "requests") == []


# -- a deployment and a run, end to end ----------------------------------------------------
def call(url: str, key: str) -> int:
    request = urllib.request.Request(
        url + "/scale",
        data=b'{"values": [1.0]}',
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def scale_function() -> Any:
    namespace: dict[str, Any] = {"__name__": "__main__"}  # as a notebook defines it
    exec(
        "def scale(values: list[float]) -> list[float]:\n    return [2 * v for v in values]\n",
        namespace,
    )
    return namespace["scale"]


def wait_for_request_log(home: Path, name: str, rows: int) -> None:
    from nbdeploy.monitor.requests import read_requests

    deadline = time.monotonic() + 30
    while len(read_requests(name)) < rows and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(read_requests(name)) >= rows, f"the request log of {name} stayed short"


@pytest.mark.integration
def test_nothing_nbdeploy_writes_in_its_home_is_readable_by_others(
    home, make_notebook, python_kernel
):
    before = os.umask(0o022)  # the usual, open umask: nbdeploy's own modes must hold
    try:
        result = nbdeploy.deploy(scale_function(), name="private", mlflow=False, auth="key")
        try:
            key = keys.read_key("private")
            assert key is not None
            assert [call(result.deployment.url, key) for _ in range(5)] == [200] * 5
            wait_for_request_log(home, "private", 5)
            notebook = make_notebook(
                "tiny.ipynb",
                [
                    "import nbdeploy\n"
                    "nbdeploy.log_metric('loss', 0.5)\n"
                    "open('report.txt', 'w').write('hello')\n"
                    "nbdeploy.log_artifact('report.txt')",
                ],
            )
            run = nbdeploy.run(notebook, kernel=python_kernel)
            assert run.ok, run.message
        finally:
            nbdeploy.stop("private")
        assert (home / "state.db").exists() and (home / "runs").is_dir()
        assert (home / "launcher.log").exists() and (home / "keys" / "private").exists()
        assert list((home / "deployments" / "private").rglob("requests-*.db"))
        assert list((home / "deployments" / "private").rglob("*.pkl"))
        assert (home / "bentoml").is_dir()
        assert shared(home, skip=THIRD_PARTY) == []
    finally:
        os.umask(before)
