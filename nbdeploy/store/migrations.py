"""Schema migrations of the state store, applied in order; never drop user data.

The schema version lives in SQLite's ``PRAGMA user_version``. A migration is a list of
statements run in one transaction together with the version bump, so a crash half-way
leaves the previous version intact. Later features append migrations; they never edit one
that has shipped.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "runs with their metrics, logged parameters and artifacts; an event log",
        (
            """CREATE TABLE runs (
                id TEXT PRIMARY KEY,
                notebook TEXT NOT NULL,
                parameters TEXT NOT NULL DEFAULT '{}',
                status TEXT NOT NULL,
                kernel TEXT,
                output_path TEXT,
                error TEXT,
                created_at REAL NOT NULL,
                started_at REAL,
                finished_at REAL,
                mlflow_run_id TEXT
            )""",
            """CREATE TABLE run_metrics (
                run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
                name TEXT NOT NULL,
                value REAL NOT NULL,
                step INTEGER NOT NULL DEFAULT 0,
                logged_at REAL NOT NULL
            )""",
            "CREATE INDEX run_metrics_by_run ON run_metrics(run_id)",
            """CREATE TABLE run_params (
                run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
                name TEXT NOT NULL,
                value TEXT NOT NULL,
                PRIMARY KEY (run_id, name)
            )""",
            """CREATE TABLE run_artifacts (
                run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
                path TEXT NOT NULL,
                PRIMARY KEY (run_id, path)
            )""",
            """CREATE TABLE events (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                at REAL NOT NULL,
                kind TEXT NOT NULL,
                subject TEXT NOT NULL,
                detail TEXT NOT NULL DEFAULT '{}'
            )""",
        ),
    ),
    Migration(
        2,
        "groups of runs (sweeps, pipelines) and the step cache",
        (
            """CREATE TABLE run_groups (
                id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                source TEXT NOT NULL,
                spec TEXT NOT NULL DEFAULT '{}',
                status TEXT NOT NULL,
                created_at REAL NOT NULL,
                finished_at REAL
            )""",
            "ALTER TABLE runs ADD COLUMN group_id TEXT REFERENCES run_groups(id)",
            "ALTER TABLE runs ADD COLUMN step TEXT",
            "ALTER TABLE runs ADD COLUMN fingerprint TEXT",
            "ALTER TABLE runs ADD COLUMN outputs TEXT NOT NULL DEFAULT '{}'",
            "CREATE INDEX runs_by_group ON runs(group_id)",
            "CREATE INDEX runs_by_fingerprint ON runs(fingerprint, status)",
        ),
    ),
    Migration(
        3,
        "deployments, their versions and the server processes that serve them",
        (
            """CREATE TABLE deployments (
                name TEXT PRIMARY KEY,
                host TEXT NOT NULL,
                port INTEGER NOT NULL,
                strategy TEXT NOT NULL DEFAULT 'recreate',
                live_version INTEGER,
                status TEXT NOT NULL,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL
            )""",
            """CREATE TABLE versions (
                deployment TEXT NOT NULL REFERENCES deployments(name) ON DELETE CASCADE,
                version INTEGER NOT NULL,
                content_hash TEXT NOT NULL,
                bento_tag TEXT NOT NULL,
                function TEXT NOT NULL,
                source TEXT NOT NULL DEFAULT '{}',
                requirements TEXT NOT NULL DEFAULT '[]',
                schema TEXT NOT NULL DEFAULT '{}',
                options TEXT NOT NULL DEFAULT '{}',
                service_dir TEXT NOT NULL,
                reference_path TEXT,
                mlflow_version TEXT,
                created_at REAL NOT NULL,
                PRIMARY KEY (deployment, version)
            )""",
            "CREATE INDEX versions_by_hash ON versions(deployment, content_hash)",
            """CREATE TABLE servers (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                deployment TEXT NOT NULL REFERENCES deployments(name) ON DELETE CASCADE,
                version INTEGER NOT NULL,
                pid INTEGER,
                start_ticks INTEGER,
                host TEXT NOT NULL,
                port INTEGER NOT NULL,
                role TEXT NOT NULL DEFAULT 'live',
                status TEXT NOT NULL,
                log_path TEXT NOT NULL,
                started_at REAL NOT NULL,
                stopped_at REAL,
                error TEXT
            )""",
            "CREATE INDEX servers_by_deployment ON servers(deployment, status)",
        ),
    ),
    Migration(
        4,
        "runs remember the process running them (pid, its creation time and host), so a run "
        "whose process is gone is no longer shown running; a metric value may be missing "
        "(a NaN or an infinity was logged)",
        (
            "ALTER TABLE runs ADD COLUMN pid INTEGER",
            "ALTER TABLE runs ADD COLUMN pid_create_time REAL",
            "ALTER TABLE runs ADD COLUMN host TEXT",
            "CREATE INDEX runs_by_status ON runs(status)",
            # SQLite cannot drop a NOT NULL constraint: copy the table (rowids in order: the
            # last value logged among equal steps is the metric's value).
            """CREATE TABLE run_metrics_v4 (
                run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
                name TEXT NOT NULL,
                value REAL,
                step INTEGER NOT NULL DEFAULT 0,
                logged_at REAL NOT NULL
            )""",
            "INSERT INTO run_metrics_v4 (run_id, name, value, step, logged_at) "
            "SELECT run_id, name, value, step, logged_at FROM run_metrics ORDER BY rowid",
            "DROP TABLE run_metrics",
            "ALTER TABLE run_metrics_v4 RENAME TO run_metrics",
            "CREATE INDEX run_metrics_by_run ON run_metrics(run_id)",
        ),
    ),
    Migration(
        5,
        "a server may be a container of the version's image (nbdeploy image run) rather "
        "than a local process: its container id",
        ("ALTER TABLE servers ADD COLUMN container TEXT",),
    ),
    Migration(
        6,
        "a run records what its notebook deployed (%deploy lines run by nbdeploy run)",
        ("ALTER TABLE runs ADD COLUMN deployed TEXT NOT NULL DEFAULT '[]'",),
    ),
    Migration(
        7,
        "runs of other kinds than a notebook (a batch job, a schedule's fire) and what "
        "started them; schedules, written by the daemon only",
        (
            # 'notebook' (a run of nbdeploy run), 'batch' (nbdeploy batch), 'schedule' (one
            # fire of a schedule: its step is the schedule's name)
            "ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'notebook'",
            # the id of the run that started this one (a schedule's fire), else NULL
            "ALTER TABLE runs ADD COLUMN trigger_id TEXT",
            "CREATE INDEX runs_by_kind ON runs(kind, step)",
            "CREATE INDEX runs_by_trigger ON runs(trigger_id)",
            """CREATE TABLE schedules (
                name TEXT PRIMARY KEY,
                spec TEXT NOT NULL,
                status TEXT NOT NULL,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                last_fire_at REAL,
                next_fire_at REAL,
                last_status TEXT,
                last_error TEXT,
                last_triggered_at REAL
            )""",
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version
