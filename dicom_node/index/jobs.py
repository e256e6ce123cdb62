"""SQL on jobs, results and unrouted series (writes run by the index writer), and the reads of the jobs views.

Shared by the job workers, ``dicom-node jobs`` and ``/v1/jobs``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypedDict, cast

from dicom_node.index import deliveries, work


class Route(Protocol):
    """What a job is made of: a routing decision (:class:`dicom_node.routing.Route` has this shape).

    A protocol, so the persistence layer does not import the routing domain above it.
    """

    @property
    def rule(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def destinations(self) -> Sequence[str]: ...

ACTIVE = ("validating", "decoding", "inferring", "writing")
STATES = ("queued",) + ACTIVE + ("delivering", "done", "failed", "dead-letter")


def job_id(event_id: int, model: str) -> str:
    """Deterministic job id of one model run on one completion event."""
    return hashlib.sha256(f"{event_id}|{model}".encode()).hexdigest()[:24]


def pending_series_events(conn: sqlite3.Connection, limit: int = 100) -> list[sqlite3.Row]:
    """Unconsumed ``series_complete`` events, oldest first."""
    return conn.execute(
        "SELECT * FROM events WHERE consumed_at IS NULL AND kind = 'series_complete' ORDER BY id LIMIT ?", (limit,)
    ).fetchall()


def consume_event(
    conn: sqlite3.Connection, event: dict[str, Any], routes: Sequence[Route], facts: dict[str, Any], now: float
) -> list[str]:
    """Turn one completion event into jobs (or an unrouted record), exactly once.

    Returns
    -------
    list of str
        The ids of the jobs created.
    """
    cur = conn.execute("UPDATE events SET consumed_at = ? WHERE id = ? AND consumed_at IS NULL", (now, event["id"]))
    if cur.rowcount == 0:
        return []
    if not routes:
        conn.execute(
            "INSERT OR IGNORE INTO unrouted(event_id, series_instance_uid, facts, created_at) VALUES (?, ?, ?, ?)",
            (event["id"], event["series_instance_uid"], json.dumps(facts), now),
        )
        return []
    ids = []
    for r in routes:
        jid = job_id(int(event["id"]), r.model)
        conn.execute(
            """INSERT OR IGNORE INTO jobs(id, event_id, series_instance_uid, study_instance_uid, model, rule,
                   destinations, state, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)""",
            (jid, event["id"], event["series_instance_uid"], event["study_instance_uid"], r.model, r.rule,
             json.dumps(list(r.destinations)), now, now),
        )
        ids.append(jid)
    return ids


def begin(conn: sqlite3.Connection, jid: str, now: float) -> dict[str, Any] | None:
    """Start (or, after a crash, restart) producing a job: ``validating``, one more attempt; its row.

    Returns None, changing nothing, when the job is not queued or mid-stage (it ended, or is delivering).
    """
    cur = conn.execute(
        f"""UPDATE jobs SET state = 'validating', attempts = attempts + 1, next_attempt_at = 0, updated_at = ?
            WHERE id = ? AND state IN ('queued', {','.join('?' * len(ACTIVE))})""",
        (now, jid, *ACTIVE),
    )
    return job_row(conn, jid) if cur.rowcount == 1 else None


def advance(conn: sqlite3.Connection, jid: str, state: str, now: float, stage_seconds: dict[str, float] | None = None,
            result: dict[str, Any] | None = None) -> None:
    """Move a job to ``state``, recording stage timings and (once written) its result."""
    row = conn.execute("SELECT stage_times FROM jobs WHERE id = ?", (jid,)).fetchone()
    times = json.loads(row[0]) if row else {}
    times.update({k: round(v, 4) for k, v in (stage_seconds or {}).items()})
    conn.execute(
        "UPDATE jobs SET state = ?, updated_at = ?, stage_times = ?, result = COALESCE(?, result), next_attempt_at = 0 "
        "WHERE id = ?",
        (state, now, json.dumps(times), json.dumps(result) if result is not None else None, jid),
    )


def finish(conn: sqlite3.Connection, jid: str, state: str, now: float, reason: str | None = None,
           details: Any = None, next_attempt_at: float = 0.0) -> None:
    """End a job (done, failed, dead-letter) or park it for a later delivery attempt."""
    conn.execute(
        "UPDATE jobs SET state = ?, updated_at = ?, reason = ?, details = ?, next_attempt_at = ? WHERE id = ?",
        (state, now, reason, json.dumps(details) if details is not None else None, next_attempt_at, jid),
    )


def record_results(conn: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
    """Index written result objects (a re-run replaces the rows of the same UIDs)."""
    for row in rows:
        cols = ", ".join(row)
        conn.execute(f"INSERT OR REPLACE INTO results({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))


def retry(conn: sqlite3.Connection, jid: str, now: float) -> bool:
    """Re-queue a failed or dead-lettered job (``dicom-node jobs retry``).

    A dead-lettered job with results goes back to delivery, and its objects'
    dead ledger rows become pending again; objects already stored stay sent.
    """
    row = conn.execute("SELECT destinations, result FROM jobs WHERE id = ? AND state = 'dead-letter'", (jid,)).fetchone()
    if row is not None and row["result"]:
        for dest in json.loads(row["destinations"]):
            for obj in json.loads(row["result"]).get("objects", []):
                deliveries.requeue(conn, dest, obj["sop_instance_uid"], now)
    cur = conn.execute(
        """UPDATE jobs SET state = CASE WHEN result IS NOT NULL AND state = 'dead-letter' THEN 'delivering' ELSE 'queued' END,
                  reason = NULL, details = NULL, next_attempt_at = 0, updated_at = ?
           WHERE id = ? AND state IN ('failed', 'dead-letter')""",
        (now, jid),
    )
    if cur.rowcount != 1:
        return False
    # Its work goes back on the queue in the same transaction (a running node picks it up when due).
    state = conn.execute("SELECT state FROM jobs WHERE id = ?", (jid,)).fetchone()[0]
    work.enqueue(conn, "delivery" if state == "delivering" else "job", jid, now)
    return True


# --- Reads for the REST jobs resource ---------------------------------------------------------------------------

#: Every unit of work the REST jobs resource shows, in one row shape: routed series jobs, and REST
#: invocations (``dicom_node.invocations``: one model run on one upload, whose id is its request UUID).
#: An invocation has no study/series UIDs, routing rule, destinations, stage times or DICOM results;
#: a series job has no request UUID, Examination-ID or webhook. ``running`` shows as ``inferring``,
#: the stage it is in, so one status vocabulary filters both.
_ALL_JOBS = """
SELECT id, 'series' AS kind, state, model, rule, study_instance_uid, series_instance_uid, destinations, attempts,
       created_at, updated_at, stage_times, reason, details, result,
       NULL AS request_uuid, NULL AS examination_id, NULL AS webhook_state
  FROM jobs
UNION ALL
SELECT id, 'invocation', CASE state WHEN 'running' THEN 'inferring' ELSE state END, model, NULL, NULL, NULL,
       '[]', CASE state WHEN 'queued' THEN 0 ELSE 1 END, created_at, updated_at, '{}', error, NULL, NULL,
       id, examination_id, webhook_state
  FROM invocations
"""

#: Filter name -> column of :data:`_ALL_JOBS` compared for equality.
_EQUALS = {"status": "state", "study_uid": "study_instance_uid", "model": "model", "examination_id": "examination_id"}


@dataclass(frozen=True)
class JobFilter:
    """What ``GET /v1/jobs`` selects; None means "any".

    ``before`` is a keyset cursor: only jobs strictly after ``(created_at, id)`` in the
    newest-first order (the last job of the previous page).
    """

    status: str | None = None
    study_uid: str | None = None
    model: str | None = None
    examination_id: str | None = None
    since: float | None = None
    until: float | None = None
    before: tuple[float, str] | None = None


class JobView(TypedDict):
    """One row of :data:`_ALL_JOBS`: a series job or an invocation. JSON columns are still text."""

    id: str
    kind: Literal["series", "invocation"]
    state: str
    model: str
    rule: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    destinations: str
    attempts: int
    created_at: float
    updated_at: float
    stage_times: str
    reason: str | None
    details: str | None
    result: str | None
    request_uuid: str | None
    examination_id: str | None
    webhook_state: str | None


def _view(row: sqlite3.Row) -> JobView:
    return cast(JobView, dict(row))


def list_jobs(conn: sqlite3.Connection, query: JobFilter, limit: int, offset: int = 0) -> list[JobView]:
    """Series jobs and invocations matching ``query``, newest first (``created_at``, then ``id``, descending).

    Rows have the columns of :data:`_ALL_JOBS`; ask for one more than a page to know whether another follows.
    """
    clauses: list[str] = []
    args: list[object] = []
    for name, column in _EQUALS.items():
        value = getattr(query, name)
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    if query.since is not None:
        clauses.append("created_at >= ?")
        args.append(query.since)
    if query.until is not None:
        clauses.append("created_at < ?")
        args.append(query.until)
    if query.before is not None:
        clauses.append("(created_at < ? OR (created_at = ? AND id < ?))")
        args += [query.before[0], query.before[0], query.before[1]]
    # The derived table is named: PostgreSQL requires an alias on a subquery in FROM, SQLite takes one.
    sql = f"SELECT * FROM ({_ALL_JOBS}) AS all_jobs" + (" WHERE " + " AND ".join(clauses) if clauses else "")
    sql += " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
    return [_view(r) for r in conn.execute(sql, (*args, limit, offset))]


def find_job(conn: sqlite3.Connection, key: str) -> JobView | None:
    """One series job by its id, or one invocation by its request UUID (the invocation's id); None when neither."""
    row = conn.execute(f"SELECT * FROM ({_ALL_JOBS}) AS all_jobs WHERE id = ?", (key,)).fetchone()
    return None if row is None else _view(row)


def job_row(conn: sqlite3.Connection, jid: str) -> dict[str, Any] | None:
    """Every column of the ``jobs`` row with this id (JSON columns still text), for the job handler; or None."""
    row = conn.execute("SELECT * FROM jobs WHERE id = ?", (jid,)).fetchone()
    return None if row is None else dict(row)


def retry_now(conn: sqlite3.Connection, jid: str, now: float) -> bool:
    """:func:`retry` in its own write transaction, for a process that has no index writer (the CLI)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        ok = retry(conn, jid, now)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return ok
