"""Jobs: list with filters and keyset pagination, one job by id or request UUID, retry.

A job is one model run: on one completed series (``kind: "series"``, see
:mod:`dicom_node.jobs`), or on one upload posted to ``/v1/invocations``
(``kind: "invocation"``, see :mod:`dicom_node.api.webhooks`), whose job id is
its request UUID and which carries its Examination-ID. The SQL is in
:func:`dicom_node.index.jobs.list_jobs` and :func:`dicom_node.index.jobs.find_job`.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from dicom_node.api.auth import Principal, require
from dicom_node.api.deps import StorageDep
from dicom_node.api.errors import ApiError
from dicom_node.api.schemas import UID_PATTERN, error_responses
from dicom_node.index import jobs as ops
from dicom_node.services import Storage

log = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"])

JobState = Literal["queued", "validating", "decoding", "inferring", "writing", "delivering", "done", "failed",
                   "dead-letter"]
MAX_LIMIT = 500


class ResultObject(BaseModel):
    """One result object a job wrote."""

    sop_instance_uid: str
    kind: str


class Job(BaseModel):
    """One job."""

    id: str = Field(description="Job id; for an invocation, its request UUID")
    kind: Literal["series", "invocation"] = Field(description="A routed series, or an upload to /v1/invocations")
    status: str
    model: str
    rule: str | None = Field(description="The routing rule (null for an invocation)")
    study_uid: str | None = Field(description="Study Instance UID (null for an invocation)")
    series_uid: str | None = Field(description="Series Instance UID (null for an invocation)")
    destinations: list[str]
    attempts: int
    created_at: float
    updated_at: float
    stage_times: dict[str, float] = Field(description="Seconds per stage: validate, decode, infer, write")
    reason: str | None = None
    details: Any = None
    results: list[ResultObject]
    request_uuid: str | None = Field(None, description="The invocation's request UUID (null for a series job)")
    examination_id: str | None = Field(None, description="The invocation's Examination-ID header")
    webhook_state: str | None = Field(None, description="The invocation's webhook delivery (see /v1/invocations/{id})")


class JobPage(BaseModel):
    """A page of jobs, newest first; ``next`` is the cursor of the next page (null at the end)."""

    jobs: list[Job]
    next: str | None


def _json(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def to_job(row: ops.JobView) -> dict[str, Any]:
    """The API view of one row of :func:`dicom_node.index.jobs.list_jobs` (a series job or an invocation)."""
    result = _json(row["result"], {})
    return {
        "id": row["id"], "kind": row["kind"], "status": row["state"], "model": row["model"], "rule": row["rule"],
        "study_uid": row["study_instance_uid"], "series_uid": row["series_instance_uid"],
        "destinations": _json(row["destinations"], []), "attempts": row["attempts"],
        "created_at": row["created_at"], "updated_at": row["updated_at"],
        "stage_times": _json(row["stage_times"], {}), "reason": row["reason"], "details": _json(row["details"], None),
        "results": [{"sop_instance_uid": o["sop_instance_uid"], "kind": o["kind"]} for o in result.get("objects", [])],
        "request_uuid": row["request_uuid"], "examination_id": row["examination_id"],
        "webhook_state": row["webhook_state"],
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


@router.get("/v1/jobs", response_model=JobPage, responses=error_responses(401, 403), summary="List jobs, newest first")
def list_jobs(
    storage: StorageDep,
    _principal: Annotated[Principal, Depends(require("read"))],
    status: Annotated[JobState | None, Query()] = None,
    study_uid: Annotated[str | None, Query(max_length=64, pattern=UID_PATTERN)] = None,
    model: Annotated[str | None, Query(max_length=64)] = None,
    examination_id: Annotated[str | None, Query(max_length=256, description="Invocations posted with this Examination-ID")] = None,
    since: Annotated[float | datetime | None, Query(description="Created at or after (epoch seconds or ISO 8601)")] = None,
    until: Annotated[float | datetime | None, Query(description="Created before (epoch seconds or ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    cursor: Annotated[str | None, Query(max_length=100, pattern=CURSOR_PATTERN, description="The 'next' of the previous page")] = None,
) -> dict[str, Any]:
    """Filtered jobs (series jobs and invocations); page with ``cursor`` (stable while jobs are added) or ``offset``."""
    query = ops.JobFilter(status=status, study_uid=study_uid, model=model, examination_id=examination_id,
                          since=epoch(since), until=epoch(until), before=_decode_cursor(cursor) if cursor else None)
    conn = storage.index.reader()
    try:
        rows = ops.list_jobs(conn, query, limit + 1, offset)
    finally:
        conn.close()
    page = rows[:limit]
    more = len(rows) > limit
    return {"jobs": [to_job(r) for r in page], "next": _cursor(page[-1]["created_at"], page[-1]["id"]) if more else None}


def job_key() -> Any:
    """The job id / request UUID path parameter (a fresh FieldInfo per endpoint)."""
    return PathParam(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$", description="Job id or request UUID")


def _load_job(storage: Storage, job_id: str) -> ops.JobView:
    """The job row by id or request UUID; 404 when there is none."""
    conn = storage.index.reader()
    try:
        row = ops.find_job(conn, job_id)
    finally:
        conn.close()
    if row is None:
        raise ApiError(404, "not_found", "no job with this id or request UUID")
    return row


@router.get("/v1/jobs/{job_id}", response_model=Job, responses=error_responses(401, 403, 404),
            summary="One job by id or request UUID")
def get_job(storage: StorageDep, job_id: Annotated[str, job_key()],
            _principal: Annotated[Principal, Depends(require("read"))]) -> dict[str, Any]:
    """The job, its stage times, failure reason and result objects; an invocation is found by its request UUID."""
    return to_job(_load_job(storage, job_id))


@router.post("/v1/jobs/{job_id}/retry", response_model=Job, responses=error_responses(401, 403, 404, 409),
             summary="Queue a failed or dead-lettered job again")
def retry_job(storage: StorageDep, job_id: Annotated[str, job_key()],
              _principal: Annotated[Principal, Depends(require("submit"))]) -> dict[str, Any]:
    """Re-queue the job (``dicom-node jobs retry``); 409 unless it is failed or dead-lettered."""
    row = _load_job(storage, job_id)
    jid = row["id"]
    if row["kind"] == "invocation":
        raise ApiError(409, "not_retryable", "an invocation is not retried; POST the upload to /v1/invocations again")
    if not storage.writer.run(lambda c: ops.retry(c, jid, time.time())):
        raise ApiError(409, "not_retryable", f"job is {row['state']}; only failed or dead-letter jobs can be retried")
    log.info("job retried via the API job=%s", jid)
    return to_job(_load_job(storage, jid))
