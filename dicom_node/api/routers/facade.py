"""The Triton facade's documented paths, served verbatim next to the node's own (issue 16).

Users migrating from the FastAPI facade in front of Triton call these paths unchanged;
each runs on the same implementation as the node's path for the same thing:

- ``GET /ping``: :mod:`dicom_node.api.routers.health` (``{"status": "ok"}``).
- ``POST /invocations``: multipart ``image`` with headers ``Inference-Parameters``,
  ``Webhook-Url``, ``Examination-ID``; the same checks and queue as ``POST /v1/invocations``
  (:func:`dicom_node.api.routers.invocations.accept_upload`), answered as the facade
  documents it: **200** (not 202) ``{"filename", "status": "sent", "request_uuid",
  "examination_id"}``, and an upload that is no decodable image or DICOM file gets
  **400** with the plain text ``Cannot decode image data`` (not the node's JSON error).
  Every other refusal (parameters, webhook, size) is the node's JSON error.

No public copy of the facade's documents was found (searched: code, pages, docs and
issues corpora for ``bucket_invocations``, ``Input-Location``, ``Write-To-GCS``,
``Inference-Parameters`` + ``Webhook-Url`` + ``Examination-ID``); the shapes follow the
text of issue 16. Where the two facade documents differ, the later one is followed
(``Webhook-Url`` optional; see README "Triton facade paths").
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from dicom_node.api.deps import ConfigDep, InvocationsDep, ServicesDep
from dicom_node.api.routers.invocations import (
    _ACCEPT_RESPONSES,
    _UPLOAD_BODY,
    ExaminationHeader,
    InvocationAccepted,
    InvocationHeaders,
    ModelHeader,
    ParametersHeader,
    Submitter,
    UndecodableUpload,
    WebhookHeader,
    accept_upload,
)
from dicom_node.api.schemas import ErrorResponse

log = logging.getLogger(__name__)

router = APIRouter(tags=["triton facade"])

#: The facade's documented answer to an upload it cannot decode (text, not JSON).
UNDECODABLE_TEXT = "Cannot decode image data"

_FACADE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **{k: v for k, v in _ACCEPT_RESPONSES.items() if k != 202},
    200: {"model": InvocationAccepted, "description": "Queued; the result goes to the webhook (the facade's 200)"},
    400: {"model": ErrorResponse, "description": f"'{UNDECODABLE_TEXT}' (text/plain) for an upload that is no "
          "decodable image or DICOM file; a JSON error for a bad header",
          "content": {"text/plain": {"schema": {"type": "string", "example": UNDECODABLE_TEXT}}}},
}


@router.post("/invocations", summary="Triton facade: asynchronous inference on one upload (as POST /v1/invocations)",
             responses=_FACADE_RESPONSES, response_class=JSONResponse, openapi_extra=_UPLOAD_BODY)
async def facade_invoke(
    request: Request, services: ServicesDep, config: ConfigDep, service: InvocationsDep, _: Submitter,
    webhook_url: WebhookHeader = "", examination_id: ExaminationHeader = None,
    inference_parameters: ParametersHeader = None, model_name: ModelHeader = None, model: str | None = None,
) -> Response:
    """Accept an upload exactly as ``POST /v1/invocations`` does; answer as the facade documents (200)."""
    try:
        answer = await accept_upload(request, services, config, service, InvocationHeaders(
            webhook_url or None, examination_id, inference_parameters, model or model_name))
    except UndecodableUpload as exc:
        log.info("facade invocation refused: undecodable upload (%s)", exc.description)
        return PlainTextResponse(UNDECODABLE_TEXT, status_code=400)
    return JSONResponse(answer, status_code=200)
