"""Jobs: list with filters and keyset pagination, one job by id or request UUID, retry.

A job is one model run on one completed series (see :mod:`dicom_node.jobs`).
The optional ``request_uuid`` and ``examination_id`` columns (added by the
invocations migration) are used only when the index has them.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from dicom_node.api.auth import require
from dicom_node.api.errors import ApiError
from dicom_node.api.schemas import UID_PATTERN, error_responses
from dicom_node.jobs import ops

log = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"])

JobState = Literal["queued", "validating", "decoding", "inferring", "writing", "delivering", "done", "failed",
                   "dead-letter"]
MAX_LIMIT = 500
_OPTIONAL = ("request_uuid", "examination_id")


class ResultObject(BaseModel):
    """One result object a job wrote."""

    sop_instance_uid: str
    kind: str


class Job(BaseModel):
    """One job."""

    id: str
    status: str
    model: str
    rule: str
    study_uid: str
    series_uid: str
    destinations: list[str]
    attempts: int
    created_at: float
    updated_at: float
    stage_times: dict[str, float] = Field(description="Seconds per stage: validate, decode, infer, write")
    reason: str | None = None
    details: Any = None
    results: list[ResultObject]
    request_uuid: str | None = None
    examination_id: str | None = None


class JobPage(BaseModel):
    """A page of jobs, newest first; ``next`` is the cursor of the next page (null at the end)."""

    jobs: list[Job]
    next: str | None


def columns(conn: sqlite3.Connection) -> set[str]:
    """Columns of the jobs table (the optional ones exist after the invocations migration)."""
    return {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}


def _json(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def to_job(row: sqlite3.Row) -> dict[str, Any]:
    """The API view of one ``jobs`` row."""
    keys = row.keys()
    result = _json(row["result"], {})
    return {
        "id": row["id"], "status": row["state"], "model": row["model"], "rule": row["rule"],
        "study_uid": row["study_instance_uid"], "series_uid": row["series_instance_uid"],
        "destinations": _json(row["destinations"], []), "attempts": row["attempts"],
        "created_at": row["created_at"], "updated_at": row["updated_at"],
        "stage_times": _json(row["stage_times"], {}), "reason": row["reason"], "details": _json(row["details"], None),
        "results": [{"sop_instance_uid": o["sop_instance_uid"], "kind": o["kind"]} for o in result.get("objects", [])],
        **{k: (row[k] if k in keys else None) for k in _OPTIONAL},
    }


def epoch(value: float | datetime | None) -> float | None:
    """Epoch seconds of a query time (a naive ISO 8601 time is UTC)."""
    if value is None or isinstance(value, float | int):
        return value
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


#: A page cursor: ``<created_at>_<job id>`` of the last job of the previous page. Any string of this
#: form is a position in the ordering, so every cursor the pattern admits is valid.
CURSOR_PATTERN = r"^[0-9]{1,20}(\.[0-9]{1,20})?_[A-Za-z0-9-]{1,64}$"


def _cursor(created_at: float, jid: str) -> str:
    return f"{created_at!r}_{jid}"


def _decode_cursor(cursor: str) -> tuple[float, str]:
    created_at, _, jid = cursor.partition("_")
    return float(created_at), jid


def _where(cols: set[str], filters: dict[str, Any]) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    for key, column in (("status", "state"), ("study_uid", "study_instance_uid"), ("model", "model"),
                        ("examination_id", "examination_id")):
        if filters.get(key) is None:
            continue
        if column not in cols:
            clauses.append("0")  # the column does not exist yet: nothing can match
            continue
        clauses.append(f"{column} = ?")
        args.append(filters[key])
    for key, op in (("since", ">="), ("until", "<")):
        if filters.get(key) is not None:
            clauses.append(f"created_at {op} ?")
            args.append(filters[key])
    return clauses, args


@router.get("/v1/jobs", response_model=JobPage, responses=error_responses(401, 403), summary="List jobs, newest first")
def list_jobs(
    request: Request,
    _principal: Annotated[Any, Depends(require("read"))],
    status: Annotated[JobState | None, Query()] = None,
    study_uid: Annotated[str | None, Query(max_length=64, pattern=UID_PATTERN)] = None,
    model: Annotated[str | None, Query(max_length=64)] = None,
    examination_id: Annotated[str | None, Query(max_length=128)] = None,
    since: Annotated[float | datetime | None, Query(description="Created at or after (epoch seconds or ISO 8601)")] = None,
    until: Annotated[float | datetime | None, Query(description="Created before (epoch seconds or ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    cursor: Annotated[str | None, Query(max_length=100, pattern=CURSOR_PATTERN, description="The 'next' of the previous page")] = None,
) -> dict[str, Any]:
    """Filtered jobs; page with ``cursor`` (stable while jobs are added) or ``offset``."""
    filters = {"status": status, "study_uid": study_uid, "model": model, "examination_id": examination_id,
               "since": epoch(since), "until": epoch(until)}
    conn = request.app.state.ctx.node.index.reader()
    try:
        clauses, args = _where(columns(conn), filters)
        if cursor:
            created_at, jid = _decode_cursor(cursor)
            clauses.append("(created_at < ? OR (created_at = ? AND id < ?))")
            args += [created_at, created_at, jid]
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        sql += " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
        rows = conn.execute(sql, (*args, limit + 1, offset)).fetchall()
    finally:
        conn.close()
    page = rows[:limit]
    more = len(rows) > limit
    return {"jobs": [to_job(r) for r in page], "next": _cursor(page[-1]["created_at"], page[-1]["id"]) if more else None}


def find_job(conn: sqlite3.Connection, key: str) -> sqlite3.Row | None:
    """A job by id, or by request UUID when that column exists."""
    row = conn.execute("SELECT * FROM jobs WHERE id = ?", (key,)).fetchone()
    if row is None and "request_uuid" in columns(conn):
        row = conn.execute("SELECT * FROM jobs WHERE request_uuid = ? ORDER BY created_at DESC LIMIT 1",
                           (key,)).fetchone()
    return row


def job_key() -> Any:
    """The job id / request UUID path parameter (a fresh FieldInfo per endpoint)."""
    return PathParam(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$", description="Job id or request UUID")


def _load_job(request: Request, job_id: str) -> Any:
    """The job row by id or request UUID; 404 when there is none."""
    conn = request.app.state.ctx.node.index.reader()
    try:
        row = find_job(conn, job_id)
    finally:
        conn.close()
    if row is None:
        raise ApiError(404, "not_found", "no job with this id or request UUID")
    return row


@router.get("/v1/jobs/{job_id}", response_model=Job, responses=error_responses(401, 403, 404),
            summary="One job by id or request UUID")
def get_job(request: Request, job_id: Annotated[str, job_key()], _principal: Annotated[Any, Depends(require("read"))]) -> dict[str, Any]:
    """The job, its stage times, failure reason and result objects."""
    return to_job(_load_job(request, job_id))


@router.post("/v1/jobs/{job_id}/retry", response_model=Job, responses=error_responses(401, 403, 404, 409),
             summary="Queue a failed or dead-lettered job again")
def retry_job(request: Request, job_id: Annotated[str, job_key()], _principal: Annotated[Any, Depends(require("submit"))]) -> dict[str, Any]:
    """Re-queue the job (``dicom-node jobs retry``); 409 unless it is failed or dead-lettered."""
    node = request.app.state.ctx.node
    row = _load_job(request, job_id)
    jid = row["id"]
    if not node.writer.run(lambda c: ops.retry(c, jid, time.time())):
        raise ApiError(409, "not_retryable", f"job is {row['state']}; only failed or dead-letter jobs can be retried")
    log.info("job retried via the API job=%s", jid)
    conn = node.index.reader()
    try:
        return to_job(conn.execute("SELECT * FROM jobs WHERE id = ?", (jid,)).fetchone())
    finally:
        conn.close()
