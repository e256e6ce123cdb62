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


def _required(schema: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Document ``keys`` as non-null and non-empty: the node treats null or "" as absent."""
    for key in keys:
        prop = schema["properties"][key]
        branches = [b for b in prop.pop("anyOf", []) if b.get("type") != "null"]
        if branches:
            prop.update(branches[0])
        prop.pop("default", None)
        if prop.get("type") == "string":
            prop["minLength"] = 1


def _dicom_source_schema(schema: dict[str, Any]) -> None:
    # The node needs the remote's name or its full address; {"dicom": {}} is refused with 400.
    _required(schema, ("node", "server_address", "server_port", "ae_title"))
    schema["anyOf"] = [{"required": ["node"]}, {"required": ["server_address", "server_port", "ae_title"]}]


def _one_source_schema(schema: dict[str, Any]) -> None:
    # Exactly one of "dicom" and "dicomweb", and not null.
    _required(schema, ("dicom", "dicomweb"))
    schema["minProperties"] = schema["maxProperties"] = 1


_LEVEL_HELP = ("PATIENT, STUDY, SERIES or IMAGE. The narrowest identifier given decides what is retrieved "
               "(sop_instance_uid, else series_uid, else study_uid, else patient_id); a broader level never "
               "widens it, a narrower one needs its identifier")


class DicomSessionSource(_SessionBody):
    """``{"dicom": ...}``: retrieve by C-GET/C-MOVE from a configured remote node (by key or by its exact address)."""

    model_config = {"extra": "forbid", "json_schema_extra": _dicom_source_schema}

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

    node: str = Field(min_length=1, max_length=64, description="Name of a [[sources.pollers]] entry of kind \"dicomweb\"")
    query_level: str | None = Field(None, description=_LEVEL_HELP)
    patient_id: str | None = Field(None, max_length=64)
    study_uid: str | None = Field(None, max_length=64)
    series_uid: str | None = Field(None, max_length=64)
    sop_instance_uid: str | None = Field(None, max_length=64, description="One instance (its series and study are "
                                         "looked up when not given)")


class SessionCreate(_SessionBody):
    """JSON body of ``PUT /v1/sessions``: exactly one of ``dicom`` or ``dicomweb``."""

    model_config = {"extra": "forbid", "json_schema_extra": _one_source_schema}

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
