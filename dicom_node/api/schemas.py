"""Response models shared by the REST routers, so the OpenAPI document describes every answer.

Every error is ``{"error": {"code", "description"}}`` (see :mod:`dicom_node.api.errors`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from dicom_node.validators import UID_PATTERN, is_uid  # noqa: F401 (re-exported for the routers)


class ErrorDetail(BaseModel):
    """The error code and a human-readable description."""

    code: str
    description: str


class ErrorResponse(BaseModel):
    """The one error shape of the API."""

    error: ErrorDetail


_DESCRIPTIONS = {
    400: "Invalid request", 401: "Credentials required or invalid", 403: "Scope or source address not allowed",
    404: "Not found", 406: "Not acceptable", 409: "Conflict", 411: "Length required", 413: "Request too large",
    415: "Unsupported media type", 500: "Internal error",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries documenting JSON errors for ``statuses`` (plus 400 and 500 always)."""
    codes = sorted({400, 500, *statuses})
    return {s: {"model": ErrorResponse, "description": _DESCRIPTIONS.get(s, "Error")} for s in codes}



# --- Retrieval sessions (dicom_node.api.routers.sessions) ---------------------------------------------------------

class _SessionBody(BaseModel):
    model_config = {"extra": "forbid"}


_LEVEL_HELP = ("PATIENT, STUDY, SERIES or IMAGE. The narrowest identifier given decides what is retrieved "
               "(sop_instance_uid, else series_uid, else study_uid, else patient_id); a broader level never "
               "widens it, a narrower one needs its identifier")


class DicomSessionSource(_SessionBody):
    """``{"dicom": ...}``: retrieve by C-GET/C-MOVE from a configured remote node (by key or by its exact address)."""

    node: str | None = Field(None, max_length=64, description="Name of a [[sources.remotes]] entry")
    server_address: str | None = Field(None, max_length=255)
    server_port: int | None = Field(None, ge=1, le=65535)
    ae_title: str | None = Field(None, max_length=16)
    query_level: str | None = Field(None, description=_LEVEL_HELP)
    patient_id: str | None = Field(None, max_length=64)
    study_uid: str | None = Field(None, max_length=64)
    series_uid: str | None = Field(None, max_length=64)
    sop_instance_uid: str | None = Field(None, max_length=64, description="One instance (its series and study are "
                                         "looked up when not given)")


class DicomwebSessionSource(_SessionBody):
    """``{"dicomweb": ...}``: retrieve by WADO-RS from a configured DICOMweb source."""

    node: str = Field(max_length=64, description="Name of a [[sources.pollers]] entry of kind \"dicomweb\"")
    query_level: str | None = Field(None, description=_LEVEL_HELP)
    patient_id: str | None = Field(None, max_length=64)
    study_uid: str | None = Field(None, max_length=64)
    series_uid: str | None = Field(None, max_length=64)
    sop_instance_uid: str | None = Field(None, max_length=64, description="One instance (its series and study are "
                                         "looked up when not given)")


class SessionCreate(_SessionBody):
    """JSON body of ``PUT /v1/sessions``: exactly one of ``dicom`` or ``dicomweb``."""

    dicom: DicomSessionSource | None = None
    dicomweb: DicomwebSessionSource | None = None


class SessionCreated(BaseModel):
    """Answer of ``PUT /v1/sessions``."""

    session_id: str
    status: str = Field(description="retrieving, ready or failed")
    reason: str | None = None
    expires_at: float
    expiry: float = Field(description="Seconds from creation to expiry")


class SessionSeries(BaseModel):
    """One series held by a session."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str | None
    instances: int


class SessionInfo(BaseModel):
    """Answer of ``GET /v1/sessions/{id}``."""

    session_id: str
    kind: str = Field(description="upload, dicom or dicomweb")
    source: str
    status: str = Field(description="retrieving, ready or failed")
    reason: str | None
    created_at: float
    expires_at: float
    instances: int
    series: list[SessionSeries]
