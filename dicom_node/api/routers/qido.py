"""QIDO-RS (PS3.18 10.6): search the studies, series and instances the node holds (received and results).

Thin: the query parameters become an :class:`~dicom_node.archive.query.Search`, the archive answers
it from the index, and each entity goes out as DICOM JSON (PS3.18 F.2). No match is 200 with ``[]``
(CP-2473 aligns PS3.18 8.3.4.4.1 with RFC 9110; dicomweb-client reads 200 and 204 alike). Warnings
(PS3.18 8.3.4.4.1): ``fuzzymatching=true`` (not supported), attributes ignored, and a truncated page.
``multipart/related; type="application/dicom+xml"`` is not offered (406 naming what is).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from dicom_node.api.auth import Principal, require
from dicom_node.api.deps import StorageDep
from dicom_node.api.errors import ApiError
from dicom_node.api.routers.dicomweb import uid_param
from dicom_node.api.schemas import error_responses
from dicom_node.archive.query import MAX_LIMIT, JsonElement, JsonPage, Search, parse_qido, run_json
from dicom_node.dicomweb.accept import NotAcceptable, Offer, choose
from dicom_node.errors import IdentifierError, StorageError
from dicom_node.index.qido import Level
from dicom_node.services import Storage

router = APIRouter(tags=["dicomweb"])

DICOM_JSON = "application/dicom+json"
_OFFERS = (Offer(DICOM_JSON), Offer("application/json"))
_RESPONSES = {200: {"description": "Matching entities as DICOM JSON", "content": {DICOM_JSON: {}}},
              **error_responses(400, 401, 403, 406, 503)}
Read = Annotated[Principal, Depends(require("read"))]


_STUDY_UID, _SERIES_UID, _SOP_UID, _RETRIEVE_URL = "0020000D", "0020000E", "00080018", "00081190"


def _uid(entity: dict[str, JsonElement], tag: str) -> str:
    """The UID an entity answers under ``tag`` (a unique key: always present and single-valued)."""
    values = entity[tag].get("Value")
    return str(values[0]) if isinstance(values, list) and values else ""


def _warning(text: str) -> str:
    return f'299 dicom-node: "{text}"'


def _search(request: Request, level: Level, scope: dict[str, str]) -> Search:
    try:
        search = parse_qido(level, request.query_params.multi_items(), scope)
    except IdentifierError as exc:
        raise ApiError(400, "invalid_query", str(exc)) from exc
    limit = MAX_LIMIT if search.limit is None else min(search.limit, MAX_LIMIT)
    return Search(search.level, search.conditions, search.scope, search.include, search.include_all, limit,
                  search.offset, search.fuzzy, search.ignored)


def _run(storage: Storage, search: Search) -> JsonPage:
    try:
        conn = storage.index.reader()
        try:
            return run_json(conn, search)
        finally:
            conn.close()
    except (StorageError, sqlite3.Error) as exc:
        raise ApiError(503, "index_unavailable", "the index cannot be read") from exc


async def _answer(request: Request, storage: Storage, level: Level, **scope: str) -> Response:
    try:
        choose(request.headers.get("accept"), _OFFERS)
    except NotAcceptable as exc:
        raise ApiError(406, "not_acceptable", exc.reason) from exc
    search = _search(request, level, {k: v for k, v in scope.items()})
    page = await run_in_threadpool(_run, storage, search)
    base = str(request.base_url).rstrip("/") + "/dicomweb"
    body = []
    for entity in page.entities:
        url = f"{base}/studies/{_uid(entity, _STUDY_UID)}"
        if level != "STUDY":
            url += f"/series/{_uid(entity, _SERIES_UID)}"
        if level == "INSTANCE":
            url += f"/instances/{_uid(entity, _SOP_UID)}"
        entity[_RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
        body.append(dict(sorted(entity.items())))
    warnings = []
    if search.fuzzy:
        warnings.append(_warning("fuzzymatching not supported"))
    if search.ignored:
        warnings.append(_warning(f"attributes not supported for matching ignored: {', '.join(search.ignored)}"))
    if page.truncated:
        warnings.append(_warning("more results match than this response holds; ask with offset"))
    headers = {"Warning": ", ".join(warnings)} if warnings else {}
    return Response(json.dumps(body), media_type=DICOM_JSON, headers=headers)


@router.get("/dicomweb/studies", responses=_RESPONSES, response_class=Response)
async def search_studies(request: Request, storage: StorageDep, _principal: Read) -> Response:
    """Studies matching the query parameters (PS3.18 10.6.1, Table 10.6.3-3)."""
    return await _answer(request, storage, "STUDY")


@router.get("/dicomweb/series", responses=_RESPONSES, response_class=Response)
async def search_all_series(request: Request, storage: StorageDep, _principal: Read) -> Response:
    """Series of every study (Table 10.6.3-4, with the study attributes)."""
    return await _answer(request, storage, "SERIES")


@router.get("/dicomweb/studies/{study}/series", responses=_RESPONSES, response_class=Response)
async def search_series(request: Request, storage: StorageDep, _principal: Read,
                        study: Annotated[str, uid_param()]) -> Response:
    """Series of one study."""
    return await _answer(request, storage, "SERIES", StudyInstanceUID=study)


@router.get("/dicomweb/instances", responses=_RESPONSES, response_class=Response)
async def search_all_instances(request: Request, storage: StorageDep, _principal: Read) -> Response:
    """Instances of every study (Table 10.6.3-5, with study and series attributes)."""
    return await _answer(request, storage, "INSTANCE")


@router.get("/dicomweb/studies/{study}/instances", responses=_RESPONSES, response_class=Response)
async def search_study_instances(request: Request, storage: StorageDep, _principal: Read,
                                 study: Annotated[str, uid_param()]) -> Response:
    """Instances of one study (with their series attributes)."""
    return await _answer(request, storage, "INSTANCE", StudyInstanceUID=study)


@router.get("/dicomweb/studies/{study}/series/{series}/instances", responses=_RESPONSES, response_class=Response)
async def search_series_instances(request: Request, storage: StorageDep, _principal: Read,
                                  study: Annotated[str, uid_param()],
                                  series: Annotated[str, uid_param()]) -> Response:
    """Instances of one series."""
    return await _answer(request, storage, "INSTANCE", StudyInstanceUID=study, SeriesInstanceUID=series)
