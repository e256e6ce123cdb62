"""DICOMweb: STOW-RS ingest (PS3.18 10.5); WADO-RS is :mod:`dicom_node.api.routers.wado`.

STOW-RS parts take the same durable path as C-STORE: each is staged in the
spool (:mod:`dicom_node.staging`) and stored by the node's Ingestor under a
pseudo-association (calling AE ``STOW-RS``) that is released when the request
ends, so series assembly and routing treat it like a DIMSE sender.
The answer (PS3.18 10.5.3) names each stored instance with a Retrieve URL that
WADO-RS serves (``/studies/{study}/series/{series}/instances/{sop}``), the study's
Retrieve URL when the request names a study or every stored instance is of one,
each failed instance with its Failure Reason, and a ``Warning`` header on 202/409.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from dicom_node.api.auth import Principal, require
from dicom_node.api.deps import ApiServices, ConfigDep, ServicesDep
from dicom_node.api.errors import ApiError
from dicom_node.api.routers.wado import dicomweb_base
from dicom_node.api.schemas import UID_PATTERN, error_responses
from dicom_node.config import NodeConfig
from dicom_node.dicomweb.multipart import (
    MultipartError,
    boundary_of,
)
from dicom_node.errors import IngestError, StorageError
from dicom_node.index import instances, ops
from dicom_node.ingest import Arrival, read_header
from dicom_node.services import Storage
from dicom_node.staging import MISMATCH, OUT_OF_RESOURCES, Part, Part10Reader

log = logging.getLogger(__name__)

router = APIRouter(tags=["dicomweb"])

def uid_param() -> Any:
    """A UID path parameter (a fresh FieldInfo each time: FastAPI binds one to one parameter)."""
    return PathParam(min_length=1, max_length=64, pattern=UID_PATTERN)
CALLING_AE = "STOW-RS"
DICOM_JSON = "application/dicom+json"

_STOW_BODY = {"requestBody": {"required": True, "content": {
    'multipart/related; type="application/dicom"': {"schema": {"type": "string", "format": "binary"}}}}}
_STOW_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Every instance stored", "content": {DICOM_JSON: {"schema": {"type": "object"}}}},
    202: {"description": "Some instances failed", "content": {DICOM_JSON: {"schema": {"type": "object"}}}},
    409: {"description": "Every instance failed", "content": {DICOM_JSON: {"schema": {"type": "object"}}}},
    **error_responses(401, 403, 413, 415),
}


def _element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def _store_part(services: ApiServices, config: NodeConfig, part: Part, assoc_id: str,
                study: str | None) -> tuple[int, str | None]:
    """Store one staged part; returns (PS3.4 status, reason). Runs in a worker thread."""
    storage = services.storage
    assert part.temp is not None and part.fd is not None
    if study is not None:
        try:
            found = read_header(part.temp, part.data_offset, part.transfer_syntax, config.scp.max_inflated_bytes)
        except IngestError as exc:
            storage.spool.discard(part.fd, part.temp)
            return exc.status, str(exc)
        if found.get("study_instance_uid") != study:
            storage.spool.discard(part.fd, part.temp)
            return MISMATCH, "Study Instance UID differs from the one in the request URL"
    arrival = Arrival(fd=part.fd, temp=part.temp, data_offset=part.data_offset, size=part.size,
                      transfer_syntax=part.transfer_syntax, sop_class_uid=part.sop_class_uid,
                      sop_instance_uid=part.sop_instance_uid, calling_ae=CALLING_AE,
                      called_ae=config.scp.ae_title, association_id=assoc_id, source="stowrs")
    part.fd, part.temp = None, None
    try:
        outcome = storage.ingestor.store(arrival)
    except IngestError as exc:
        log.warning("STOW-RS instance refused status=0x%04X reason=%s", exc.status, exc)
        return exc.status, str(exc)
    except StorageError as exc:
        log.error("STOW-RS instance failed to store error=%s", exc)
        return OUT_OF_RESOURCES, "Out of resources: storage failure"
    services.scp.ctx.metrics.count(outcome, arrival.size)
    return 0, None


def _study_url(request: Request, study: str) -> str:
    return f"{dicomweb_base(request)}/studies/{study}"


def _response(request: Request, outcomes: list[tuple[Part, int, str | None, tuple[str, str] | None]],
              study: str | None) -> JSONResponse:
    """The Store Instances Response Module (PS3.18 10.5.3, Table 10.5.3-1) as DICOM JSON."""
    stored, failed, studies = [], [], set()
    reasons: dict[int, int] = {}
    for part, status, reason, where in outcomes:
        item = {"00081150": _element("UI", part.sop_class_uid) if part.sop_class_uid else _element("UI"),
                "00081155": _element("UI", part.sop_instance_uid) if part.sop_instance_uid else _element("UI")}
        if status == 0 and where:
            studies.add(where[0])
            stored.append({**item, "00081190": _element(
                "UR", f"{_study_url(request, where[0])}/series/{where[1]}/instances/{part.sop_instance_uid}")})
        else:
            # Failure Reason (0008,1197) takes the PS3.4 C-STORE status codes (PS3.18 Table 10.5.3-2).
            failed.append({**item, "00081197": _element("US", status or OUT_OF_RESOURCES)})
            reasons[status] = reasons.get(status, 0) + 1
            log.info("STOW-RS failure status=0x%04X reason=%s", status, reason)
    body: dict[str, Any] = {}
    if study or len(studies) == 1:
        body["00081190"] = _element("UR", _study_url(request, study or studies.pop()))
    if stored:
        body["00081199"] = _element("SQ", *stored)
    if failed:
        body["00081198"] = _element("SQ", *failed)
    code = 200 if not failed else (202 if stored else 409)
    headers = None
    if failed:
        # PS3.18 10.5.3.1: a Warning header says why not every instance was stored.
        summary = ", ".join(f"{n} x 0x{s:04X}" for s, n in sorted(reasons.items()))
        headers = {"Warning": f'299 dicom-node: "{len(failed)} of {len(outcomes)} instance(s) not stored '
                              f'(Failure Reason {summary}); see FailedSOPSequence"'}
    return JSONResponse(body, status_code=code, media_type=DICOM_JSON, headers=headers)


async def _receive(request: Request, services: ApiServices, config: NodeConfig, reader: Part10Reader,
                   assoc_id: str, study: str | None, refuse: str | None = None) -> list[Any]:
    limit = config.api.max_body_bytes
    outcomes: list[Any] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise MultipartError(f"request body over the limit of {limit} bytes", 413)
        reader.feed(chunk)
        for part in reader.take():
            outcomes.append(await _finish_part(services, config, part, assoc_id, study, refuse))
    reader.close()
    for part in reader.take():
        outcomes.append(await _finish_part(services, config, part, assoc_id, study, refuse))
    return outcomes


async def _finish_part(services: ApiServices, config: NodeConfig, part: Part, assoc_id: str,
                       study: str | None, refuse: str | None = None) -> tuple[Part, int, str | None, tuple[str, str] | None]:
    if part.failure is not None:
        return part, part.failure[0], part.failure[1], None
    if refuse is not None:  # the request could not be recorded: nothing of it can be acknowledged
        if part.temp is not None:
            services.storage.spool.discard(part.fd, part.temp)
            part.fd, part.temp = None, None
        return part, OUT_OF_RESOURCES, refuse, None
    status, reason = await run_in_threadpool(_store_part, services, config, part, assoc_id, study)
    where = None
    if status == 0 and part.sop_instance_uid:
        where = await run_in_threadpool(_location_of, services.storage, part.sop_instance_uid)
    return part, status, reason, where


def _location_of(storage: Storage, sop_uid: str) -> tuple[str, str] | None:
    """(study, series) of a stored instance, for its Retrieve URL."""
    conn = storage.index.reader()
    try:
        return instances.location_of(conn, sop_uid)
    finally:
        conn.close()


async def _stow(request: Request, services: ApiServices, cfg: NodeConfig, study: str | None) -> JSONResponse:
    writer = services.storage.writer
    try:
        boundary = boundary_of(request.headers.get("content-type", ""))
    except MultipartError as exc:
        raise ApiError(exc.status, "unsupported_media_type" if exc.status == 415 else "invalid_request", str(exc)) from exc
    reader = Part10Reader(boundary, services.storage.spool, cfg.api.max_multipart_parts, cfg.scp.max_dataset_bytes)
    assoc_id = uuid.uuid4().hex
    peer = request.client.host if request.client else ""
    refuse: str | None = None
    try:
        await run_in_threadpool(writer.run, lambda c: ops.begin_association(
            c, assoc_id, CALLING_AE, cfg.scp.ae_title, peer, time.time()))
    except StorageError as exc:
        # An index that cannot write fails each instance with 0xA700 (PS3.18 FailureReason), not the request with 500.
        log.error("STOW-RS request cannot be recorded assoc=%s error=%s", assoc_id, exc)
        refuse = "Out of resources: the index cannot write"
    state, outcomes = "aborted", []
    try:
        outcomes = await _receive(request, services, cfg, reader, assoc_id, study, refuse)
        state = "released"
    except MultipartError as exc:
        raise ApiError(exc.status, "too_large" if exc.status == 413 else "invalid_request", str(exc)) from exc
    finally:
        reader.abort()
        stored = sum(1 for o in outcomes if o[1] == 0)
        if refuse is None:
            try:
                await run_in_threadpool(writer.run, lambda c: ops.end_association(c, assoc_id, state, time.time(), stored))
            except StorageError as exc:  # recovered as aborted at the next start (ops.recover)
                log.error("STOW-RS request end not recorded assoc=%s error=%s", assoc_id, exc)
    if not outcomes:
        raise ApiError(400, "invalid_request", "the multipart body has no parts")
    log.info("STOW-RS request assoc=%s parts=%d stored=%d", assoc_id, len(outcomes), stored)
    return _response(request, outcomes, study)


@router.post("/dicomweb/studies", responses=_STOW_RESPONSES, openapi_extra=_STOW_BODY, response_class=JSONResponse,
             summary="STOW-RS: store instances (PS3.18 10.5)")
async def stow(request: Request, services: ServicesDep, config: ConfigDep,
               _principal: Annotated[Principal, Depends(require("submit"))]) -> JSONResponse:
    """Store every ``application/dicom`` part; 200 all stored, 202 some failed, 409 all failed."""
    return await _stow(request, services, config, None)


@router.post("/dicomweb/studies/{study}", responses=_STOW_RESPONSES, openapi_extra=_STOW_BODY,
             response_class=JSONResponse, summary="STOW-RS: store instances of one study (PS3.18 10.5)")
async def stow_study(request: Request, services: ServicesDep, config: ConfigDep, study: Annotated[str, uid_param()],
                     _principal: Annotated[Principal, Depends(require("submit"))]) -> JSONResponse:
    """As ``POST /dicomweb/studies``; an instance of another study fails with 0xA900."""
    return await _stow(request, services, config, study)
