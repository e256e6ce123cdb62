"""Schema, connections and read queries of the SQLite index."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from dicom_node.errors import StorageError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid    TEXT PRIMARY KEY,
    sop_class_uid       TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    study_instance_uid  TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    modality            TEXT,
    instance_number     INTEGER,
    calling_ae          TEXT NOT NULL,
    called_ae           TEXT NOT NULL,
    association_id      TEXT NOT NULL,
    source              TEXT NOT NULL DEFAULT 'dimse',
    path                TEXT NOT NULL,
    size                INTEGER NOT NULL,
    received_at         REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_instance_uid);

CREATE TABLE IF NOT EXISTS series (
    series_instance_uid TEXT PRIMARY KEY,
    study_instance_uid  TEXT NOT NULL,
    modality            TEXT,
    calling_ae          TEXT,
    instance_count      INTEGER NOT NULL DEFAULT 0,
    first_received_at   REAL NOT NULL,
    last_received_at    REAL NOT NULL,
    state               TEXT NOT NULL CHECK (state IN ('receiving', 'complete')),
    open_associations   INTEGER NOT NULL DEFAULT 0,
    last_end            TEXT NOT NULL DEFAULT 'released' CHECK (last_end IN ('released', 'aborted')),
    completed_at        REAL,
    completions         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS series_state ON series(state, open_associations, last_received_at);
CREATE INDEX IF NOT EXISTS series_study ON series(study_instance_uid);

CREATE TABLE IF NOT EXISTS associations (
    id          TEXT PRIMARY KEY,
    calling_ae  TEXT NOT NULL,
    called_ae   TEXT NOT NULL,
    peer_host   TEXT NOT NULL,
    started_at  REAL NOT NULL,
    ended_at    REAL,
    state       TEXT NOT NULL CHECK (state IN ('active', 'released', 'aborted')),
    instances   INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS series_associations (
    series_instance_uid TEXT NOT NULL,
    association_id      TEXT NOT NULL,
    PRIMARY KEY (series_instance_uid, association_id)
);
CREATE INDEX IF NOT EXISTS series_associations_assoc ON series_associations(association_id);

CREATE TABLE IF NOT EXISTS events (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    kind                TEXT NOT NULL CHECK (kind IN ('series_complete', 'study_complete')),
    study_instance_uid  TEXT NOT NULL,
    series_instance_uid TEXT,
    instance_count      INTEGER NOT NULL,
    created_at          REAL NOT NULL,
    consumed_at         REAL
);
CREATE INDEX IF NOT EXISTS events_pending ON events(consumed_at, id);

CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE IF NOT EXISTS jobs (
    id                  TEXT PRIMARY KEY,
    event_id            INTEGER NOT NULL,
    series_instance_uid TEXT NOT NULL,
    study_instance_uid  TEXT NOT NULL,
    model               TEXT NOT NULL,
    rule                TEXT NOT NULL,
    destinations        TEXT NOT NULL,
    state               TEXT NOT NULL CHECK (state IN ('queued', 'validating', 'decoding', 'inferring', 'writing',
                                                        'delivering', 'done', 'failed', 'dead-letter')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL,
    next_attempt_at     REAL NOT NULL DEFAULT 0,
    stage_times         TEXT NOT NULL DEFAULT '{}',
    reason              TEXT,
    details             TEXT,
    result              TEXT,
    UNIQUE (event_id, model)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS jobs_series ON jobs(series_instance_uid);

CREATE TABLE IF NOT EXISTS results (
    sop_instance_uid    TEXT PRIMARY KEY,
    job_id              TEXT NOT NULL,
    kind                TEXT NOT NULL CHECK (kind IN ('SEG', 'SR')),
    sop_class_uid       TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    study_instance_uid  TEXT NOT NULL,
    source_series_uid   TEXT NOT NULL,
    model               TEXT NOT NULL,
    model_version       TEXT NOT NULL,
    path                TEXT NOT NULL,
    created_at          REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_study ON results(study_instance_uid);

CREATE TABLE IF NOT EXISTS unrouted (
    event_id            INTEGER PRIMARY KEY,
    series_instance_uid TEXT NOT NULL,
    facts               TEXT NOT NULL,
    created_at          REAL NOT NULL
);

-- Pull-based ingest: poll state and seen instances per source (dicom_node.sources.state).
CREATE TABLE IF NOT EXISTS source_state (
    source          TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'idle' CHECK (state IN ('idle', 'polling', 'backoff', 'stopped')),
    reason          TEXT,
    watermark       TEXT,
    next_poll_at    REAL NOT NULL DEFAULT 0,
    backoff_until   REAL,
    failures        INTEGER NOT NULL DEFAULT 0,
    polls           INTEGER NOT NULL DEFAULT 0,
    retrieved       INTEGER NOT NULL DEFAULT 0,
    last_retrieved  INTEGER NOT NULL DEFAULT 0,
    last_poll_at    REAL,
    last_success_at REAL,
    last_error      TEXT,
    last_error_at   REAL,
    lease_owner     TEXT,
    lease_until     REAL,
    updated_at      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS source_seen (
    source              TEXT NOT NULL,
    sop_instance_uid    TEXT NOT NULL,
    study_instance_uid  TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    outcome             TEXT NOT NULL,
    seen_at             REAL NOT NULL,
    study_date          TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (source, sop_instance_uid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS source_seen_study ON source_seen(source, study_instance_uid, series_instance_uid);
CREATE INDEX IF NOT EXISTS source_seen_date ON source_seen(source, study_date);

-- Retrieval sessions (dicom_node.sources.sessions): files under <storage.root>/sessions/<id>/, outside the spool.
CREATE TABLE IF NOT EXISTS sessions (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('upload', 'dicom', 'dicomweb')),
    source      TEXT NOT NULL,
    request     TEXT NOT NULL DEFAULT '{}',
    status      TEXT NOT NULL CHECK (status IN ('retrieving', 'ready', 'failed')),
    reason      TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    expires_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_expiry ON sessions(expires_at);
CREATE TABLE IF NOT EXISTS session_instances (
    session_id          TEXT NOT NULL,
    sop_instance_uid    TEXT NOT NULL,
    sop_class_uid       TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    study_instance_uid  TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    modality            TEXT,
    instance_number     INTEGER,
    path                TEXT NOT NULL,
    size                INTEGER NOT NULL,
    PRIMARY KEY (session_id, sop_instance_uid)
) WITHOUT ROWID;

-- REST invocations (dicom_node.api.webhooks): one model run on one upload, keyed by its request UUID.
-- Created here with every other table, so that the jobs view (dicom_node.jobs.ops.list_jobs) can read
-- it whether or not an invocation was ever posted.
CREATE TABLE IF NOT EXISTS invocations (
    id               TEXT PRIMARY KEY,
    examination_id   TEXT,
    model            TEXT NOT NULL,
    parameters       TEXT NOT NULL DEFAULT '{}',
    webhook_url      TEXT,
    filename         TEXT,
    state            TEXT NOT NULL,
    result           TEXT,
    error            TEXT,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    webhook_state    TEXT NOT NULL,
    webhook_attempts INTEGER NOT NULL DEFAULT 0,
    next_webhook_at  REAL,
    webhook_error    TEXT
);
CREATE INDEX IF NOT EXISTS invocations_state ON invocations(state, created_at);
CREATE INDEX IF NOT EXISTS invocations_webhook ON invocations(webhook_state, next_webhook_at);
CREATE INDEX IF NOT EXISTS invocations_exam ON invocations(examination_id);
"""


class SeriesState(str, Enum):
    """Assembly state of a series."""

    RECEIVING = "receiving"
    COMPLETE = "complete"


@dataclass(frozen=True)
class InstanceRecord:
    """What the index keeps of one acknowledged instance (no patient attributes)."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    modality: str | None
    instance_number: int | None
    calling_ae: str
    called_ae: str
    association_id: str
    path: str
    size: int
    received_at: float
    source: str = "dimse"


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the index with the pragmas durability needs.

    WAL with ``synchronous=FULL`` makes every commit durable (the WAL is fsynced
    at commit) while readers never block the writer.
    """
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
        else:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open the index {path}: {exc}") from exc
    conn.row_factory = sqlite3.Row
    return conn


class Index:
    """The index database: schema creation and read queries.

    Parameters
    ----------
    path : pathlib.Path
        The SQLite file (``<storage.root>/index.sqlite3``).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path)
        try:
            conn.executescript(_SCHEMA)
            conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot create the index schema in {path}: {exc}") from exc
        finally:
            conn.close()

    def reader(self) -> sqlite3.Connection:
        """A new connection for reading (one per thread)."""
        return connect(self.path)

    def counts(self) -> dict[str, int]:
        """Counts for ``dicom-node status``: studies, series, instances, pending, complete."""
        conn = self.reader()
        try:
            row = conn.execute(
                """SELECT
                     (SELECT COUNT(DISTINCT study_instance_uid) FROM series) AS studies,
                     (SELECT COUNT(*) FROM series) AS series,
                     (SELECT COUNT(*) FROM instances) AS instances,
                     (SELECT COUNT(*) FROM series WHERE state = 'receiving') AS pending,
                     (SELECT COUNT(*) FROM series WHERE state = 'complete') AS complete"""
            ).fetchone()
            return {key: int(row[key]) for key in row.keys()}
        finally:
            conn.close()

    def has_instance(self, conn: sqlite3.Connection, sop_instance_uid: str) -> bool:
        """True when the instance is already indexed."""
        row = conn.execute("SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
        return row is not None

    def instance_uids(self) -> set[str]:
        """Every indexed SOP Instance UID."""
        conn = self.reader()
        try:
            return {r[0] for r in conn.execute("SELECT sop_instance_uid FROM instances")}
        finally:
            conn.close()

    def series(self) -> list[dict[str, object]]:
        """All series rows, oldest first."""
        conn = self.reader()
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM series ORDER BY first_received_at")]
        finally:
            conn.close()

    def events(self, pending_only: bool = False) -> list[dict[str, object]]:
        """Completion events in order; ``pending_only`` keeps the unconsumed ones."""
        conn = self.reader()
        try:
            sql = "SELECT * FROM events" + (" WHERE consumed_at IS NULL" if pending_only else "") + " ORDER BY id"
            return [dict(r) for r in conn.execute(sql)]
        finally:
            conn.close()
