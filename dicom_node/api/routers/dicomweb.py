"""DICOMweb: STOW-RS ingest (PS3.18 10.5) and WADO-RS retrieval of instances and series (PS3.18 10.4).

STOW-RS parts take the same durable path as C-STORE: each is staged in the
spool (:mod:`dicom_node.staging`) and stored by the node's Ingestor under a
pseudo-association (calling AE ``STOW-RS``) that is released when the request
ends, so series assembly and routing treat it like a DIMSE sender.
WADO-RS answers result objects (SEG, SR) and received instances as
``multipart/related; type="application/dicom"``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydicom.filereader import read_file_meta_info

from dicom_node.api.auth import Principal, require
from dicom_node.api.deps import ApiServices, ConfigDep, ServicesDep, StorageDep
from dicom_node.api.errors import ApiError
from dicom_node.api.schemas import UID_PATTERN, error_responses
from dicom_node.config import NodeConfig
from dicom_node.dicomweb.multipart import (
    MultipartError,
    boundary_of,
    new_boundary,
    related_content_type,
    write_related,
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
_WADO_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The instances as PS3.10 parts",
          "content": {"multipart/related": {"schema": {"type": "string", "format": "binary"}}}},
    **error_responses(401, 403, 404, 406),
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
    return f"{str(request.base_url).rstrip('/')}/dicomweb/studies/{study}"


def _response(request: Request, outcomes: list[tuple[Part, int, str | None, str | None]], study: str | None) -> JSONResponse:
    stored, failed = [], []
    for part, status, reason, instance_study in outcomes:
        item = {"00081150": _element("UI", part.sop_class_uid) if part.sop_class_uid else _element("UI"),
                "00081155": _element("UI", part.sop_instance_uid) if part.sop_instance_uid else _element("UI")}
        if status == 0 and instance_study:
            stored.append({**item, "00081190": _element("UR", f"{_study_url(request, instance_study)}/instances/"
                                                               f"{part.sop_instance_uid}")})
        else:
            failed.append({**item, "00081197": _element("US", status)})
            log.info("STOW-RS failure status=0x%04X reason=%s", status, reason)
    body: dict[str, Any] = {}
    if study:
        body["00081190"] = _element("UR", _study_url(request, study))
    if stored:
        body["00081199"] = _element("SQ", *stored)
    if failed:
        body["00081198"] = _element("SQ", *failed)
    code = 200 if not failed else (202 if stored else 409)
    return JSONResponse(body, status_code=code, media_type=DICOM_JSON)


async def _receive(request: Request, services: ApiServices, config: NodeConfig, reader: Part10Reader,
                   assoc_id: str, study: str | None) -> list[Any]:
    limit = config.api.max_body_bytes
    outcomes: list[Any] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise MultipartError(f"request body over the limit of {limit} bytes", 413)
        reader.feed(chunk)
        for part in reader.take():
            outcomes.append(await _finish_part(services, config, part, assoc_id, study))
    reader.close()
    for part in reader.take():
        outcomes.append(await _finish_part(services, config, part, assoc_id, study))
    return outcomes


async def _finish_part(services: ApiServices, config: NodeConfig, part: Part, assoc_id: str,
                       study: str | None) -> tuple[Part, int, str | None, str | None]:
    if part.failure is not None:
        return part, part.failure[0], part.failure[1], None
    status, reason = await run_in_threadpool(_store_part, services, config, part, assoc_id, study)
    instance_study = study
    if status == 0 and study is None:
        instance_study = await run_in_threadpool(_study_of, services.storage, part.sop_instance_uid)
    return part, status, reason, instance_study


def _study_of(storage: Storage, sop_uid: str) -> str | None:
    conn = storage.index.reader()
    try:
        return instances.study_of(conn, sop_uid)
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
    await run_in_threadpool(writer.run, lambda c: ops.begin_association(
        c, assoc_id, CALLING_AE, cfg.scp.ae_title, peer, time.time()))
    state, outcomes = "aborted", []
    try:
        outcomes = await _receive(request, services, cfg, reader, assoc_id, study)
        state = "released"
    except MultipartError as exc:
        raise ApiError(exc.status, "too_large" if exc.status == 413 else "invalid_request", str(exc)) from exc
    finally:
        reader.abort()
        stored = sum(1 for o in outcomes if o[1] == 0)
        await run_in_threadpool(writer.run, lambda c: ops.end_association(c, assoc_id, state, time.time(), stored))
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


def _accepted_syntaxes(accept: str) -> set[str] | None:
    """Transfer syntaxes acceptable per the Accept header (``{"*"}`` = any); None when nothing we send fits."""
    if not accept.strip():
        return {"*"}
    syntaxes: set[str] = set()
    for rng in accept.split(","):
        main, *params = [p.strip() for p in rng.split(";")]
        values = {k.strip().lower(): v.strip().strip('"') for k, _, v in (p.partition("=") for p in params)}
        if values.get("q") in ("0", "0.0", "0.00", "0.000"):
            continue
        main = main.lower()
        if main in ("*/*", "multipart/*"):
            syntaxes.add("*")
        elif main == "multipart/related" and values.get("type", "application/dicom").lower() == "application/dicom":
            syntaxes.add(values.get("transfer-syntax", "*"))
    return syntaxes or None


def _files(storage: Storage, study: str, series: str, sop: str | None) -> list[Path]:
    root = storage.spool.root
    conn = storage.index.reader()
    try:
        table, found = instances.wado_paths(conn, study, series, sop)
    finally:
        conn.close()
    paths = [root / p for p in found] if table == "results" else [storage.spool.path_for(p) for p in found]
    return [p for p in paths if p.is_file()]


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        yield from iter(lambda: fh.read(1 << 20), b"")


def _retrieve(request: Request, storage: Storage, study: str, series: str, sop: str | None) -> StreamingResponse:
    wanted = _accepted_syntaxes(request.headers.get("accept", ""))
    if wanted is None:
        raise ApiError(406, "not_acceptable", 'WADO-RS answers multipart/related; type="application/dicom"')
    paths = _files(storage, study, series, sop)
    if not paths:
        raise ApiError(404, "not_found", "no such instance" if sop else "no such series")
    syntaxes = [str(read_file_meta_info(p).TransferSyntaxUID) for p in paths]
    if "*" not in wanted and any(s not in wanted for s in syntaxes):
        raise ApiError(406, "not_acceptable", "transcoding on retrieve is not supported; ask for transfer-syntax=*")
    boundary = new_boundary()
    parts = ((f"application/dicom; transfer-syntax={syntax}", path.stat().st_size, _chunks(path))
             for path, syntax in zip(paths, syntaxes, strict=False))
    return StreamingResponse(write_related(parts, boundary), media_type=related_content_type(boundary))


@router.get("/dicomweb/studies/{study}/series/{series}", responses=_WADO_RESPONSES, response_class=StreamingResponse,
            summary="WADO-RS: retrieve a series (PS3.18 10.4)")
def retrieve_series(request: Request, storage: StorageDep, study: Annotated[str, uid_param()],
                    series: Annotated[str, uid_param()],
                    _principal: Annotated[Principal, Depends(require("read"))]) -> StreamingResponse:
    """Every instance of the series (result objects, or received instances from the spool)."""
    return _retrieve(request, storage, study, series, None)


@router.get("/dicomweb/studies/{study}/series/{series}/instances/{sop}", responses=_WADO_RESPONSES,
            response_class=StreamingResponse, summary="WADO-RS: retrieve an instance (PS3.18 10.4)")
def retrieve_instance(request: Request, storage: StorageDep, study: Annotated[str, uid_param()],
                      series: Annotated[str, uid_param()], sop: Annotated[str, uid_param()],
                      _principal: Annotated[Principal, Depends(require("read"))]) -> StreamingResponse:
    """One instance as a single-part ``multipart/related`` message."""
    return _retrieve(request, storage, study, series, sop)
