"""Connections and read queries of the index (the schema is :mod:`dicom_node.index.schema`).

The index is a SQLite file (the default) or a PostgreSQL database (``storage.database``,
:mod:`dicom_node.index.pg`); :class:`Index` takes either as its ``path`` and callers use the same
connections and query functions on both.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import cast

from dicom_node.errors import StorageError
from dicom_node.index import pg
from dicom_node.index.schema import migrate

#: Where the index lives: a SQLite file, or a ``postgresql://`` URL (``storage.database``).
Location = Path | str


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


def connect(path: Location, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the index with the pragmas durability needs.

    WAL with ``synchronous=FULL`` makes every commit durable (the WAL is fsynced
    at commit) while readers never block the writer. A ``postgresql://`` location gets a
    dedicated :class:`~dicom_node.index.pg.PgConnection` (PostgreSQL commits are durable by default).
    """
    if pg.is_postgres(path):
        # PgConnection implements the subset of sqlite3.Connection the query functions use (see pg.py);
        # typing the whole layer against a Protocol is the follow-up that lets mypy check that claim.
        return cast(sqlite3.Connection, pg.connect(str(path)))
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
    """The index database: opening it (running pending migrations) and read queries.

    Parameters
    ----------
    path : pathlib.Path or str
        The SQLite file (``<storage.root>/index.sqlite3``), or a ``postgresql://`` URL
        (``storage.database``): readers then come from a connection pool.
    """

    def __init__(self, path: Location) -> None:
        self.path: Location = path if pg.is_postgres(path) else Path(path)
        self._pool: pg.ReaderPool | None = None
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path)
        try:
            # Creates a new database, upgrades one of an older release in place, refuses a newer one.
            migrate(conn, self.display)
        finally:
            conn.close()
        if isinstance(self.path, str):
            self._pool = pg.ReaderPool(self.path)

    @property
    def display(self) -> str:
        """The location for messages and logs (a PostgreSQL URL without its password)."""
        return pg.redact(self.path) if isinstance(self.path, str) else str(self.path)

    def reader(self) -> sqlite3.Connection:
        """A new connection for reading (one per thread); on PostgreSQL a pooled one, given back by ``close()``."""
        if self._pool is not None:
            return cast(sqlite3.Connection, self._pool.reader())
        return connect(self.path)

    @property
    def pooled(self) -> bool:
        """True when readers come from a bounded pool (PostgreSQL) and must be given back after each use."""
        return self._pool is not None

    def close(self) -> None:
        """Close the reader pool (PostgreSQL); SQLite readers are closed by their users."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

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
        """True when the instance is already indexed.

        Raises
        ------
        StorageError
            The index cannot be read (locked past its timeout, I/O error): ingest answers 0xA700,
            so the sender retries, instead of an unmapped sqlite3 error.
        """
        try:
            row = conn.execute("SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
        except sqlite3.Error as exc:
            raise StorageError(f"index read failed: {exc}") from exc
        return row is not None

    def instance_uids(self) -> set[str]:
        """Every indexed SOP Instance UID."""
        conn = self.reader()
        try:
            return {r[0] for r in conn.execute("SELECT sop_instance_uid FROM instances")}
        finally:
            conn.close()

    def instance_paths(self) -> Iterator[str]:
        """Every spool path the index references, ascending, streamed (the start-up spool scan)."""
        conn = self.reader()
        try:
            yield from (r[0] for r in conn.execute("SELECT path FROM instances ORDER BY path"))
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
