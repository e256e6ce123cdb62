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
- ``POST /bucket_invocations`` (Google Cloud Storage) and ``POST /bucket_invocations_azure_uae``
  (Azure Blob Storage): headers ``Input-Location`` (a file or a folder), ``Input-Bucket-Name``
  and ``Output-Bucket-Name`` (defaults: ``[facade]``, :mod:`dicom_node.config.facade`),
  ``Write-To-GCS`` (``Write-To-Azure`` too on the Azure path) and the headers of
  ``/invocations``; each file or DICOM folder becomes an invocation of the same service, run
  by :class:`dicom_node.api.bucket_runner.BucketRunner`. The answer is 200 ``{"filename",
  "status", "result_path", "request_uuid"}``, each a list when ``Input-Location`` is a folder.

No public copy of the facade's documents was found (searched: code, pages, docs and
issues corpora for ``bucket_invocations``, ``Input-Location``, ``Write-To-GCS``,
``Inference-Parameters`` + ``Webhook-Url`` + ``Examination-ID``); the shapes follow the
text of issue 16. Where the two facade documents differ, the later one is followed
(``Webhook-Url`` optional; see docs/api.md "Triton facade paths").
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from dicom_node.api.bucket_runner import is_image_key
from dicom_node.api.deps import ApiServices, ConfigDep, InvocationsDep, ServicesDep
from dicom_node.api.errors import ApiError
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
    check_decodable,
    check_parameters,
    check_webhook,
    default_model,
    parse_parameters,
)
from dicom_node.api.routers.predict import get_predictor
from dicom_node.api.schemas import ErrorResponse, error_responses
from dicom_node.config import NodeConfig
from dicom_node.config.facade import FacadeConfig
from dicom_node.errors import DicomNodeError
from dicom_node.invocations import InvocationService, upload_path
from dicom_node.objects import ObjectNotFound, ObjectRefused, ObjectStoreError, ObjectStores, ObjectTooLarge, ObjectUrl

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


# -- bucket endpoints ------------------------------------------------------------------------------------------------

#: Values of ``Write-To-GCS`` / ``Write-To-Azure``.
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no", "")


@dataclass(frozen=True)
class BucketHeaders:
    """The headers of a bucket invocation (both stores)."""

    location: str
    input_bucket: str | None
    output_bucket: str | None
    write: str | None
    invocation: InvocationHeaders


@dataclass(frozen=True)
class _Entry:
    """One invocation a bucket request makes: a file, or a folder of DICOM files."""

    filename: str
    input_url: ObjectUrl
    kind: str  # "image" or "dicom"


def _store_bucket(config: NodeConfig, scheme: str, given: str | None, output: bool) -> str:
    f = config.facade
    default = (f.gcs_output_bucket if output else f.gcs_input_bucket) if scheme == "gs" else (
        f.azure_output_container if output else f.azure_input_container)
    bucket = given or default
    if not bucket:
        header = "Output-Bucket-Name" if output else "Input-Bucket-Name"
        key = f"{'gcs' if scheme == 'gs' else 'azure'}_{'output' if output else 'input'}_" \
              f"{'bucket' if scheme == 'gs' else 'container'}"
        raise ApiError(400, "invalid_request", f"{header} is missing and [facade] {key} is not configured")
    return bucket


def _url(scheme: str, bucket: str, key: str, what: str) -> ObjectUrl:
    try:
        return ObjectUrl.parse(f"{scheme}://{bucket}/{key}")
    except ObjectRefused as exc:
        raise ApiError(400, "invalid_request", f"{what}: {exc}") from exc


def _source(config: NodeConfig, scheme: str, headers: BucketHeaders) -> ObjectUrl:
    """``Input-Location`` (a key, or a full URL of this endpoint's store) in ``Input-Bucket-Name``."""
    location = headers.location.strip()
    if "://" in location:
        if not location.startswith(f"{scheme}://"):
            raise ApiError(400, "invalid_request", f"Input-Location must be a key or a {scheme}:// URL on this "
                           "endpoint's store")
        try:
            return ObjectUrl.parse(location)
        except ObjectRefused as exc:
            raise ApiError(400, "invalid_request", f"Input-Location: {exc}") from exc
    key = location.lstrip("/")
    if not key:
        raise ApiError(400, "invalid_request", "Input-Location is empty: name a file or a folder in the bucket")
    return _url(scheme, _store_bucket(config, scheme, headers.input_bucket, output=False), key, "Input-Location")


def _write(headers: BucketHeaders, name: str) -> bool:
    value = (headers.write or "").strip().lower()
    if value not in _TRUE + _FALSE:
        raise ApiError(400, "invalid_request", f"{name} must be true or false, not {headers.write!r}")
    return value in _TRUE


def _plan(objects: ObjectStores, source: ObjectUrl, facade: FacadeConfig) -> list[_Entry] | None:
    """The folder's invocations (images one each, DICOM files one together); None when ``source`` is no folder.

    Raises
    ------
    ApiError
        400 when the folder holds more than ``facade.max_folder_objects`` objects, 413 when its
        DICOM files hold more than ``facade.max_folder_bytes``.
    """
    limit = facade.max_folder_objects
    listed = [o for o in objects.list(source, max_items=limit + 1) if not o.url.key.endswith("/")]
    if not listed:
        return None
    if len(listed) > limit:
        raise ApiError(400, "too_many_objects", f"Input-Location holds more than facade.max_folder_objects = "
                       f"{limit} objects; give the folder of one study or fewer images")
    dicom_bytes = sum(o.size for o in listed if not is_image_key(o.url.key))
    if dicom_bytes > facade.max_folder_bytes:
        raise ApiError(413, "payload_too_large", f"the DICOM files at Input-Location hold {dicom_bytes} bytes, more "
                       f"than facade.max_folder_bytes = {facade.max_folder_bytes}")
    images = sorted((o.url for o in listed if is_image_key(o.url.key)), key=lambda u: u.key)
    entries = [_Entry(u.key.rsplit("/", 1)[-1], u, "image") for u in images]
    if len(images) < len(listed):
        folder = ObjectUrl(source.scheme, source.bucket, source.key.rstrip("/") + "/")
        entries.append(_Entry(source.key.rstrip("/").rsplit("/", 1)[-1] + "/", folder, "dicom"))
    return entries


async def _bucket_invoke(request: Request, services: ApiServices, config: NodeConfig, service: InvocationService,
                         scheme: str, headers: BucketHeaders, write_name: str) -> JSONResponse:
    """Both bucket endpoints: one object (fetched now, as an upload) or a folder (listed now, fetched when run)."""
    inv = headers.invocation
    params = parse_parameters(inv.inference_parameters)
    await run_in_threadpool(check_webhook, services.outbound, inv.webhook_url)
    source = _source(config, scheme, headers)
    output_base = None
    if _write(headers, write_name):
        bucket = _store_bucket(config, scheme, headers.output_bucket, output=True)
        output_base = _url(scheme, bucket, config.facade.output_prefix, "Output-Bucket-Name")
    tmp = services.storage.spool.tmp
    single = str(uuid.uuid4())  # the request UUID of a single object, fetched now into its upload
    try:
        if output_base is not None:
            services.objects.check(output_base)
        entries = await run_in_threadpool(_plan, services.objects, source, config.facade)
        if entries is None:
            await run_in_threadpool(services.objects.download, source, upload_path(tmp, single),
                                    max_bytes=config.api.max_body_bytes)
    except ObjectRefused as exc:
        raise ApiError(403, "object_refused", str(exc)) from exc
    except ObjectNotFound as exc:
        raise ApiError(404, "not_found", f"nothing at Input-Location {source}: {exc}") from exc
    except ObjectTooLarge as exc:
        raise ApiError(413, "payload_too_large", str(exc)) from exc
    except ObjectStoreError as exc:
        raise ApiError(503 if exc.retryable else 502, "object_store", str(exc)) from exc
    folder = entries is not None
    try:
        if entries is None:
            entries = [await _fetched(services, config, single, source)]
        models = await _models(services, entries, params, inv.model)
        answers = [await _submit(service, entry, models[entry.kind], params, inv, output_base,
                                 str(uuid.uuid4()) if folder else single) for entry in entries]
    finally:
        if not folder and not (await run_in_threadpool(service.get, single)):
            upload_path(tmp, single).unlink(missing_ok=True)  # refused or not queued: no upload left behind
    if not folder:
        return JSONResponse(answers[0], status_code=200)
    return JSONResponse({k: [a[k] for a in answers] for k in ANSWER_FIELDS}, status_code=200)


async def _models(services: ApiServices, entries: list[_Entry], params: dict[str, Any],
                  named: str | None) -> dict[str, str]:
    """The model of each kind of entry, its parameters checked, before anything is queued (all or nothing)."""
    models: dict[str, str] = {}
    for kind in sorted({e.kind for e in entries}):
        name: str = named if named else await run_in_threadpool(default_model, services.models, kind == "image")
        predictor = await run_in_threadpool(get_predictor, services.models, name)
        check_parameters(predictor.spec, params)
        models[kind] = name
    return models


async def _fetched(services: ApiServices, config: NodeConfig, request_uuid: str, source: ObjectUrl) -> _Entry:
    """The single object fetched into the upload: refused now, as an upload would be, when it does not decode."""
    data = await run_in_threadpool(upload_path(services.storage.spool.tmp, request_uuid).read_bytes)
    kind = await run_in_threadpool(check_decodable, data, config.api.max_pixels, config.scp.max_inflated_bytes)
    return _Entry(source.key.rsplit("/", 1)[-1], source, "dicom" if kind == "dicom" else "image")


async def _submit(service: InvocationService, entry: _Entry, model: str, params: dict[str, Any],
                  inv: InvocationHeaders, output_base: ObjectUrl | None, rid: str) -> dict[str, Any]:
    output = output_base.child(rid) if output_base is not None else None
    try:
        await run_in_threadpool(service.submit, {
            "id": rid, "examination_id": inv.examination_id, "model": model, "parameters": json.dumps(params),
            "webhook_url": inv.webhook_url, "filename": entry.filename, "input_url": str(entry.input_url),
            "output_url": str(output) if output is not None else None,
        })
    except DicomNodeError as exc:
        # Answered per file as the facade documents ("error"); the reason is the node's, in its log.
        log.error("bucket invocation not queued error=%s", exc)
        return {"filename": entry.filename, "status": "error", "result_path": None, "request_uuid": None}
    log.info("bucket invocation queued id=%s model=%s kind=%s", rid, model, entry.kind)
    return {"filename": entry.filename, "status": "sent", "result_path": f"{output}/" if output else None,
            "request_uuid": rid}


class BucketInvocationAnswer(BaseModel):
    """200 answer of the bucket endpoints: scalars for one file, lists (one per invocation) for a folder."""

    filename: str | list[str]
    status: str | list[str] = Field(description='"sent" (queued) or "error" (not queued)')
    result_path: str | None | list[str | None] = Field(
        description="The folder the results are written to (Write-To-GCS / Write-To-Azure true), else null")
    request_uuid: str | None | list[str | None]


ANSWER_FIELDS = tuple(BucketInvocationAnswer.model_fields)
_BUCKET_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": BucketInvocationAnswer, "description": "Queued; results go to the output bucket and the webhook"},
    **error_responses(401, 403, 404, 413, 415, 502, 503),
}
InputLocation = Annotated[str, Header(alias="Input-Location", min_length=1, max_length=1024,
                                      description="A file or a folder in the input bucket (a key, or a full URL "
                                                  "of this endpoint's store)")]
InputBucket = Annotated[str | None, Header(alias="Input-Bucket-Name", max_length=63,
                                           description="Default: [facade] *_input_bucket / *_input_container")]
OutputBucket = Annotated[str | None, Header(alias="Output-Bucket-Name", max_length=63,
                                            description="Default: [facade] *_output_bucket / *_output_container")]
WriteGcs = Annotated[str | None, Header(alias="Write-To-GCS", max_length=8,
                                        description="true: write the results to the output bucket (default false)")]
WriteAzure = Annotated[str | None, Header(alias="Write-To-Azure", max_length=8,
                                          description="As Write-To-GCS, on the Azure endpoint (either is accepted)")]


@router.post("/bucket_invocations", summary="Triton facade: invocations on a file or folder in Google Cloud Storage",
             responses=_BUCKET_RESPONSES, response_class=JSONResponse)
async def bucket_invocations(
    request: Request, services: ServicesDep, config: ConfigDep, service: InvocationsDep, _: Submitter,
    input_location: InputLocation, input_bucket: InputBucket = None, output_bucket: OutputBucket = None,
    write_to_gcs: WriteGcs = None, webhook_url: WebhookHeader = "", examination_id: ExaminationHeader = None,
    inference_parameters: ParametersHeader = None, model_name: ModelHeader = None, model: str | None = None,
) -> JSONResponse:
    """Queue one invocation per image, or one for a folder of DICOM files, read from GCS."""
    return await _bucket_invoke(request, services, config, service, "gs", BucketHeaders(
        input_location, input_bucket, output_bucket, write_to_gcs,
        InvocationHeaders(webhook_url or None, examination_id, inference_parameters, model or model_name)),
        "Write-To-GCS")


@router.post("/bucket_invocations_azure_uae", responses=_BUCKET_RESPONSES, response_class=JSONResponse,
             summary="Triton facade: invocations on a file or folder in Azure Blob Storage")
async def bucket_invocations_azure(
    request: Request, services: ServicesDep, config: ConfigDep, service: InvocationsDep, _: Submitter,
    input_location: InputLocation, input_bucket: InputBucket = None, output_bucket: OutputBucket = None,
    write_to_azure: WriteAzure = None, write_to_gcs: WriteGcs = None, webhook_url: WebhookHeader = "",
    examination_id: ExaminationHeader = None, inference_parameters: ParametersHeader = None,
    model_name: ModelHeader = None, model: str | None = None,
) -> JSONResponse:
    """As ``/bucket_invocations``, on Azure Blob Storage containers."""
    write = write_to_azure if write_to_azure is not None else write_to_gcs
    return await _bucket_invoke(request, services, config, service, "az", BucketHeaders(
        input_location, input_bucket, output_bucket, write,
        InvocationHeaders(webhook_url or None, examination_id, inference_parameters, model or model_name)),
        "Write-To-Azure")
