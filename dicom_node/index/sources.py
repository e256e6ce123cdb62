"""Persisted poll state: per-source status, watermark, lease, and the seen set.

Two tables of the index (created with the rest of the schema in
:mod:`dicom_node.index.schema`):

- ``source_state``: one row per poller. ``state`` is ``idle``, ``polling``,
  ``backoff`` (until ``backoff_until``) or ``stopped`` (``reason`` says why, e.g.
  HTTP 401). ``watermark`` is the StudyDate window start (``YYYYMMDD``) of the
  last poll that scanned every matching study; the next window starts no later
  than it, so a node that was down for days still sees the studies that arrived
  meanwhile. ``lease_owner``/``lease_until`` make one process at a time poll a
  source (the service and ``dicom-node sources poll-now`` share the storage root).
- ``source_seen``: ``(source, sop_instance_uid)`` of every instance a source
  brought in, written only after the instance itself is durably stored (or
  refused for good), with its study and series so counts compare with the
  source's NumberOfStudyRelatedInstances / NumberOfSeriesRelatedInstances.
  Rows keep the study's StudyDate: when a complete scan moves the watermark, rows
  of studies dated before it are dropped, because no later query can match them
  (a poller without ``study_date_days`` keeps every row: each study stays in scope).

  A bucket source (``kind = "object"``, :mod:`dicom_node.sources.objects`) keeps one row per
  object version it handled above its watermark, so a restarted node (or another node on the
  same database) does not read it again: ``sop_instance_uid`` holds ``obj:`` and a digest of the
  object's key, ETag and size (never the key: uploaders put identifiers in keys), ``outcome``
  what became of it, and ``study_date`` its watermark mark (``<UTC time>|<key digest>``), so the
  same prune drops the rows a moved watermark covers (fixed-width marks compare as text).

Write functions take the :class:`~dicom_node.index.writer.IndexWriter`'s
connection (inside its transaction); read functions take any connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

IDLE, POLLING, BACKOFF, STOPPED = "idle", "polling", "backoff", "stopped"


@dataclass(frozen=True)
class Seen:
    """One instance a source brought in (``outcome``: stored, duplicate, replaced or refused)."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    outcome: str
    #: StudyDate (YYYYMMDD) as the source listed it; "" when it did not say (never pruned).
    study_date: str = ""


# -- writes (IndexWriter connection) --------------------------------------------------------------------------


def ensure(conn: sqlite3.Connection, source: str, kind: str, now: float) -> None:
    """Create the state row of ``source`` if missing."""
    conn.execute("INSERT OR IGNORE INTO source_state(source, kind, updated_at) VALUES (?, ?, ?)", (source, kind, now))


def reset_for_start(conn: sqlite3.Connection, source: str, kind: str, now: float) -> None:
    """At service start: poll soon (the configuration may have changed), except a source in backoff,
    which keeps waiting; a stopped source gets another chance (its credentials may have been fixed)."""
    ensure(conn, source, kind, now)
    conn.execute(
        """UPDATE source_state SET next_poll_at = CASE WHEN state = 'backoff' THEN next_poll_at ELSE ? END,
               reason = CASE WHEN state = 'stopped' THEN NULL ELSE reason END,
               state = CASE WHEN state = 'stopped' THEN 'idle' ELSE state END, updated_at = ?
           WHERE source = ?""",
        (now, now, source),
    )


def acquire(conn: sqlite3.Connection, source: str, owner: str, now: float, until: float) -> bool:
    """Take the poll lease of ``source`` (free, expired or already ours); True when taken."""
    cur = conn.execute(
        """UPDATE source_state SET lease_owner = ?, lease_until = ?, state = 'polling', last_poll_at = ?, updated_at = ?
           WHERE source = ? AND (lease_owner IS NULL OR lease_until < ? OR lease_owner = ?)""",
        (owner, until, now, now, source, now, owner),
    )
    return cur.rowcount == 1


def renew(conn: sqlite3.Connection, source: str, owner: str, until: float) -> bool:
    """Extend a held lease; False when it is no longer ours."""
    cur = conn.execute("UPDATE source_state SET lease_until = ? WHERE source = ? AND lease_owner = ?",
                       (until, source, owner))
    return cur.rowcount == 1


def release_dead(conn: sqlite3.Connection, owners: Iterable[str]) -> int:
    """Drop leases held by processes known to be gone; returns how many."""
    count = 0
    for owner in owners:
        count += conn.execute(
            "UPDATE source_state SET lease_owner = NULL, lease_until = NULL, state = CASE WHEN state = 'polling' "
            "THEN 'idle' ELSE state END WHERE lease_owner = ?", (owner,)).rowcount
    return count


def succeeded(conn: sqlite3.Connection, source: str, owner: str, now: float, next_at: float,
              retrieved: int, watermark: str | None) -> None:
    """A poll cycle finished: back to idle, counters updated, lease released."""
    conn.execute(
        """UPDATE source_state SET state = 'idle', reason = NULL, failures = 0, backoff_until = NULL,
               next_poll_at = ?, polls = polls + 1, retrieved = retrieved + ?, last_retrieved = ?,
               last_success_at = ?, watermark = COALESCE(?, watermark), lease_owner = NULL, lease_until = NULL,
               updated_at = ?
           WHERE source = ? AND (lease_owner = ? OR lease_owner IS NULL)""",
        (next_at, retrieved, retrieved, now, watermark, now, source, owner),
    )
    if watermark:
        prune_seen(conn, source, watermark)


def prune_seen(conn: sqlite3.Connection, source: str, watermark: str) -> int:
    """Drop seen rows of studies dated before ``watermark``: no later StudyDate window reaches them."""
    return conn.execute("DELETE FROM source_seen WHERE source = ? AND study_date != '' AND study_date < ?",
                        (source, watermark)).rowcount


def failed(conn: sqlite3.Connection, source: str, owner: str, now: float, state: str, error: str,
           until: float | None, retrieved: int) -> int:
    """A poll cycle failed: ``backoff`` until ``until`` or ``stopped``; returns the failure count."""
    conn.execute(
        """UPDATE source_state SET state = ?, reason = ?, failures = failures + 1, backoff_until = ?,
               next_poll_at = ?, polls = polls + 1, retrieved = retrieved + ?, last_retrieved = ?,
               last_error = ?, last_error_at = ?, lease_owner = NULL, lease_until = NULL, updated_at = ?
           WHERE source = ? AND (lease_owner = ? OR lease_owner IS NULL)""",
        (state, error if state == STOPPED else None, until if state == BACKOFF else None,
         until if until is not None else 1e18, retrieved, retrieved, error, now, now, source, owner),
    )
    row = conn.execute("SELECT failures FROM source_state WHERE source = ?", (source,)).fetchone()
    return int(row[0]) if row else 0


def note_error(conn: sqlite3.Connection, source: str, error: str, now: float) -> None:
    """Record an error that did not end the cycle (one series refused, for example)."""
    conn.execute("UPDATE source_state SET last_error = ?, last_error_at = ? WHERE source = ?", (error, now, source))


def mark_seen(conn: sqlite3.Connection, source: str, seen: Iterable[Seen], now: float) -> None:
    """Add instances to the seen set of ``source`` (after they were durably stored)."""
    conn.executemany(
        """INSERT OR REPLACE INTO source_seen(source, sop_instance_uid, study_instance_uid, series_instance_uid,
                                              outcome, seen_at, study_date) VALUES (?, ?, ?, ?, ?, ?, ?)""",
        [(source, s.sop_instance_uid, s.study_instance_uid, s.series_instance_uid, s.outcome, now, s.study_date)
         for s in seen],
    )


# -- reads ------------------------------------------------------------------------------------------------------


def failures(conn: sqlite3.Connection, source: str) -> int:
    """Consecutive failed cycles of ``source``."""
    row = conn.execute("SELECT failures FROM source_state WHERE source = ?", (source,)).fetchone()
    return int(row[0]) if row else 0


def study_seen(conn: sqlite3.Connection, source: str, study_uid: str) -> int:
    """How many instances of a study ``source`` already brought in."""
    row = conn.execute("SELECT COUNT(*) FROM source_seen WHERE source = ? AND study_instance_uid = ?",
                       (source, study_uid)).fetchone()
    return int(row[0])


def series_seen(conn: sqlite3.Connection, source: str, study_uid: str) -> dict[str, int]:
    """Series UID -> instances already brought in, for one study."""
    rows = conn.execute(
        """SELECT series_instance_uid, COUNT(*) FROM source_seen WHERE source = ? AND study_instance_uid = ?
           GROUP BY series_instance_uid""", (source, study_uid)).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def seen_uids(conn: sqlite3.Connection, source: str, study_uid: str, series_uid: str) -> set[str]:
    """SOP Instance UIDs of one series already brought in."""
    rows = conn.execute(
        "SELECT sop_instance_uid FROM source_seen WHERE source = ? AND study_instance_uid = ? AND series_instance_uid = ?",
        (source, study_uid, series_uid)).fetchall()
    return {r[0] for r in rows}


def seen_marks(conn: sqlite3.Connection, source: str) -> dict[str, str]:
    """``sop_instance_uid`` -> ``study_date`` of every seen row of ``source`` (a bucket source: object id -> mark)."""
    rows = conn.execute("SELECT sop_instance_uid, study_date FROM source_seen WHERE source = ?", (source,)).fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def row(conn: sqlite3.Connection, source: str) -> dict[str, Any] | None:
    """The state row of ``source`` with its seen count, or None."""
    found = conn.execute("SELECT * FROM source_state WHERE source = ?", (source,)).fetchone()
    if found is None:
        return None
    data = dict(found)
    data["seen"] = int(conn.execute("SELECT COUNT(*) FROM source_seen WHERE source = ?", (source,)).fetchone()[0])
    return data


def rows(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Every state row by source name, each with its seen count."""
    seen = {r[0]: int(r[1]) for r in conn.execute("SELECT source, COUNT(*) FROM source_seen GROUP BY source")}
    out: dict[str, dict[str, Any]] = {}
    for found in conn.execute("SELECT * FROM source_state"):
        data = dict(found)
        data["seen"] = seen.get(data["source"], 0)
        out[data["source"]] = data
    return out


def release(conn: sqlite3.Connection, source: str, owner: str, now: float) -> None:
    """Give the lease back without a verdict (the poll was cancelled): poll again at the next chance."""
    conn.execute(
        """UPDATE source_state SET state = CASE WHEN state = 'polling' THEN 'idle' ELSE state END, next_poll_at = ?,
               lease_owner = NULL, lease_until = NULL, updated_at = ? WHERE source = ? AND lease_owner = ?""",
        (now, now, source, owner),
    )


def lease_owners(conn: sqlite3.Connection) -> list[str]:
    """Every process id holding a poll lease (one per owner)."""
    return [str(r[0]) for r in conn.execute("SELECT DISTINCT lease_owner FROM source_state WHERE lease_owner IS NOT NULL")]
