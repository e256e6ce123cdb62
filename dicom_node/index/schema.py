"""The schema of the index and its numbered migrations, tracked by ``PRAGMA user_version``.

Every table of the node lives in one SQLite file (``<storage.root>/index.sqlite3``) and is
created here, nowhere else. :data:`MIGRATIONS` is append-only: migration *n* takes a database
at ``user_version`` *n - 1* to *n*. :func:`migrate` runs the pending ones in ONE transaction
(SQLite DDL is transactional, so a failed upgrade leaves the file as it was) and refuses a
database newer than the code, which would otherwise be written with a schema it does not know.

Migration 1 is the schema as release 4781e18 created it. That release set no ``user_version``
(it stayed 0) and created ``deliveries`` and ``invocations`` lazily, so migration 1 is written
with ``IF NOT EXISTS`` throughout: it adopts such a database, whatever subset of tables it has,
without touching its rows (``tests/test_index_migrations.py`` upgrades a dump of one).

To change the schema, append a migration (``ALTER TABLE ... ADD COLUMN``, a new table, a
backfill ``UPDATE``); never edit one that has shipped. SQLite-only constructs used below:
``WITHOUT ROWID``, ``INTEGER PRIMARY KEY AUTOINCREMENT``, ``INSERT OR IGNORE`` and the
``PRAGMA`` statements. The same migrations run on PostgreSQL: :mod:`dicom_node.index.pg` translates
those constructs and keeps the version in a ``dicom_node_schema`` table, under an advisory lock.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

from dicom_node.errors import StorageError
from dicom_node.index import pg

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    """One step of the schema: ``version`` is the ``user_version`` it leaves behind."""

    version: int
    description: str
    sql: str

    def statements(self) -> list[str]:
        """The statements of :attr:`sql`, one by one (``executescript`` would commit the open transaction)."""
        lines = [line for line in self.sql.splitlines() if not line.lstrip().startswith("--")]
        return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


_V1 = """
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

-- Pull-based ingest: poll state and seen instances per source (dicom_node.index.sources).
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

-- Retrieval sessions (dicom_node.index.sessions): files under <storage.root>/sessions/<id>/, outside the spool.
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

-- REST invocations (dicom_node.index.invocations): one model run on one upload, keyed by its request UUID.
-- The previous release created it lazily (dicom_node.api.webhooks.ensure_schema); IF NOT EXISTS adopts it.
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

-- Delivery ledger (dicom_node.index.deliveries): one row per (result object, destination). The previous
-- release created it lazily (dicom_node.delivery.ledger.ensure_schema); IF NOT EXISTS adopts it.
CREATE TABLE IF NOT EXISTS deliveries (
    sop_instance_uid TEXT NOT NULL,
    destination      TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    next_attempt_at  REAL,
    sent_at          REAL,
    path             TEXT,
    PRIMARY KEY (sop_instance_uid, destination)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt_at);

-- The previous release's own version marker, kept for tools that read it; PRAGMA user_version is authoritative.
INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', '1');
"""

_V2 = """
-- The one durable work queue (dicom_node.workqueue, queries in dicom_node.index.work): every unit of
-- background work (a series job, its result delivery, an invocation, its webhook, a session retrieval)
-- is one row, keyed by its kind and the id of its domain row (ref), with one state machine:
--   queued -> running -> done | retry (-> running at next_attempt_at) | failed | dead-letter
-- A running row whose lease_until passed (its process died) is claimed again and counts an attempt.
CREATE TABLE work (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT NOT NULL,
    ref             TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('queued', 'running', 'retry', 'done', 'failed', 'dead-letter')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL DEFAULT 3,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    lease_until     REAL,
    stage_times     TEXT NOT NULL DEFAULT '{}',
    reason          TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    UNIQUE (kind, ref)
);
CREATE INDEX work_due ON work(state, next_attempt_at);

-- Work in flight in an upgraded database is queued, so nothing is lost across the upgrade.
-- A job caught mid-stage is 'running' with an expired lease: claimed again, it counts an attempt, as
-- the previous release's recovery counted it (jobs.attempts), and past max_attempts it ends failed.
INSERT OR IGNORE INTO work(kind, ref, state, attempts, next_attempt_at, lease_until, created_at, updated_at)
    SELECT 'job', id, CASE state WHEN 'queued' THEN 'queued' ELSE 'running' END, attempts, 0,
           CASE state WHEN 'queued' THEN NULL ELSE 0 END, created_at, updated_at
      FROM jobs WHERE state IN ('queued', 'validating', 'decoding', 'inferring', 'writing');
INSERT OR IGNORE INTO work(kind, ref, state, next_attempt_at, created_at, updated_at)
    SELECT 'delivery', id, 'retry', next_attempt_at, created_at, updated_at FROM jobs WHERE state = 'delivering';
INSERT OR IGNORE INTO work(kind, ref, state, created_at, updated_at)
    SELECT 'invocation', id, 'queued', created_at, updated_at FROM invocations WHERE state IN ('queued', 'running');
INSERT OR IGNORE INTO work(kind, ref, state, attempts, next_attempt_at, created_at, updated_at)
    SELECT 'webhook', id, 'retry', webhook_attempts, COALESCE(next_webhook_at, 0), created_at, updated_at
      FROM invocations WHERE webhook_state = 'pending';
INSERT OR IGNORE INTO work(kind, ref, state, created_at, updated_at)
    SELECT 'retrieval', id, 'queued', created_at, updated_at FROM sessions WHERE status = 'retrieving';
"""

_V3 = """
-- The search index of QIDO-RS and C-FIND (dicom_node.index.qido, matching in dicom_node.archive): the
-- attributes PS3.18 10.6.3 returns and the common matching keys, one row per study, series and instance the
-- node holds (received instances and its own results). The one place patient attributes are indexed, on
-- purpose, for search. Filled in the transaction that indexes the instance; rows of an upgraded database
-- are backfilled from the files' headers at start (dicom_node.archive.backfill).
CREATE TABLE qido_studies (
    study_uid                TEXT PRIMARY KEY,
    patient_name             TEXT COLLATE NOCASE,
    patient_id               TEXT,
    patient_birth_date       TEXT,
    patient_sex              TEXT,
    study_date               TEXT,
    study_time               TEXT,
    accession_number         TEXT,
    study_id                 TEXT,
    study_description        TEXT,
    referring_physician_name TEXT COLLATE NOCASE,
    timezone_offset          TEXT,
    updated_at               REAL NOT NULL
);
CREATE INDEX qido_studies_patient_id ON qido_studies(patient_id);
CREATE INDEX qido_studies_patient_name ON qido_studies(patient_name);
CREATE INDEX qido_studies_date ON qido_studies(study_date, study_time);
CREATE INDEX qido_studies_accession ON qido_studies(accession_number);

CREATE TABLE qido_series (
    series_uid             TEXT PRIMARY KEY,
    study_uid              TEXT NOT NULL,
    modality               TEXT,
    series_number          INTEGER,
    series_description     TEXT,
    performed_start_date   TEXT,
    performed_start_time   TEXT,
    updated_at             REAL NOT NULL
);
CREATE INDEX qido_series_study ON qido_series(study_uid);
CREATE INDEX qido_series_modality ON qido_series(modality, study_uid);

CREATE TABLE qido_instances (
    sop_uid           TEXT PRIMARY KEY,
    series_uid        TEXT NOT NULL,
    study_uid         TEXT NOT NULL,
    sop_class_uid     TEXT NOT NULL,
    instance_number   INTEGER,
    rows              INTEGER,
    columns           INTEGER,
    bits_allocated    INTEGER,
    number_of_frames  INTEGER,
    origin            TEXT NOT NULL CHECK (origin IN ('received', 'result')),
    updated_at        REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX qido_instances_series ON qido_instances(series_uid, instance_number);
CREATE INDEX qido_instances_study ON qido_instances(study_uid);
CREATE INDEX qido_instances_origin ON qido_instances(origin, study_uid);
"""

_V4 = """
-- Bucket invocations (the Triton facade's /bucket_invocations, dicom_node.api.bucket_runner): where an
-- invocation reads its input (an object or a folder URL; NULL: the upload under tmp/) and where it writes
-- its results (a folder URL; NULL: nowhere but the row and the webhook).
ALTER TABLE invocations ADD COLUMN input_url TEXT;
ALTER TABLE invocations ADD COLUMN output_url TEXT;
"""

_V5 = """
-- Several nodes on one PostgreSQL database (issue 18, dicom_node.index.nodes): each node process has an id,
-- made at its start, and a heartbeat row renewed by its assembler. The associations a node accepts carry its
-- id, so recovery aborts only the associations of nodes whose heartbeat ran out, never a live node's.
-- NULL node_id: recorded by a process without an id (a release before this one, a CLI command).
ALTER TABLE associations ADD COLUMN node_id TEXT;
CREATE INDEX associations_state ON associations(state, node_id);
CREATE TABLE nodes (
    id          TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    started_at  REAL NOT NULL,
    last_seen   REAL NOT NULL
);
"""

_V6 = """
-- Retrieval sessions record the node that runs them (NULL: recorded before node ids, or by a process
-- without one), so a node starting on a shared PostgreSQL database fails only dead nodes' retrievals.
ALTER TABLE sessions ADD COLUMN node_id TEXT;
"""

#: Every migration in order; append only. The next schema change is migration 7.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the schema of release 4781e18 (adopts a database it created: user_version 0)", _V1),
    Migration(2, "the work queue (table work), with the work in flight of an upgraded database", _V2),
    Migration(3, "the QIDO-RS / C-FIND search index (qido_studies, qido_series, qido_instances)", _V3),
    Migration(4, "invocations read from and write to object storage (input_url, output_url)", _V4),
    Migration(5, "node ids and heartbeats (nodes; associations.node_id) for cluster-safe recovery", _V5),
    Migration(6, "retrieval sessions record their node (sessions.node_id)", _V6),
)

#: The schema version this code reads and writes.
LATEST = MIGRATIONS[-1].version


def user_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in the database (0: new, or created before versioning)."""
    if isinstance(conn, pg.PgConnection):
        return pg.user_version(conn)
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _set_version(conn: sqlite3.Connection, version: int) -> None:
    if isinstance(conn, pg.PgConnection):
        pg.set_version(conn, version)
    else:
        # PRAGMA takes no parameters; the value is our own integer.
        conn.execute(f"PRAGMA user_version = {int(version)}")


def migrate(conn: sqlite3.Connection, path: object = "the index") -> int:
    """Bring the database to :data:`LATEST` in one transaction; a no-op when it is already there.

    Parameters
    ----------
    conn : sqlite3.Connection
        A write connection in autocommit mode (``isolation_level=None``), not in a transaction.
    path : object
        What to call the database in errors (its file path).

    Returns
    -------
    int
        The version the database had before (``LATEST`` when nothing ran).

    Raises
    ------
    StorageError
        The database is newer than this code, or a migration failed (nothing was changed).
    """
    try:
        # IMMEDIATE takes the write lock before reading the version, so two processes opening the same
        # root (the service and a CLI command) cannot both run the same migration.
        conn.execute("BEGIN IMMEDIATE")
        try:
            if isinstance(conn, pg.PgConnection):
                pg.lock_migrations(conn)
            before = user_version(conn)
            if before > LATEST:
                raise StorageError(
                    f"{path} has schema version {before}, newer than this dicom-node supports ({LATEST}); "
                    "upgrade dicom-node or use a storage root written by this version"
                )
            for migration in MIGRATIONS:
                if migration.version > before:
                    for statement in migration.statements():
                        conn.execute(statement)
                    _set_version(conn, migration.version)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise StorageError(f"cannot migrate the index schema in {path}: {exc}") from exc
    if before < LATEST:
        log.info("index schema migrated from=%d to=%d", before, LATEST)
    return before
