"""Queries of the ``work`` table: the one durable work queue (:mod:`dicom_node.workqueue`).

One row per unit of background work, keyed by ``(kind, ref)`` where ``ref`` is the id of the
domain row the work is about (a job id, a request UUID, a session id). States::

    queued -> running -> done | failed | dead-letter
                      -> retry -> running        (at next_attempt_at)
    running, lease expired (its process died) -> running again, counting an attempt,
                                                 or failed after max_attempts

Writes run inside the index writer's transaction, so a claim is atomic: two workers never take
the same row. On PostgreSQL several nodes share the table: a claim selects its row ``FOR UPDATE
SKIP LOCKED`` (a row another node's open transaction is claiming is passed over, never taken
twice), and a node's start does not expire leases, since the other nodes' running rows are alive;
a dead node's rows come back when their leases run out. Rows are returned as :class:`WorkRow`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Every state of a work row.
STATES = ("queued", "running", "retry", "done", "failed", "dead-letter")
#: States in which a row will still run.
OPEN = ("queued", "running", "retry")
#: States in which a row has ended.
TERMINAL = ("done", "failed", "dead-letter")


@dataclass(frozen=True)
class WorkRow:
    """One row of ``work`` (``stage_times`` decoded)."""

    id: int
    kind: str
    ref: str
    state: str
    attempts: int
    max_attempts: int
    next_attempt_at: float
    lease_until: float | None
    stage_times: dict[str, float]
    reason: str | None
    created_at: float
    updated_at: float


def _skip_locked(conn: sqlite3.Connection) -> str:
    """``FOR UPDATE SKIP LOCKED`` on PostgreSQL (the row lock that makes a claim exclusive across
    nodes, PostgreSQL's SELECT "The Locking Clause"); nothing on SQLite, whose single writer holds
    the whole database while it claims."""
    return " FOR UPDATE SKIP LOCKED" if getattr(conn, "dialect", "sqlite") == "postgresql" else ""


def _row(row: sqlite3.Row) -> WorkRow:
    lease = row["lease_until"]
    return WorkRow(
        id=int(row["id"]), kind=str(row["kind"]), ref=str(row["ref"]), state=str(row["state"]),
        attempts=int(row["attempts"]), max_attempts=int(row["max_attempts"]),
        next_attempt_at=float(row["next_attempt_at"]), lease_until=None if lease is None else float(lease),
        stage_times=json.loads(row["stage_times"]), reason=row["reason"],
        created_at=float(row["created_at"]), updated_at=float(row["updated_at"]),
    )


_COLUMNS = ("id, kind, ref, state, attempts, max_attempts, next_attempt_at, lease_until, stage_times, reason, "
            "created_at, updated_at")


#: ``max_attempts`` of a row queued by a process that does not know the kind's configuration (the CLI).
DEFAULT_MAX_ATTEMPTS = 3


def enqueue(conn: sqlite3.Connection, kind: str, ref: str, now: float, max_attempts: int | None = None,
            at: float | None = None) -> bool:
    """Queue ``(kind, ref)`` to run at ``at`` (default: now); True when it was queued.

    A row of the same kind and ref that has ended (done, failed, dead-letter) is queued again
    with its attempts reset (``dicom-node jobs retry``); one still open is left as it is, so
    enqueueing is idempotent. ``max_attempts`` None keeps the row's (a new row gets
    :data:`DEFAULT_MAX_ATTEMPTS`; the queue applies the configured value when it starts).
    """
    when = now if at is None else at
    cur = conn.execute(
        """INSERT INTO work(kind, ref, state, attempts, max_attempts, next_attempt_at, created_at, updated_at)
           VALUES (?, ?, 'queued', 0, ?, ?, ?, ?)
           ON CONFLICT(kind, ref) DO UPDATE SET state = 'queued', attempts = 0,
               max_attempts = COALESCE(?, work.max_attempts), next_attempt_at = excluded.next_attempt_at,
               lease_until = NULL, reason = NULL, stage_times = '{}', updated_at = excluded.updated_at
           WHERE work.state IN ('done', 'failed', 'dead-letter')""",
        (kind, ref, max_attempts or DEFAULT_MAX_ATTEMPTS, when, now, now, max_attempts),
    )
    return cur.rowcount == 1


def claim(conn: sqlite3.Connection, kinds: Sequence[str], now: float, lease: float) -> WorkRow | None:
    """Take the oldest due row of one of ``kinds`` (now ``running``, leased until ``now + lease``).

    Due: queued or retry with ``next_attempt_at <= now``, or running with its lease expired (its
    worker's process died; the claim counts one more attempt). Returns None when nothing is due.
    A row interrupted ``max_attempts`` times is not returned: see :func:`exhausted`.
    """
    if not kinds:
        return None
    marks = ",".join("?" * len(kinds))
    found = conn.execute(
        f"""SELECT {_COLUMNS} FROM work
            WHERE kind IN ({marks}) AND (
                  (state IN ('queued', 'retry') AND next_attempt_at <= ?)
               OR (state = 'running' AND lease_until IS NOT NULL AND lease_until < ?
                   AND attempts < max_attempts))
            ORDER BY next_attempt_at, id LIMIT 1{_skip_locked(conn)}""",
        (*kinds, now, now),
    ).fetchone()
    if found is None:
        return None
    row = _row(found)
    conn.execute("UPDATE work SET state = 'running', attempts = attempts + 1, lease_until = ?, updated_at = ? "
                 "WHERE id = ?", (now + lease, now, row.id))
    return claim_result(conn, row.id)


def claim_result(conn: sqlite3.Connection, work_id: int) -> WorkRow | None:
    """The row ``work_id`` as it is now."""
    found = conn.execute(f"SELECT {_COLUMNS} FROM work WHERE id = ?", (work_id,)).fetchone()
    return None if found is None else _row(found)


def exhausted(conn: sqlite3.Connection, kinds: Sequence[str], now: float) -> list[WorkRow]:
    """Running rows of ``kinds`` whose lease expired after ``max_attempts`` attempts, now ``failed``.

    Their process died that often while running them: they end instead of running again (a job
    that crashes the node must not crash it forever). The caller tells their handlers.
    """
    if not kinds:
        return []
    marks = ",".join("?" * len(kinds))
    rows = [_row(r) for r in conn.execute(
        f"""SELECT {_COLUMNS} FROM work WHERE kind IN ({marks}) AND state = 'running' AND lease_until IS NOT NULL
            AND lease_until < ? AND attempts >= max_attempts{_skip_locked(conn)}""", (*kinds, now))]
    for row in rows:
        conn.execute("UPDATE work SET state = 'failed', reason = ?, lease_until = NULL, updated_at = ? WHERE id = ?",
                     (f"interrupted {row.attempts} times", now, row.id))
    return rows


def finish(conn: sqlite3.Connection, work_id: int, state: str, now: float, reason: str | None = None,
           next_attempt_at: float = 0.0, stage_times: Mapping[str, float] | None = None) -> None:
    """End a running row (done, failed, dead-letter) or park it (retry at ``next_attempt_at``)."""
    if state not in STATES or state in ("queued", "running"):
        raise ValueError(f"not a state a run ends in: {state!r}")
    conn.execute(
        "UPDATE work SET state = ?, reason = ?, next_attempt_at = ?, lease_until = NULL, updated_at = ?, "
        "stage_times = COALESCE(?, stage_times) WHERE id = ?",
        (state, reason, next_attempt_at, now, None if stage_times is None else json.dumps(dict(stage_times)), work_id),
    )


def record_stage(conn: sqlite3.Connection, work_id: int, name: str, seconds: float) -> None:
    """Add one stage's duration to the row's ``stage_times`` (a stage run twice keeps the last)."""
    row = conn.execute("SELECT stage_times FROM work WHERE id = ?", (work_id,)).fetchone()
    if row is None:
        return
    times = json.loads(row[0])
    times[name] = round(seconds, 4)
    conn.execute("UPDATE work SET stage_times = ? WHERE id = ?", (json.dumps(times), work_id))


def renew(conn: sqlite3.Connection, ids: Sequence[int], until: float) -> None:
    """Extend the leases of running rows this process is still working on."""
    if ids:
        conn.execute(f"UPDATE work SET lease_until = ? WHERE state = 'running' AND id IN ({','.join('?' * len(ids))})",
                     (until, *ids))


def expire_leases(conn: sqlite3.Connection, now: float) -> int:
    """At start: every running row was left by a process that is gone; its lease ends now. Returns how many.

    Not on PostgreSQL: there the running rows may be other live nodes' (their leases are renewed), so
    a restarted node's own rows are taken again when their leases run out (``workqueue.lease``).
    """
    if getattr(conn, "dialect", "sqlite") == "postgresql":
        return 0
    return conn.execute("UPDATE work SET lease_until = ? WHERE state = 'running'", (now - 1.0,)).rowcount


def set_max_attempts(conn: sqlite3.Connection, kind: str, max_attempts: int) -> None:
    """Apply the configured ``max_attempts`` of ``kind`` to its open rows (rows an upgrade queued got the default)."""
    conn.execute(f"UPDATE work SET max_attempts = ? WHERE kind = ? AND state IN ({','.join('?' * len(OPEN))})",
                 (max_attempts, kind, *OPEN))


def get(conn: sqlite3.Connection, kind: str, ref: str) -> WorkRow | None:
    """The row of ``(kind, ref)``, or None."""
    found = conn.execute(f"SELECT {_COLUMNS} FROM work WHERE kind = ? AND ref = ?", (kind, ref)).fetchone()
    return None if found is None else _row(found)


def counts(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """Rows per ``(kind, state)``."""
    return {(str(k), str(s)): int(n) for k, s, n in conn.execute("SELECT kind, state, COUNT(*) FROM work GROUP BY 1, 2")}
