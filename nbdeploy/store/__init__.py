"""The embedded state store: one SQLite file (WAL) under NBDEPLOY_HOME.

Every write is a ``BEGIN IMMEDIATE`` transaction, so two processes deploying or running at
once serialize their writes instead of corrupting the file. Connections are per thread.
The file is owner-only (0600), and so are its -wal and -shm files: SQLite gives them the
database's mode.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nbdeploy import config
from nbdeploy.errors import StoreError
from nbdeploy.private_files import create_private, make_private, private_dir
from nbdeploy.store.migrations import LATEST_VERSION, MIGRATIONS

BUSY_TIMEOUT_MS = 30_000


class StateStore:
    """Access to ``state.db``; migrates it to the latest schema on first use.

    ``target_version`` exists for tests and tools that need an older schema; everything
    else uses the latest.
    """

    def __init__(self, path: Path | str | None = None, target_version: int | None = None) -> None:
        self.path = Path(path) if path is not None else config.state_db_path()
        self.target_version = LATEST_VERSION if target_version is None else target_version
        self._local = threading.local()
        self._migrated = False
        self._migrate_lock = threading.Lock()

    # -- connections -------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        try:
            private_dir(self.path.parent)
            create_private(self.path)  # before SQLite creates it with the umask's mode
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"cannot open the state store {self.path}: {exc}",
                "check that NBDEPLOY_HOME points to a writable directory",
            ) from exc
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._enable_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        self._make_private()
        return conn

    def _make_private(self) -> None:
        """Repair a store made before issue 17 (its files readable by every local user)."""
        for suffix in ("", "-wal", "-shm"):
            make_private(f"{self.path}{suffix}")

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL. Switching a new file needs an exclusive lock, and SQLite does not
        apply the busy timeout to it: wait for other connections by hand."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise StoreError(f"cannot open the state store {self.path}: {exc}") from exc
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"the state store {self.path} stayed locked for "
                        f"{BUSY_TIMEOUT_MS // 1000} s",
                        "another process holds it; try again when it has finished",
                    ) from exc
                time.sleep(0.02)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, with the schema migrated."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
        if not self._migrated:
            with self._migrate_lock:
                if not self._migrated:
                    self._migrate(conn)
                    self._migrated = True
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed when the block ends, rolled back on error."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- schema ------------------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        return int(self.connection().execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self, conn: sqlite3.Connection) -> None:
        current = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if current > LATEST_VERSION:
            raise StoreError(
                f"the state store {self.path} has schema version {current}, but this nbdeploy "
                f"knows versions up to {LATEST_VERSION}",
                "upgrade nbdeploy, or point NBDEPLOY_HOME to another directory",
            )
        if current >= self.target_version:
            return
        if current > 0:
            self._backup(conn, current)
        for migration in MIGRATIONS:
            if migration.version > self.target_version:
                break
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Another process may have migrated while we waited for the lock.
                version_now = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if migration.version <= version_now:
                    conn.execute("ROLLBACK")
                    continue
                for statement in migration.statements:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {migration.version:d}")
            except BaseException as exc:
                conn.execute("ROLLBACK")
                raise StoreError(
                    f"migrating the state store {self.path} to schema version "
                    f"{migration.version} failed: {exc}; the store is unchanged",
                ) from exc
            conn.execute("COMMIT")

    def _backup(self, conn: sqlite3.Connection, version: int) -> Path:
        """Copy the store aside before upgrading it, so an upgrade can always be undone."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        backup_path = self.path.with_name(f"{self.path.name}.v{version}-{stamp}.bak")
        target = sqlite3.connect(create_private(backup_path))
        try:
            conn.backup(target)
        finally:
            target.close()
        return backup_path


_default_store: StateStore | None = None
_default_lock = threading.Lock()


def default_store() -> StateStore:
    """The store at NBDEPLOY_HOME (re-read when NBDEPLOY_HOME changes, as in tests)."""
    global _default_store
    path = config.state_db_path()
    with _default_lock:
        if _default_store is None or _default_store.path != path:
            _default_store = StateStore(path)
        return _default_store
