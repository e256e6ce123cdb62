"""The delivery ledger: which result was sent where, so nothing is sent twice.

Functions of a :class:`sqlite3.Connection`; the caller runs them through the
index writer (one writer thread, group commit), e.g.
``writer.run(lambda c: deliveries.mark_sent(c, uid, "pacs", now))``. The table is
created by :mod:`dicom_node.index.schema` (migration 1). One row per
(SOP Instance UID, destination):

- ``pending``: attempted and failed transiently; ``next_attempt_at`` says when to retry;
- ``sent``: the destination stored it (C-STORE success or warning, PS3.4 B.2.3;
  STOW-RS ReferencedSOPSequence, PS3.18 10.5.3); never sent there again;
- ``dead``: dead-lettered (permanent failure or attempts exhausted); an operator
  may :func:`requeue` it.

Delivery is at-least-once: the sender checks :func:`was_sent` before sending
and calls :func:`mark_sent` right after each success, so only a crash between
the peer's response and that commit can repeat a send.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

__all__ = ["DueDelivery", "LedgerRow", "due", "lookup", "mark_dead", "mark_sent", "record_attempt", "requeue", "was_sent"]

#: Longest error text kept per row (errors are ours, PHI-free, but unbounded otherwise).
_MAX_ERROR = 1000


@dataclass(frozen=True)
class LedgerRow:
    """The ledger state of one object at one destination."""

    sop_instance_uid: str
    destination: str
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: float | None
    sent_at: float | None


@dataclass(frozen=True)
class DueDelivery:
    """A pending delivery whose retry time has come."""

    sop_instance_uid: str
    destination: str
    attempts: int
    next_attempt_at: float
    path: str | None


def was_sent(conn: sqlite3.Connection, sop_uid: str, destination: str) -> bool:
    """True when ``sop_uid`` was already stored by ``destination``."""
    row = conn.execute(
        "SELECT 1 FROM deliveries WHERE sop_instance_uid = ? AND destination = ? AND state = 'sent'",
        (sop_uid, destination),
    ).fetchone()
    return row is not None


def lookup(conn: sqlite3.Connection, sop_uids: list[str], destination: str) -> dict[str, LedgerRow]:
    """Return the ledger rows of ``sop_uids`` at ``destination`` (absent UIDs are missing keys)."""
    out: dict[str, LedgerRow] = {}
    # Chunked so the statement stays under SQLite's host-parameter limit.
    for start in range(0, len(sop_uids), 500):
        chunk = sop_uids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            "SELECT sop_instance_uid, destination, state, attempts, last_error, next_attempt_at, sent_at "
            f"FROM deliveries WHERE destination = ? AND sop_instance_uid IN ({marks})",
            (destination, *chunk),
        ).fetchall()
        for row in rows:
            out[row[0]] = LedgerRow(*row)
    return out


def record_attempt(
    conn: sqlite3.Connection, sop_uid: str, destination: str, error: str, next_attempt_at: float, path: str | None = None
) -> int:
    """Record one failed, retryable attempt; returns the attempts counted so far.

    A row already ``sent`` is left alone (returns its count unchanged).
    """
    conn.execute(
        """
        INSERT INTO deliveries (sop_instance_uid, destination, state, attempts, last_error, next_attempt_at, path)
        VALUES (?, ?, 'pending', 1, ?, ?, ?)
        ON CONFLICT (sop_instance_uid, destination) DO UPDATE SET
            attempts = deliveries.attempts + 1, last_error = excluded.last_error, next_attempt_at = excluded.next_attempt_at,
            state = 'pending', path = COALESCE(excluded.path, deliveries.path)
        WHERE deliveries.state != 'sent'
        """,
        (sop_uid, destination, error[:_MAX_ERROR], next_attempt_at, path),
    )
    return _attempts(conn, sop_uid, destination)


def mark_sent(conn: sqlite3.Connection, sop_uid: str, destination: str, now: float, warning: str | None = None) -> int:
    """Record a successful attempt (``warning`` keeps a 0xBxxx reason); returns the attempts counted."""
    conn.execute(
        """
        INSERT INTO deliveries (sop_instance_uid, destination, state, attempts, last_error, sent_at)
        VALUES (?, ?, 'sent', 1, ?, ?)
        ON CONFLICT (sop_instance_uid, destination) DO UPDATE SET
            attempts = deliveries.attempts + 1, state = 'sent', last_error = excluded.last_error,
            next_attempt_at = NULL, sent_at = excluded.sent_at
        WHERE deliveries.state != 'sent'
        """,
        (sop_uid, destination, warning[:_MAX_ERROR] if warning else None, now),
    )
    return _attempts(conn, sop_uid, destination)


def mark_dead(conn: sqlite3.Connection, sop_uid: str, destination: str, error: str, path: str | None = None) -> int:
    """Dead-letter an object after a permanent failure or the last attempt; returns the attempts counted.

    A row already ``sent`` is left alone.
    """
    conn.execute(
        """
        INSERT INTO deliveries (sop_instance_uid, destination, state, attempts, last_error, path)
        VALUES (?, ?, 'dead', 1, ?, ?)
        ON CONFLICT (sop_instance_uid, destination) DO UPDATE SET
            attempts = deliveries.attempts + 1, state = 'dead', last_error = excluded.last_error,
            next_attempt_at = NULL, path = COALESCE(excluded.path, deliveries.path)
        WHERE deliveries.state != 'sent'
        """,
        (sop_uid, destination, error[:_MAX_ERROR], path),
    )
    return _attempts(conn, sop_uid, destination)


def requeue(conn: sqlite3.Connection, destination: str, sop_uid: str | None = None, now: float = 0.0) -> int:
    """Move dead-lettered rows of ``destination`` (one, or all) back to pending with zero attempts.

    Returns
    -------
    int
        Rows requeued.
    """
    sql = "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ? WHERE state = 'dead' AND destination = ?"
    args: tuple[object, ...] = (now, destination)
    if sop_uid is not None:
        sql += " AND sop_instance_uid = ?"
        args += (sop_uid,)
    return conn.execute(sql, args).rowcount


def due(conn: sqlite3.Connection, now: float) -> list[DueDelivery]:
    """Pending deliveries whose ``next_attempt_at`` is at or before ``now``, oldest first."""
    rows = conn.execute(
        "SELECT sop_instance_uid, destination, attempts, next_attempt_at, path FROM deliveries "
        "WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, sop_instance_uid",
        (now,),
    ).fetchall()
    return [DueDelivery(*row) for row in rows]


def _attempts(conn: sqlite3.Connection, sop_uid: str, destination: str) -> int:
    row = conn.execute(
        "SELECT attempts FROM deliveries WHERE sop_instance_uid = ? AND destination = ?", (sop_uid, destination)
    ).fetchone()
    return int(row[0]) if row else 0
