"""Retrieval sessions (Clara AIAA style): ``PUT /v1/sessions``, ``GET|DELETE /v1/sessions/{session_id}``.

``PUT /v1/sessions?expiry=SECONDS`` opens a session from

- a JSON body ``{"dicom": {"server_address", "server_port", "ae_title", "query_level",
  "patient_id", "study_uid", "series_uid", "sop_instance_uid"}}`` (or ``"node": "<remote name>"``):
  C-GET/C-MOVE from a configured ``[[sources.remotes]]`` entry; anything else is refused (403) unconnected;
- a JSON body ``{"dicomweb": {"node", "study_uid", "series_uid", "sop_instance_uid"}}``: WADO-RS
  from a configured ``[[sources.pollers]]`` entry of kind ``dicomweb``;
- a ``multipart/related; type="application/dicom"`` or ``multipart/form-data`` upload of Part 10
  files (bounded by ``api.max_body_bytes``, ``api.max_multipart_parts``, ``scp.max_dataset_bytes``).

A retrieval fetches what the narrowest identifier given names (an instance, a series, a
study, a patient's studies); ``query_level`` never widens it, and a series or instance
given without its study is located by C-FIND/QIDO-RS first (see
:func:`~dicom_node.sources.sessions_request.plan_of`).

Uploads answer 200 with status ``ready``; retrievals answer 202 with status
``retrieving`` and go on in the background (``GET`` shows ``ready`` or ``failed``
with the reason). ``expiry`` defaults to ``sources.session_expiry`` and may not
exceed ``sources.max_session_expiry``. ``POST /v1/models/{name}:predict`` takes
``{"session_id": ..., "series_uid": ...}`` as an instance.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from dicom_node.api.auth import Principal, require
from dicom_node.api.deps import ApiServices, ConfigDep, ServicesDep, SessionsDep
from dicom_node.api.errors import ApiError
from dicom_node.api.schemas import (
    SessionCreate,
    SessionCreated,
    SessionInfo,
    error_responses,
)
from dicom_node.config import NodeConfig
from dicom_node.config.sources import Poller, RemoteNode
from dicom_node.dicomweb.multipart import MultipartError, boundary_of
from dicom_node.errors import StorageError
from dicom_node.sources.sessions import SessionService
from dicom_node.sources.sessions_plan import SessionRefused
from dicom_node.sources.sessions_request import (
    make_source,
    plan_of,
    resolve_poller,
    resolve_remote,
)
from dicom_node.sources.sessions_sink import SessionSink
from dicom_node.sources.sink import NodeStorage
from dicom_node.spool import Spool
from dicom_node.staging import Part10Reader

log = logging.getLogger(__name__)

router = APIRouter(tags=["sessions"])

Submitter = Annotated[Principal, Depends(require("submit"))]
Reader = Annotated[Principal, Depends(require("read"))]

_CHUNK = 1 << 20


def _inline(value: Any, defs: dict[str, Any]) -> Any:
    """A JSON schema with its ``$ref`` s to ``$defs`` replaced by the definitions (OpenAPI has no ``$defs`` here)."""
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.rsplit("/", 1)[1]], defs)
        return {k: _inline(v, defs) for k, v in value.items()}
    if isinstance(value, list):
        return [_inline(v, defs) for v in value]
    return value


def _json_body_schema() -> dict[str, Any]:
    raw = SessionCreate.model_json_schema()
    schema = _inline(raw, raw.pop("$defs", {}))
    return {**schema, "minProperties": 1, "maxProperties": 1}


_PUT_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _json_body_schema()},
    'multipart/related; type="application/dicom"': {"schema": {"type": "string", "format": "binary"}},
    # Every part a DICOM file (with a filename): a form without one is refused with 400.
    "multipart/form-data": {"schema": {"type": "object", "minProperties": 1,
                                       "additionalProperties": {"type": "string", "format": "binary",
                                                                "contentMediaType": "application/dicom"}}},
}}}
_PUT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": SessionCreated, "description": "Upload stored; the session is ready"},
    202: {"model": SessionCreated, "description": "Retrieval started in the background"},
    **error_responses(401, 403, 404, 413, 415, 429, 503),
}


def _refused(exc: SessionRefused) -> ApiError:
    return ApiError(exc.status, exc.code, str(exc))


def _created(row: dict[str, Any], expiry: float, status_code: int) -> JSONResponse:
    return JSONResponse({"session_id": row["id"], "status": row["status"], "reason": row.get("reason"),
                         "expires_at": row["expires_at"], "expiry": expiry}, status_code=status_code)


async def _json_body(request: Request) -> SessionCreate:
    try:
        data = json.loads(await request.body() or b"null")
        body = SessionCreate.model_validate(data)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_request", f"the body is not valid JSON: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_request", "the body is not valid JSON: not UTF-8 text") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise ApiError(400, "invalid_request", f"{where}: {first.get('msg')}") from exc
    if (body.dicom is None) == (body.dicomweb is None):
        raise ApiError(400, "invalid_request", "the body needs exactly one of \"dicom\" or \"dicomweb\"")
    return body


async def _retrieve(request: Request, pull: NodeStorage, service: SessionService, expiry: float) -> JSONResponse:
    body = await _json_body(request)
    entry: RemoteNode | Poller
    try:
        if body.dicom is not None:
            fields = body.dicom.model_dump()
            kind, entry = "dicom", resolve_remote(pull.config, fields)
        else:
            assert body.dicomweb is not None
            fields = body.dicomweb.model_dump()
            kind, entry = "dicomweb", resolve_poller(pull.config, fields)
        plan = plan_of(fields)
        source = make_source(entry, pull)
    except SessionRefused as exc:
        log.info("session refused kind=%s code=%s", "dicom" if body.dicom else "dicomweb", exc.code)
        raise _refused(exc) from exc
    try:
        row = await run_in_threadpool(service.start_retrieval, kind, source, entry.name, plan, expiry)
    except SessionRefused as exc:
        raise _refused(exc) from exc
    return _created(row, expiry, 202)


async def _receive_related(request: Request, cfg: NodeConfig, spool: Spool, sink: SessionSink,
                           content_type: str) -> int:
    try:
        boundary = boundary_of(content_type)
    except MultipartError as exc:
        raise ApiError(exc.status, "unsupported_media_type" if exc.status == 415 else "invalid_request", str(exc)) from exc
    reader = Part10Reader(boundary, spool, cfg.api.max_multipart_parts, cfg.scp.max_dataset_bytes)
    parts, received = 0, 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > cfg.api.max_body_bytes:
                raise MultipartError(f"request body over the limit of {cfg.api.max_body_bytes} bytes", 413)
            reader.feed(chunk)
            for part in reader.take():
                parts += 1
                await run_in_threadpool(sink.store_staged, part)
        reader.close()
        for part in reader.take():
            parts += 1
            await run_in_threadpool(sink.store_staged, part)
    except MultipartError as exc:
        raise ApiError(exc.status, "too_large" if exc.status == 413 else "invalid_request", str(exc)) from exc
    finally:
        reader.abort()
    return parts


def _chunks(upload: UploadFile) -> Any:
    return iter(lambda: upload.file.read(_CHUNK), b"")


async def _receive_form(request: Request, limit: int, sink: SessionSink) -> int:
    try:
        form = await request.form(max_files=limit, max_fields=limit)
    except (ValueError, KeyError) as exc:
        raise ApiError(400, "invalid_request", f"the multipart body could not be parsed: {exc}") from exc
    parts = 0
    try:
        for _, value in form.multi_items():
            if isinstance(value, UploadFile):
                parts += 1
                await run_in_threadpool(sink.store_part10, _chunks(value))
    finally:
        await form.close()
    return parts


async def _upload(request: Request, services: ApiServices, cfg: NodeConfig, expiry: float,
                  content_type: str) -> JSONResponse:
    service = services.sessions
    row = await run_in_threadpool(service.open, "upload", "upload", {}, expiry)
    sink = service.sink(row["id"])
    done = False
    try:
        if content_type.lower().startswith("multipart/form-data"):
            parts = await _receive_form(request, cfg.api.max_multipart_parts, sink)
        else:
            parts = await _receive_related(request, cfg, services.storage.spool, sink, content_type)
        if not parts:
            raise ApiError(400, "invalid_request", "the multipart body holds no file")
        if not sink.ok_count:
            first = next((s.reason for s in sink.stored if s.reason), "unknown reason")
            raise ApiError(400, "no_dicom_stored", f"none of the {parts} uploaded part(s) could be stored; first: {first}")
        final = await run_in_threadpool(service.finish, row["id"], sink)
        done = True
    finally:
        if not done:
            await run_in_threadpool(service.delete, row["id"])
    if final is None:  # expired or deleted while the upload arrived
        raise ApiError(404, "not_found", f"session {row['id']} expired while the upload arrived")
    log.info("session upload id=%s parts=%d stored=%d", row["id"], parts, sink.ok_count)
    return _created(final, expiry, 200)


@router.put("/v1/sessions", summary="Open a retrieval session (DICOM C-GET/C-MOVE, DICOMweb WADO-RS, or an upload)",
            responses=_PUT_RESPONSES, response_class=JSONResponse, openapi_extra=_PUT_BODY)
async def create_session(
    request: Request, services: ServicesDep, config: ConfigDep, service: SessionsDep, _: Submitter,
    expiry: Annotated[float | None, Query(gt=0, description="Seconds until the session and its files are removed "
                                                  "(default sources.session_expiry, at most sources.max_session_expiry)")] = None,
) -> JSONResponse:
    """Open a session; uploads answer 200 (ready), retrievals 202 (retrieving in the background).

    Raises
    ------
    ApiError
        400 invalid body or expiry, 403 a node that is not configured, 413 over a limit,
        415 another media type, 429 too many retrievals running, 503 a source kind this build lacks.
    """
    try:
        seconds = service.expiry_for(expiry)
    except SessionRefused as exc:
        raise _refused(exc) from exc
    content_type = request.headers.get("content-type", "")
    main = content_type.split(";")[0].strip().lower()
    try:
        if main == "application/json":
            return await _retrieve(request, services.pull, service, seconds)
        if main in ("multipart/related", "multipart/form-data"):
            return await _upload(request, services, config, seconds, content_type)
    except StorageError as exc:
        log.error("session could not be stored error=%s", exc)
        raise ApiError(503, "storage_unavailable", "the session could not be stored; try again later") from exc
    raise ApiError(415, "unsupported_media_type", "send application/json ({\"dicom\": ...} or {\"dicomweb\": ...}), "
                   "multipart/related; type=\"application/dicom\", or multipart/form-data with DICOM files")


def _info(session: dict[str, Any]) -> dict[str, Any]:
    return {"session_id": session["id"], "kind": session["kind"], "source": session["source"],
            "status": session["status"], "reason": session["reason"], "created_at": session["created_at"],
            "expires_at": session["expires_at"], "instances": session["instances"], "series": session["series"]}


@router.get("/v1/sessions/{session_id}", summary="Status and series of a retrieval session", response_model=SessionInfo,
            responses=error_responses(401, 403, 404))
async def get_session(session_id: str, service: SessionsDep, _: Reader) -> dict[str, Any]:
    """The session's status (retrieving, ready, failed), reason, expiry and series."""
    session = await run_in_threadpool(service.get, session_id)
    if session is None:
        raise ApiError(404, "not_found", f"no session {session_id[:64]!r} (unknown, deleted or expired)")
    return _info(session)


@router.delete("/v1/sessions/{session_id}", summary="Close a retrieval session and remove its files",
               responses={200: {"description": "Closed"}, **error_responses(401, 403, 404)},
               response_class=JSONResponse)
async def delete_session(session_id: str, service: SessionsDep, _: Submitter) -> JSONResponse:
    """Cancel any retrieval, remove the session and its files."""
    if not await run_in_threadpool(service.delete, session_id):
        raise ApiError(404, "not_found", f"no session {session_id[:64]!r} (unknown, deleted or expired)")
    return JSONResponse({"session_id": session_id, "status": "closed"})
