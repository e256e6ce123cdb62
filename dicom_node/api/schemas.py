"""Response models shared by the REST routers, so the OpenAPI document describes every answer.

Every error is ``{"error": {"code", "description"}}`` (see :mod:`dicom_node.api.errors`).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

#: A DICOM UID as a path or query parameter: digits and dots, at most 64 characters (PS3.5 9.1).
UID_PATTERN = r"^[0-9]{1,64}(\.[0-9]{1,64}){0,63}$"
_UID_RE = re.compile(UID_PATTERN)


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


def is_uid(value: str) -> bool:
    """True when ``value`` is a syntactically valid UID of at most 64 characters."""
    return len(value) <= 64 and _UID_RE.fullmatch(value) is not None
