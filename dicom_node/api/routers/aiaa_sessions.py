"""Clara AIAA sessions, verbatim: ``PUT /session/?expiry=``, ``GET|DELETE /session/{session_id}``.

The AIAA server's session API (Clara Train "AIAA Server APIs",
https://docs.nvidia.com/clara/tlt-mi/aiaa/server_apis.html; the client that calls it,
https://github.com/NVIDIA/ai-assisted-annotation-client/blob/master/py_client/client_api.py,
``create_session``/``get_session``/``close_session``) keeps an image on the server so that
later inference calls send a ``session_id`` instead of the image. A session is made from

- a multipart upload, field ``image``: a NIfTI file (``.nii``/``.nii.gz``), DICOM files or a zip of them;
- ``{"dicom": {"server_address", "server_port", "ae_title", "query_level", "patient_id",
  "study_uid", "series_uid"}}``: C-GET from a configured ``[[sources.remotes]]`` entry (an
  unconfigured address is refused, 403, and never contacted); the call answers when the
  retrieval has ended, as AIAA's does;
- ``{"http": {"url", "params", "method"}}``: a GET of ``url`` (``params`` as its query string)
  through the node's outbound policy (:mod:`dicom_node.net`: SSRF rules, size and time bounds),
  answering a zip of DICOM files or a NIfTI file.

The JSON bodies are read whatever the Content-Type says: the documented ``curl -d @data.json``
sends ``application/x-www-form-urlencoded``. ``expiry`` is seconds; as in AIAA the node takes
``min(expiry, sources.max_session_expiry)``, and 0 or none means ``sources.session_expiry``.

These are the node's ``/v1/sessions`` (:mod:`dicom_node.api.routers.sessions`) with AIAA's
bodies: the same :class:`~dicom_node.sources.sessions.SessionService` stores, retrieves, expires
and deletes them, so a session made here is usable by ``session_id`` on either path set.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import time
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from dicom_node.api.auth import Principal, require
from dicom_node.api.deps import ApiServices, ConfigDep, ServicesDep, SessionsDep
from dicom_node.api.errors import ApiError
from dicom_node.api.schemas import DicomSessionSource, error_responses
from dicom_node.config import NodeConfig
from dicom_node.errors import DicomNodeError, StorageError
from dicom_node.net.policy import OutboundError, OutboundRefused
from dicom_node.pixels.nifti import read_nifti
from dicom_node.pixels.volume import load_series
from dicom_node.sources import sessions_image as images
from dicom_node.sources.sessions import SessionService
from dicom_node.sources.sessions_plan import SessionRefused, SessionUnavailable
from dicom_node.sources.sessions_request import make_source, plan_of, resolve_remote
from dicom_node.sources.sessions_sink import SessionSink

log = logging.getLogger(__name__)

router = APIRouter(tags=["Clara AIAA"])

Submitter = Annotated[Principal, Depends(require("submit"))]
Reader = Annotated[Principal, Depends(require("read"))]

#: Longest a ``{"dicom": ...}`` session call waits for its retrieval before answering 202 (still retrieving).
RETRIEVAL_WAIT = 300.0
_POLL = 0.1
_HTTP_TIMEOUT = 60.0

_PUT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary",
                  "description": "NIfTI (.nii, .nii.gz), a DICOM file or a zip of DICOM files"}}}},
    "application/json": {"schema": {"type": "object", "minProperties": 1, "maxProperties": 1, "properties": {
        "dicom": {"type": "object", "description": "server_address, server_port, ae_title, query_level, patient_id, "
                  "study_uid, series_uid of a configured [[sources.remotes]] entry (or node: its name)"},
        "http": {"type": "object", "required": ["url"], "properties": {
            "url": {"type": "string"}, "params": {"type": "object"}, "method": {"type": "string", "enum": ["GET"]}}}}}},
}}}


def _expiry(service: SessionService, config: NodeConfig, expiry: float | None) -> float:
    """AIAA's ``min(AIAASessionExpiry, expiry)``: 0 or none is the default, more than the maximum is the maximum."""
    if expiry is None or not math.isfinite(expiry) or expiry <= 0:
        return service.expiry_for(None)
    return service.expiry_for(min(expiry, config.sources.max_session_expiry))


def _answer(row: dict[str, Any], expiry: float, status_code: int = 200) -> JSONResponse:
    return JSONResponse({"session_id": row["id"], "status": row["status"], "reason": row.get("reason"),
                         "expires_at": row["expires_at"], "expiry": expiry}, status_code=status_code)


def _refused(exc: SessionRefused) -> ApiError:
    return ApiError(exc.status, exc.code, str(exc))


async def _nifti_session(service: SessionService, config: NodeConfig, row: dict[str, Any], data: bytes,
                         field: str) -> dict[str, Any] | None:
    """Read the NIfTI image with the node's bounds (400 naming ``field`` when it cannot be), then keep it."""
    try:
        await run_in_threadpool(read_nifti, data, config.pixels.max_volume_bytes, config.api.max_pixels)
    except DicomNodeError as exc:
        raise ApiError(400, "invalid_image", f"{field}: {exc}") from exc
    return await run_in_threadpool(service.store_nifti, row["id"], data)


async def _dicom_parts(sink: SessionSink, parts: list[UploadFile | bytes], config: NodeConfig, field: str) -> None:
    """Store DICOM files (and zips of them) through the session's sink."""
    for part in parts:
        fh = io.BytesIO(part) if isinstance(part, bytes) else part.file
        head = fh.read(348)
        fh.seek(0)
        kind = images.kind_of(head)
        if kind == "zip":
            try:
                nifti = await run_in_threadpool(images.store_zip, fh, sink, config.api.max_multipart_parts,
                                                config.api.max_body_bytes)
            except DicomNodeError as exc:
                raise ApiError(400, "invalid_image", f"{field}: {exc}") from exc
            if nifti is not None:
                raise ApiError(400, "invalid_image", f"{field}: a zip with a NIfTI file must be the only image")
        elif kind == "dicom":
            await run_in_threadpool(sink.store_part10, images.chunks(fh))
        else:
            raise ApiError(400, "invalid_image", f"{field}: neither NIfTI, DICOM (Part 10) nor a zip of DICOM files")


async def _finish_dicom(service: SessionService, row: dict[str, Any], sink: SessionSink, field: str) -> dict[str, Any] | None:
    if not sink.ok_count:
        first = next((s.reason for s in sink.stored if s.reason), "no DICOM file was sent")
        raise ApiError(400, "no_dicom_stored", f"{field}: no instance could be stored; first: {first}")
    return await run_in_threadpool(service.finish, row["id"], sink)


async def _guarded(service: SessionService, row: dict[str, Any], work: Any) -> dict[str, Any]:
    """Run ``work`` (filling the session); the session is removed unless it ends ready."""
    done = False
    try:
        final = await work
        done = final is not None
    except StorageError as exc:
        log.error("session could not be stored error=%s", exc)
        raise ApiError(503, "storage_unavailable", "the session could not be stored; try again later") from exc
    finally:
        if not done:
            await run_in_threadpool(service.delete, row["id"])
    if final is None:
        raise ApiError(404, "not_found", f"session {row['id']} expired while its image arrived")
    return dict(final)


async def _upload(request: Request, service: SessionService, config: NodeConfig, seconds: float) -> JSONResponse:
    limit = config.api.max_multipart_parts
    try:
        form = await request.form(max_files=limit, max_fields=limit)
    except (ValueError, KeyError) as exc:
        raise ApiError(400, "invalid_request", f"the multipart body could not be parsed: {exc}") from exc
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise ApiError(400, "invalid_request", "image: missing (a NIfTI file, DICOM files or a zip of them)")
        head = files[0].file.read(348)
        files[0].file.seek(0)
        row = await run_in_threadpool(service.open, "upload", "upload", {}, seconds)
        if images.kind_of(head) == "nifti":
            if len(files) != 1:
                await run_in_threadpool(service.delete, row["id"])
                raise ApiError(400, "invalid_request", "image: send one NIfTI file, or DICOM files")
            data = files[0].file.read(config.api.max_body_bytes + 1)
            final = await _guarded(service, row, _nifti_session(service, config, row, data, "image"))
        else:
            sink = service.sink(row["id"])
            final = await _guarded(service, row, _fill_dicom(service, row, sink, list(files), config, "image"))
    finally:
        await form.close()
    log.info("AIAA session upload id=%s status=%s", final["id"], final["status"])
    return _answer(final, seconds)


async def _fill_dicom(service: SessionService, row: dict[str, Any], sink: SessionSink,
                      parts: list[UploadFile | bytes], config: NodeConfig, field: str) -> dict[str, Any] | None:
    await _dicom_parts(sink, parts, config, field)
    return await _finish_dicom(service, row, sink, field)


async def _dicom(body: Any, services: ApiServices, service: SessionService, seconds: float) -> JSONResponse:
    try:
        fields = DicomSessionSource.model_validate(body).model_dump()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ApiError(400, "invalid_request", f"dicom.{where}: {first.get('msg')}") from exc
    try:
        remote = resolve_remote(services.pull.config, fields)
        plan = plan_of(fields)
        source = make_source(remote, services.pull)
        row = await run_in_threadpool(service.start_retrieval, "dicom", source, remote.name, plan, seconds)
    except SessionRefused as exc:
        raise _refused(exc) from exc
    deadline = time.monotonic() + min(RETRIEVAL_WAIT, seconds)
    session: dict[str, Any] = row
    while session["status"] == "retrieving" and time.monotonic() < deadline:
        await asyncio.sleep(_POLL)
        now = await run_in_threadpool(service.get, row["id"])
        session = now if now is not None else {**row, "status": "failed", "reason": "the session was closed"}
    if session["status"] == "failed":
        await run_in_threadpool(service.delete, row["id"])
        raise ApiError(502, "retrieval_failed", f"the retrieval from {remote.name!r} failed: {session['reason']}")
    return _answer(session, seconds, 200 if session["status"] == "ready" else 202)


def _http_url(body: Any) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("url"), str) or not 0 < len(body["url"]) <= 2048:
        raise ApiError(400, "invalid_request", "http.url: a URL of at most 2048 characters is required")
    unknown = sorted(set(body) - {"url", "params", "method"})
    if unknown:
        raise ApiError(400, "invalid_request", f"http: unknown field(s) {', '.join(unknown)}")
    method = str(body.get("method") or "GET").upper()
    if method != "GET":
        raise ApiError(400, "invalid_request", f"http.method: only GET is supported, not {method[:16]!r}")
    params = body.get("params") or {}
    if not isinstance(params, dict) or not all(isinstance(v, str | int | float) for v in params.values()):
        raise ApiError(400, "invalid_request", "http.params: an object of strings or numbers")
    url = str(body["url"])
    parts = urlsplit(url)
    try:
        ascii_host = (parts.hostname or "").encode("idna").decode("ascii")
    except UnicodeError:
        ascii_host = ""
    if parts.scheme not in ("http", "https") or not ascii_host or any(ord(c) < 33 for c in url):
        raise ApiError(400, "invalid_request", "http.url: an http:// or https:// URL with a valid host name")
    if params:
        url += ("&" if urlsplit(url).query else "?") + urlencode({str(k): str(v) for k, v in params.items()})
    return url


async def _http(body: Any, services: ApiServices, service: SessionService, config: NodeConfig,
                seconds: float) -> JSONResponse:
    url = _http_url(body)
    try:
        reply = await run_in_threadpool(services.outbound.fetch, url, {}, config.api.max_body_bytes, _HTTP_TIMEOUT)
    except OutboundRefused as exc:
        raise ApiError(403, "url_refused", f"http.url: refused by the outbound policy: {exc}") from exc
    except OutboundError as exc:
        raise ApiError(502, "fetch_failed", f"http.url: the image could not be fetched: {exc}") from exc
    data = reply.content
    kind = images.kind_of(data[:348])
    if kind == "unknown":
        raise ApiError(400, "invalid_image", "http.url: the answer is neither a NIfTI file nor a zip of DICOM files")
    host = urlsplit(url).hostname or "http"  # the host only: a query string may hold a token
    # Kind "upload" (the index's kinds are upload, dicom, dicomweb): the caller chose the bytes, as with an upload.
    row = await run_in_threadpool(service.open, "upload", f"http:{host[:64]}", {"host": host[:255]}, seconds)
    if kind == "nifti":
        final = await _guarded(service, row, _nifti_session(service, config, row, data, "http.url"))
    else:
        sink = service.sink(row["id"])
        final = await _guarded(service, row, _fill_dicom(service, row, sink, [data], config, "http.url"))
    log.info("AIAA session from http id=%s host=%s status=%s", final["id"], host, final["status"])
    return _answer(final, seconds)


@router.put("/session/", summary="Clara AIAA: create a session (image upload, DICOM C-GET, or HTTP fetch)",
            responses={200: {"description": "The session is ready"},
                       202: {"description": "A DICOM retrieval still running when the wait ended"},
                       **error_responses(400, 401, 403, 404, 413, 429, 502, 503)},
            response_class=JSONResponse, openapi_extra=_PUT_BODY)
async def aiaa_create_session(
    request: Request, services: ServicesDep, config: ConfigDep, service: SessionsDep, _: Submitter,
    expiry: Annotated[float | None, Query(description="Seconds; min(expiry, sources.max_session_expiry), "
                                          "0 or absent for sources.session_expiry")] = None,
) -> JSONResponse:
    """Create a session; the answer carries ``session_id`` (AIAA's clients read that field)."""
    try:
        seconds = _expiry(service, config, expiry)
    except SessionRefused as exc:
        raise _refused(exc) from exc
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == "multipart/form-data":
        return await _upload(request, service, config, seconds)
    try:
        body = json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_request", "the body is neither multipart/form-data with an image nor JSON "
                       "({\"dicom\": ...} or {\"http\": ...})") from exc
    if not isinstance(body, dict) or len(body) != 1 or not ({"dicom", "http"} & set(body)):
        raise ApiError(400, "invalid_request", "the JSON body needs exactly one of \"dicom\" or \"http\"")
    if "dicom" in body:
        return await _dicom(body["dicom"], services, service, seconds)
    return await _http(body["http"], services, service, config, seconds)


def _info(session: dict[str, Any], nifti: bool) -> dict[str, Any]:
    return {"session_id": session["id"], "status": session["status"], "reason": session["reason"],
            "kind": session["kind"], "source": session["source"], "created_at": session["created_at"],
            "expires_at": session["expires_at"], "expiry": max(0.0, session["expires_at"] - time.time()),
            "image": "nifti" if nifti else "dicom", "instances": session["instances"], "series": session["series"]}


def _series_image(service: SessionService, config: NodeConfig, session_id: str) -> bytes:
    try:
        paths = service.series_files(session_id)
        volume = load_series(paths, workers=0, gpu=config.pixels.gpu_decode,
                             max_inflated_bytes=config.scp.max_inflated_bytes,
                             max_volume_bytes=config.pixels.max_volume_bytes)
    except SessionUnavailable as exc:
        raise ApiError(409, "not_ready", str(exc)) from exc
    except DicomNodeError as exc:
        raise ApiError(409, "undecodable", f"the session's series cannot be made one image: {exc}") from exc
    return images.series_image(volume)


@router.get("/session/{session_id}", summary="Clara AIAA: a session's details, or its image (image=true)",
            responses={200: {"description": "JSON details, or the image as application/octet-stream (NIfTI)",
                             "content": {"application/octet-stream": {}}}, **error_responses(401, 403, 404, 409)})
async def aiaa_get_session(session_id: str, service: SessionsDep, config: ConfigDep, _: Reader,
                           image: Annotated[bool, Query(description="true: the image as NIfTI bytes")] = False) -> Response:
    """The session as JSON; with ``image=true`` its image (``.nii.gz``) as an octet stream."""
    session = await run_in_threadpool(service.get, session_id)
    if session is None:
        raise ApiError(404, "not_found", f"no session {session_id[:64]!r} (unknown, deleted or expired)")
    path = await run_in_threadpool(service.nifti_file, session_id)
    if not image:
        return JSONResponse(_info(session, path is not None))
    if path is not None:
        return FileResponse(path, media_type="application/octet-stream", filename="image.nii.gz")
    data = await run_in_threadpool(_series_image, service, config, session_id)
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": 'attachment; filename="image.nii.gz"'})


@router.delete("/session/{session_id}", summary="Clara AIAA: close a session and remove its files",
               responses={200: {"description": "Closed"}, **error_responses(401, 403, 404)},
               response_class=JSONResponse)
async def aiaa_delete_session(session_id: str, service: SessionsDep, _: Submitter) -> JSONResponse:
    """Remove the session (as ``DELETE /v1/sessions/{id}``)."""
    if not await run_in_threadpool(service.delete, session_id):
        raise ApiError(404, "not_found", f"no session {session_id[:64]!r} (unknown, deleted or expired)")
    return JSONResponse({"session_id": session_id, "status": "closed"})
