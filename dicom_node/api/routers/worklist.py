"""Worklist feed: recent studies, newest first, with their AI status and top finding.

Priority of the top finding (highest first):

1. any failed or dead-lettered job of the study (``kind = "failed"``), so a
   reader never mistakes a failed analysis for a negative one;
2. else the classification finding with the highest probability;
3. else the segmentation finding with the largest volume in mL.

Probabilities and volumes are not compared with each other: a classification
finding outranks a segmentation finding.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from dicom_node.api.auth import Principal, require
from dicom_node.api.deps import StorageDep
from dicom_node.api.routers.results import findings, result_path
from dicom_node.api.schemas import error_responses
from dicom_node.index import worklist as worklist_queries
from dicom_node.spool import Spool

log = logging.getLogger(__name__)

router = APIRouter(tags=["worklist"])

_BUCKET = {"queued": "pending", "validating": "processing", "decoding": "processing", "inferring": "processing",
           "writing": "processing", "delivering": "processing", "done": "done", "failed": "failed",
           "dead-letter": "failed"}


class ModelStatus(BaseModel):
    """Job counts of one model on one study."""

    model: str
    pending: int = 0
    processing: int = 0
    done: int = 0
    failed: int = 0


class TopFinding(BaseModel):
    """The highest-priority finding of a study (see the module docstring)."""

    kind: str = Field(description="failed, classification or segmentation")
    model: str
    label: str | None = None
    probability: float | None = None
    volume_ml: float | None = None
    reason: str | None = None


class Study(BaseModel):
    """One worklist entry."""

    study_uid: str
    last_received_at: float
    series: int
    instances: int
    modalities: list[str]
    status: str = Field(description="received (no job), pending, processing, failed or done")
    models: list[ModelStatus]
    top_finding: TopFinding | None


class Worklist(BaseModel):
    """``GET /v1/worklist``."""

    studies: list[Study]


def _status(models: list[dict[str, Any]]) -> str:
    totals = {k: sum(m[k] for m in models) for k in ("pending", "processing", "done", "failed")}
    for state in ("processing", "pending", "failed", "done"):
        if totals[state]:
            return state
    return "received"


def _jobs(conn: sqlite3.Connection, study: str) -> tuple[list[dict[str, Any]], worklist_queries.Failure | None]:
    models: dict[str, dict[str, Any]] = {}
    for row in worklist_queries.job_counts(conn, study):
        entry = models.setdefault(row.model, {"model": row.model, "pending": 0, "processing": 0, "done": 0,
                                              "failed": 0})
        entry[_BUCKET.get(row.state, "processing")] += row.count
    return list(models.values()), worklist_queries.last_failure(conn, study)


def top_finding(spool: Spool, conn: sqlite3.Connection, study: str,
                failed: worklist_queries.Failure | None) -> dict[str, Any] | None:
    """The study's highest-priority finding (module docstring), or None."""
    if failed is not None:
        return {"kind": "failed", "model": failed.model, "reason": failed.reason}
    best: tuple[tuple[int, float], dict[str, Any]] | None = None
    for row in worklist_queries.sr_results(conn, study):
        for f in findings(result_path(spool, row.path)):
            if f["probability"] is not None:
                key, item = (2, f["probability"]), {"kind": "classification", "probability": f["probability"]}
            elif f["volume_ml"] is not None:
                key, item = (1, f["volume_ml"]), {"kind": "segmentation", "volume_ml": f["volume_ml"]}
            else:
                continue
            if best is None or key > best[0]:
                best = (key, {**item, "model": row.model, "label": f["label"]})
    return best[1] if best else None


@router.get("/v1/worklist", response_model=Worklist, responses=error_responses(401, 403),
            summary="Recent studies with their AI status and top finding")
def worklist(storage: StorageDep, _principal: Annotated[Principal, Depends(require("read"))],
             limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
    """Studies by most recent arrival, newest first."""
    conn = storage.index.reader()
    try:
        studies = []
        for row in worklist_queries.recent_studies(conn, limit):
            models, failed = _jobs(conn, row.study_uid)
            studies.append({
                "study_uid": row.study_uid, "last_received_at": row.last_received_at, "series": row.series,
                "instances": row.instances, "modalities": row.modalities,
                "status": _status(models), "models": models,
                "top_finding": top_finding(storage.spool, conn, row.study_uid, failed),
            })
    finally:
        conn.close()
    return {"studies": studies}
