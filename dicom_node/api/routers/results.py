"""Results: a study's result objects summarised as JSON, and one result object as DICOM.

The summary reads each TID 1500 Measurement Report (PS3.16) the node wrote:
one finding per Measurement Group (DCM 125007) named by its Tracking Identifier
(DCM 112039), with the segment volume (SCT 118565006, mL) of segmentation models
and the highest Probability (DCM 122157) of classification models.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import pydicom
from fastapi import APIRouter, Depends
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_node.api.auth import Principal, require
from dicom_node.api.deps import StorageDep
from dicom_node.api.errors import ApiError
from dicom_node.api.schemas import UID_PATTERN, error_responses, is_uid
from dicom_node.errors import StorageError
from dicom_node.index import results as result_queries
from dicom_node.services import Storage
from dicom_node.spool import Spool

log = logging.getLogger(__name__)

router = APIRouter(tags=["results"])

MEASUREMENT_GROUP = "125007"
TRACKING_IDENTIFIER = "112039"
VOLUME = "118565006"
PROBABILITY = "122157"
PRESENT, ABSENT = "52101004", "272519000"

def uid_param() -> Any:
    """A UID path parameter (a fresh FieldInfo each time: FastAPI binds one to one parameter)."""
    return PathParam(min_length=1, max_length=64, pattern=UID_PATTERN)


class Finding(BaseModel):
    """One measurement group of a TID 1500 report."""

    label: str
    volume_ml: float | None = Field(None, description="Segment volume in mL (segmentation models)")
    probability: float | None = Field(None, description="Highest probability over the images (classification)")
    present: bool | None = Field(None, description="The model's decision (classification)")


class ResultSummary(BaseModel):
    """One result object of a study."""

    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    kind: str
    model: str
    model_version: str
    job_id: str
    source_series_uid: str
    created_at: float
    findings: list[Finding] = Field(description="From the SR; empty for SEG objects")


class StudyResults(BaseModel):
    """``GET /v1/studies/{study_uid}/results``."""

    study_uid: str
    results: list[ResultSummary]


def _code(item: Dataset, keyword: str = "ConceptNameCodeSequence") -> str:
    seq = item.get(keyword)
    return str(seq[0].CodeValue) if seq else ""


def _finding(group: Dataset) -> dict[str, Any]:
    finding: dict[str, Any] = {"label": "", "volume_ml": None, "probability": None, "present": None}
    for item in group.get("ContentSequence", []):
        concept, kind = _code(item), item.get("ValueType")
        if kind == "TEXT" and concept == TRACKING_IDENTIFIER:
            finding["label"] = str(item.TextValue)
        elif kind == "NUM" and item.get("MeasuredValueSequence"):
            value = float(item.MeasuredValueSequence[0].NumericValue)
            if concept == VOLUME:
                finding["volume_ml"] = value
            elif concept == PROBABILITY:
                finding["probability"] = max(value, finding["probability"] or value)
        elif kind == "CODE" and _code(item, "ConceptCodeSequence") in (PRESENT, ABSENT):
            finding["present"] = _code(item, "ConceptCodeSequence") == PRESENT
    return finding


def _groups(item: Dataset) -> list[Dataset]:
    found = []
    for child in item.get("ContentSequence", []):
        if child.get("ValueType") == "CONTAINER" and _code(child) == MEASUREMENT_GROUP:
            found.append(child)
        elif child.get("ValueType") == "CONTAINER":
            found.extend(_groups(child))
    return found


@lru_cache(maxsize=1024)
def _findings_cached(path: str, _mtime_ns: int, _size: int) -> tuple[dict[str, Any], ...]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return tuple(_finding(group) for group in _groups(ds))


def findings(path: Path) -> list[dict[str, Any]]:
    """The findings of the TID 1500 report at ``path`` (cached by file identity); [] when unreadable."""
    try:
        st = os.stat(path)
        return [dict(f) for f in _findings_cached(str(path), st.st_mtime_ns, st.st_size)]
    except (OSError, InvalidDicomError, AttributeError, ValueError, TypeError, KeyError) as exc:
        log.warning("result report unreadable path=%s error=%s", path.name, type(exc).__name__)
        return []


def result_path(spool: Spool, relpath: str) -> Path:
    """Local path of a result file (fetched from ``storage.spool_url`` when another node wrote it).

    Anything outside the storage root is refused (404); a store that cannot be read answers 503.
    """
    path = (spool.root / relpath).resolve()
    if spool.root not in path.parents:
        raise ApiError(404, "not_found", "result file missing")
    try:
        return spool.local(relpath, result=True)
    except StorageError as exc:
        raise ApiError(503, "unavailable", str(exc)) from exc


def study_results(storage: Storage, study_uid: str) -> list[dict[str, Any]]:
    """Summaries of every result object of a study, oldest first."""
    conn = storage.index.reader()
    try:
        rows = result_queries.list_results(conn, study_uid)
    finally:
        conn.close()
    out = []
    for row in rows:
        item: dict[str, Any] = {k: getattr(row, k) for k in (
            "sop_instance_uid", "series_instance_uid", "sop_class_uid", "kind", "model", "model_version", "job_id",
            "source_series_uid", "created_at")}
        item["findings"] = findings(result_path(storage.spool, row.path)) if row.kind == "SR" else []
        out.append(item)
    return out


@router.get("/v1/studies/{study_uid}/results", response_model=StudyResults, responses=error_responses(401, 403),
            summary="Every result object of a study, with findings parsed from its SR")
def get_study_results(storage: StorageDep, study_uid: Annotated[str, uid_param()],
                      _principal: Annotated[Principal, Depends(require("read"))]) -> dict[str, Any]:
    """Result objects of the study (empty list when none yet)."""
    return {"study_uid": study_uid, "results": study_results(storage, study_uid)}


@router.get("/v1/results/{sop_instance_uid}", response_class=FileResponse,
            responses={200: {"content": {"application/dicom": {"schema": {"type": "string", "format": "binary"}}},
                             "description": "The DICOM Part 10 object"}, **error_responses(401, 403, 404)},
            summary="One result object (SEG or SR) as application/dicom")
def get_result(storage: StorageDep, sop_instance_uid: Annotated[str, uid_param()],
               _principal: Annotated[Principal, Depends(require("read"))]) -> FileResponse:
    """Stream the stored Part 10 file."""
    if not is_uid(sop_instance_uid):
        raise ApiError(400, "invalid_request", "not a valid UID")
    conn = storage.index.reader()
    try:
        row = result_queries.get_result(conn, sop_instance_uid)
    finally:
        conn.close()
    if row is None:
        raise ApiError(404, "not_found", "no result object with this SOP Instance UID")
    path = result_path(storage.spool, row.path)
    if not path.is_file():
        raise ApiError(404, "not_found", "result file missing")
    return FileResponse(path, media_type="application/dicom", filename=f"{sop_instance_uid}.dcm")
