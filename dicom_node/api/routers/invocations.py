"""``POST /v1/invocations`` (asynchronous, webhook) and ``GET /v1/invocations/{request_uuid}``.

The request is ``multipart/form-data`` with one ``image`` part (DICOM Part 10,
PNG, JPEG, TIFF or BMP, detected from its bytes) and headers:

- ``Webhook-Url`` (optional): where the result is POSTed, signed (see
  :mod:`dicom_node.invocations`); checked against SSRF now (400) and before each attempt;
- ``Examination-ID`` (optional): echoed back and stored, to find results by exam;
- ``Inference-Parameters`` (optional): a JSON object of model parameters; the
  single-quoted Python-literal form existing clients send (``{'threshold': 0.4}``)
  is accepted too, parsed with :func:`ast.literal_eval` (literals only, never evaluated code);
- ``Model-Name`` or the ``model`` query parameter (optional): default, the first
  segmentation model of the store by name.

The answer is 202 ``{"filename", "status": "sent", "request_uuid", "examination_id"}``.
:func:`accept_upload` is the one implementation: the Triton facade's ``POST /invocations``
(:mod:`dicom_node.api.routers.facade`) calls it too and answers as that facade documents.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from dicom_node.api.auth import Principal, require
from dicom_node.api.deps import ApiServices, ConfigDep, InvocationsDep, ServicesDep
from dicom_node.api.errors import ApiError
from dicom_node.api.inputs import InputRejected, decode_image, sniff, unsupported_reason
from dicom_node.api.routers.predict import get_predictor
from dicom_node.api.schemas import error_responses
from dicom_node.config import NodeConfig
from dicom_node.errors import DicomNodeError
from dicom_node.invocations import InvocationService, upload_path
from dicom_node.net.http import Outbound
from dicom_node.net.policy import OutboundRefused
from dicom_node.pixels.framing import walk_bytes
from dicom_node.registry import ModelRegistry
from dicom_node.staging import parse_meta
from inference.errors import ParameterError
from inference.spec import ModelSpec

log = logging.getLogger(__name__)

router = APIRouter(tags=["invocations"])

Submitter = Annotated[Principal, Depends(require("submit"))]
Reader = Annotated[Principal, Depends(require("read"))]

class InvocationAccepted(BaseModel):
    """202 answer of ``POST /v1/invocations``."""

    filename: str
    status: str
    request_uuid: str
    examination_id: str | None


class WebhookStatus(BaseModel):
    """Delivery of the result to the webhook."""

    state: str
    attempts: int
    next_attempt_at: float | None
    last_error: str | None


class Invocation(BaseModel):
    """One invocation: its state, its result (the webhook body once done) and its webhook."""

    request_uuid: str
    examination_id: str | None
    model: str
    filename: str | None
    state: str
    parameters: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    created_at: float
    updated_at: float
    webhook: WebhookStatus
    input_url: str | None = Field(None, description="Bucket invocations: the object or folder read (else null)")
    output_url: str | None = Field(None, description="Bucket invocations: the folder results are written to")


_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image"],
    "properties": {"image": {"type": "string", "format": "binary",
                             "description": "DICOM Part 10, PNG, JPEG, TIFF or BMP (detected from the bytes)"}},
}}}}}
_ACCEPT_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": InvocationAccepted, "description": "Queued; the result goes to the webhook"},
    **error_responses(401, 403, 404, 413, 415, 503),
}

#: Longest ``Inference-Parameters`` header accepted (the literal parser must not see huge input).
MAX_PARAMETERS_CHARS = 4096
_SCALARS = (bool, int, float, str, type(None))


def _json_safe(value: Any, depth: int = 0) -> bool:
    if isinstance(value, _SCALARS):
        return True
    if depth < 4 and isinstance(value, list):
        return all(_json_safe(v, depth + 1) for v in value)
    if depth < 4 and isinstance(value, dict):
        return all(isinstance(k, str) and _json_safe(v, depth + 1) for k, v in value.items())
    return False


def parse_parameters(text: str | None) -> dict[str, Any]:
    """Parse ``Inference-Parameters``: a JSON object, or the same with single quotes (Python literal).

    Raises
    ------
    ApiError
        400 when it is neither, too long, or not an object of plain values.
    """
    if not text or not text.strip():
        return {}
    if len(text) > MAX_PARAMETERS_CHARS:
        raise ApiError(400, "invalid_parameters", f"Inference-Parameters is longer than {MAX_PARAMETERS_CHARS} characters")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            raise ApiError(400, "invalid_parameters", "Inference-Parameters must be a JSON object, "
                           "e.g. {\"threshold\": 0.4} (single quotes are accepted)") from exc
    if value is None:  # "null": no parameters, as clients that serialise an unset dict send
        return {}
    if not isinstance(value, dict) or not _json_safe(value):
        raise ApiError(400, "invalid_parameters", "Inference-Parameters must be an object of numbers, strings, "
                       "booleans or lists, e.g. {\"threshold\": 0.4}")
    return value


def default_model(models: ModelRegistry, image: bool = False) -> str:
    """The first segmentation model of the store, by name, that takes this kind of input.

    Images (PNG, JPEG, ...) go to the first model with ``preprocessing.rescale = false``
    (it takes gray values), DICOM to the first that takes modality values; when none
    fits, the first segmentation model (which then answers why not).

    Raises
    ------
    ApiError
        404 when the store holds no segmentation model.
    """
    store = models.store()
    specs = [store.get(n).spec for n in store.names() if store.get(n).spec.task == "segmentation"]
    for spec in specs:
        if spec.preprocessing.rescale != image:
            return str(spec.name)
    if specs:
        return str(specs[0].name)
    raise ApiError(404, "model_not_found", "no segmentation model in the store; name one with Model-Name or ?model=")


def _store_upload(tmp_dir: Path, request_uuid: str, data: bytes) -> None:
    path = upload_path(tmp_dir, request_uuid)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


async def _read_image(request: Request, limit: int) -> tuple[str, bytes]:
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data with the file in a part named 'image'")
    try:
        form = await request.form(max_files=limit, max_fields=limit)
    except (ValueError, KeyError) as exc:
        raise ApiError(400, "invalid_request", f"the multipart body could not be parsed: {exc}") from exc
    image = form.get("image")
    if not isinstance(image, UploadFile):
        raise ApiError(400, "invalid_request", "the multipart body needs a file part named 'image'")
    return Path(image.filename or "image").name, await image.read()


def check_webhook(outbound: Outbound, url: str | None) -> None:
    if url is None:
        return
    try:
        outbound.check(url)
    except OutboundRefused as exc:
        raise ApiError(400, "webhook_refused", f"Webhook-Url refused: {exc}") from exc


@dataclass(frozen=True)
class InvocationHeaders:
    """The headers of an invocation request, as both path sets name them (``/v1/invocations``, ``/invocations``)."""

    webhook_url: str | None
    examination_id: str | None
    inference_parameters: str | None
    model: str | None


class UndecodableUpload(ApiError):
    """The upload is no image or DICOM file the node can decode: 415 with the reason on ``/v1/invocations``.

    The Triton facade's ``/invocations`` answers it with its documented text instead
    (:mod:`dicom_node.api.routers.facade`).
    """

    def __init__(self, description: str) -> None:
        super().__init__(415, "unsupported_media_type", description)


def check_parameters(spec: ModelSpec, params: dict[str, Any]) -> dict[str, Any]:
    """Validate caller parameters against the model's declared ``[parameters]`` (``engines/<model>/model.toml``).

    Returns
    -------
    dict
        Every declared parameter with its effective value (defaults filled in).

    Raises
    ------
    ApiError
        400 ``invalid_parameters`` naming every parameter the model does not declare (and
        the declared ones), or the first value of the wrong type or out of bounds.
    """
    unknown = sorted(set(params) - set(spec.parameters))
    if unknown:
        declared = ", ".join(sorted(spec.parameters)) or "none"
        raise ApiError(400, "invalid_parameters", f"model {spec.name!r} does not declare the Inference-Parameters "
                       f"{', '.join(repr(n) for n in unknown)} (declared: {declared})")
    try:
        return spec.resolve_parameters(params)
    except ParameterError as exc:
        raise ApiError(400, "invalid_parameters", str(exc)) from exc


def check_decodable(data: bytes, max_pixels: int, max_inflated: int) -> str:
    """The kind of an upload (``dicom``, ``png``, ...) once its bytes are known to decode.

    Images are decoded once here, so a truncated PNG is refused now rather than failing
    the queued invocation later; DICOM gets the element framing walk of
    :mod:`dicom_node.pixels.framing` (its pixels are decoded by the runner against the
    model's contract).

    Raises
    ------
    UndecodableUpload
        Neither a readable DICOM Part 10 header nor a decodable PNG, JPEG, TIFF or BMP.
    ApiError
        413 when the image has more than ``api.max_pixels`` pixels.
    """
    kind = sniff(data)
    if kind is None:
        raise UndecodableUpload(unsupported_reason(data))
    if kind == "dicom":
        # The framing walk every received instance passes before its ack (pydicom reads garbage leniently).
        try:
            parsed = parse_meta(data)
            if parsed is None or not parsed[0].get("transfer_syntax"):
                raise ValueError("the File Meta Information is cut short or names no Transfer Syntax UID")
            walk_bytes(memoryview(data)[parsed[1]:], parsed[0]["transfer_syntax"], max_inflated=max_inflated)
        except (ValueError, DicomNodeError) as exc:
            raise UndecodableUpload(f"the DICOM file is not well framed: {exc}") from exc
        return kind
    try:
        decode_image(data, max_pixels)
    except InputRejected as exc:
        if exc.code == "too_many_pixels":
            raise ApiError(413, exc.code, exc.description) from exc
        raise UndecodableUpload(exc.description) from exc
    return kind


async def accept_upload(request: Request, services: ApiServices, config: NodeConfig, service: InvocationService,
                        headers: InvocationHeaders) -> dict[str, Any]:
    """Check, store durably and queue one uploaded invocation: the one implementation of both path sets.

    Returns
    -------
    dict
        ``{"filename", "status": "sent", "request_uuid", "examination_id"}``.
    """
    params = parse_parameters(headers.inference_parameters)
    webhook = headers.webhook_url or None
    await run_in_threadpool(check_webhook, services.outbound, webhook)
    filename, data = await _read_image(request, config.api.max_multipart_parts)
    kind = await run_in_threadpool(check_decodable, data, config.api.max_pixels, config.scp.max_inflated_bytes)
    name = headers.model
    if not name:
        name = await run_in_threadpool(default_model, services.models, kind != "dicom")
    predictor = await run_in_threadpool(get_predictor, services.models, name)
    check_parameters(predictor.spec, params)
    request_uuid = str(uuid.uuid4())
    await run_in_threadpool(_store_upload, services.storage.spool.tmp, request_uuid, data)
    await run_in_threadpool(service.submit, {
        "id": request_uuid, "examination_id": headers.examination_id, "model": name, "parameters": json.dumps(params),
        "webhook_url": webhook, "filename": filename,
    })
    log.info("invocation queued id=%s model=%s webhook=%s", request_uuid, name, webhook is not None)
    return {"filename": filename, "status": "sent", "request_uuid": request_uuid,
            "examination_id": headers.examination_id}


#: ``Webhook-Url`` as documented: a string, never null (an absent header is no webhook), http(s) without
#: user info; the outbound policy checks it (400 webhook_refused naming the rule), including what a
#: pattern cannot say: the host must be public or in api.outbound_allowlist.
WebhookHeader = Annotated[str, Header(alias="Webhook-Url", description="Where the signed result is POSTed: an "
                                      "http(s) URL of a public host or one in api.outbound_allowlist",
                                      json_schema_extra={"maxLength": 2048,
                                                         "pattern": r"^(https?://[^\s/@?#]+(/[^\s]*)?)?$"})]
ExaminationHeader = Annotated[str | None, Header(alias="Examination-ID", max_length=256)]
ParametersHeader = Annotated[str | None, Header(alias="Inference-Parameters",
                                                description="JSON object of the model's declared parameters "
                                                            "(e.g. threshold, slice_idx); single quotes accepted")]
ModelHeader = Annotated[str | None, Header(alias="Model-Name")]


@router.post("/v1/invocations", status_code=202, summary="Asynchronous inference on one upload; the result goes to a webhook",
             responses=_ACCEPT_RESPONSES, response_class=JSONResponse, openapi_extra=_UPLOAD_BODY)
async def invoke(
    request: Request, services: ServicesDep, config: ConfigDep, service: InvocationsDep, _: Submitter,
    model: str | None = None, webhook_url: WebhookHeader = "", examination_id: ExaminationHeader = None,
    inference_parameters: ParametersHeader = None, model_name: ModelHeader = None,
) -> JSONResponse:
    """Accept an upload, queue it durably, answer 202 with the request UUID."""
    answer = await accept_upload(request, services, config, service, InvocationHeaders(
        webhook_url or None, examination_id, inference_parameters, model or model_name))
    return JSONResponse(answer, status_code=202)


@router.get("/v1/invocations/{request_uuid}", summary="State and result of one invocation", response_model=Invocation,
            responses=error_responses(401, 403, 404))
async def get_invocation(request_uuid: str, service: InvocationsDep, _: Reader) -> dict[str, Any]:
    """The invocation's state, result (the webhook body once done) and webhook delivery state."""
    row = await run_in_threadpool(service.get, request_uuid)
    if row is None:
        raise ApiError(404, "not_found", f"no invocation {request_uuid!r}")
    return {
        "request_uuid": row["id"], "examination_id": row["examination_id"], "model": row["model"],
        "filename": row["filename"], "state": row["state"], "parameters": json.loads(str(row["parameters"] or "{}")),
        "result": json.loads(str(row["result"])) if row["result"] else None, "error": row["error"],
        "created_at": row["created_at"], "updated_at": row["updated_at"],
        "webhook": {"state": row["webhook_state"], "attempts": row["webhook_attempts"],
                    "next_attempt_at": row["next_webhook_at"] if row["webhook_state"] == "pending" else None,
                    "last_error": row["webhook_error"]},
        "input_url": row.get("input_url"), "output_url": row.get("output_url"),
    }
