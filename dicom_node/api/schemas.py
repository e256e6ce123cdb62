"""Response models shared by the REST routers, so the OpenAPI document describes every answer.

Every error is ``{"error": {"code", "description"}}`` (see :mod:`dicom_node.api.errors`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

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

