"""WADO-RS (PS3.18 10.4): retrieve, metadata, frames, rendered, thumbnail and bulk data of what the node holds.

Routes are thin: :mod:`dicom_node.archive` locates instances and produces the
bytes; content negotiation is :mod:`dicom_node.dicomweb.accept`'s, so 406 comes
only when nothing acceptable exists, with the reason. Received instances and the
node's own results (SEG, SR) are served alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response, StreamingResponse

from dicom_node.api.auth import Principal, require
from dicom_node.api.deps import StorageDep
from dicom_node.api.errors import ApiError
from dicom_node.api.schemas import UID_PATTERN, error_responses
from dicom_node.archive import frames as framing
from dicom_node.archive import metadata, rendered, retrieve
from dicom_node.archive.retrieve import BadRequest, Located, NotFound
from dicom_node.config import NodeConfig
from dicom_node.dicomweb.accept import NotAcceptable, Offer, choose, parse_accept
from dicom_node.dicomweb.multipart import new_boundary, related_content_type, write_related
from dicom_node.errors import PixelError, StorageError, UnsupportedTransferSyntaxError
from dicom_node.pixels.syntaxes import EXPLICIT_VR_LE
from dicom_node.services import Storage

router = APIRouter(tags=["dicomweb"])

T = TypeVar("T")
DICOM_JSON = "application/dicom+json"
METADATA_OFFERS = (Offer(DICOM_JSON), Offer("application/json"))
Reader = Annotated[Principal, Depends(require("read"))]
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_MULTIPART: dict[int | str, dict[str, Any]] = {
    200: {"description": "multipart/related, one part per instance or frame", "content": {"multipart/related": _BINARY}},
    **error_responses(400, 401, 403, 404, 406)}
_JSON: dict[int | str, dict[str, Any]] = {
    200: {"description": "DICOM JSON (PS3.18 F.2)", "content": {DICOM_JSON: {"schema": {"type": "array"}}}},
    **error_responses(401, 403, 404, 406)}
_IMAGE: dict[int | str, dict[str, Any]] = {
    200: {"description": "The rendered image", "content": {"image/jpeg": _BINARY, "image/png": _BINARY}},
    **error_responses(400, 401, 403, 404, 406)}


def uid_param() -> Any:
    """A UID path parameter (a fresh FieldInfo each time: FastAPI binds one to one parameter)."""
    return PathParam(min_length=1, max_length=64, pattern=UID_PATTERN)


Uid = Annotated[str, uid_param()]
_NUMBER = r"[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
Window = Annotated[str | None, Query(description="center,width[,linear|linear-exact|sigmoid] (PS3.18 8.3.5.1.4)",
                                     pattern=rf"^{_NUMBER},{_NUMBER}(,(linear|linear-exact|sigmoid))?$", max_length=128)]
Viewport = Annotated[str | None, Query(description="vw,vh[,sx,sy,sw,sh]: fit the image inside vw x vh (PS3.18 8.3.5.1.3)",
                                       pattern=rf"^[1-9][0-9]{{0,3}},[1-9][0-9]{{0,3}}(,{_NUMBER}){{0,4}}$", max_length=128)]
Quality = Annotated[str | None, Query(description="JPEG quality 1-100 (PS3.18 8.3.5.1.2)", pattern=r"^[0-9]{1,3}$")]
#: Frame numbers, comma separated (PS3.18 10.4.1.1.4).
FrameList = Annotated[str, PathParam(pattern=r"^[1-9][0-9]{0,8}(,[1-9][0-9]{0,8})*$", max_length=8192)]
#: A bulk data path as the metadata's BulkDataURIs write it: tag, or tag/item/tag inside sequences.
TagPath = Annotated[str, PathParam(pattern=r"^[0-9A-Fa-f]{8}(/[0-9]{1,6}/[0-9A-Fa-f]{8}){0,8}$", max_length=256)]


def _answer(work: Callable[[], T]) -> T:
    """Run the archive's work, mapping its errors to the API's answers."""
    try:
        return work()
    except NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from exc
    except BadRequest as exc:
        raise ApiError(400, "invalid_request", str(exc)) from exc
    except NotAcceptable as exc:
        raise ApiError(406, "not_acceptable", exc.reason) from exc
    except UnsupportedTransferSyntaxError as exc:
        raise ApiError(406, "not_acceptable", str(exc)) from exc
    except PixelError as exc:
        raise ApiError(500, "pixel_error", str(exc)) from exc
    except StorageError as exc:  # storage.spool_url: the shared store could not be read
        raise ApiError(503, "unavailable", str(exc)) from exc


def _locate(storage: Storage, study: str, series: str | None = None, sop: str | None = None) -> list[Located]:
    return _answer(lambda: retrieve.locate(storage.index, storage.spool, study, series, sop))


def dicomweb_base(request: Request) -> str:
    """The absolute URL of this node's DICOMweb root: ``api.public_url`` when set, else as the request reached it."""
    config: NodeConfig = request.app.state.config
    root = config.api.public_url or str(request.base_url).rstrip("/")
    return f"{root}/dicomweb"


def _instance_url(base: str, item: Located) -> str:
    return f"{base}/studies/{item.study_uid}/series/{item.series_uid}/instances/{item.sop_uid}"


# -- retrieve ---------------------------------------------------------------------------------------------------

def _retrieve(request: Request, storage: Storage, study: str, series: str | None, sop: str | None) -> StreamingResponse:
    found = _locate(storage, study, series, sop)
    accept = parse_accept(request.headers.get("accept"))
    answers = _answer(lambda: retrieve.negotiate(found, accept))
    first = _answer(lambda: retrieve.encode(answers[0]))  # the first failure is still an HTTP error

    def parts() -> Iterator[tuple[str, int | None, Iterator[bytes]]]:
        yield answers[0].offer.part_content_type, first[0], first[1]
        for answer in answers[1:]:
            size, chunks = retrieve.encode(answer)
            yield answer.offer.part_content_type, size, chunks

    boundary = new_boundary()
    return StreamingResponse(write_related(parts(), boundary), media_type=related_content_type(boundary))


@router.get("/dicomweb/studies/{study}", responses=_MULTIPART, response_class=StreamingResponse,
            summary="WADO-RS: retrieve a study (PS3.18 10.4)")
def retrieve_study(request: Request, storage: StorageDep, study: Uid, _p: Reader) -> StreamingResponse:
    """Every instance of the study, received or written by the node, in a negotiated transfer syntax."""
    return _retrieve(request, storage, study, None, None)


@router.get("/dicomweb/studies/{study}/series/{series}", responses=_MULTIPART, response_class=StreamingResponse,
            summary="WADO-RS: retrieve a series (PS3.18 10.4)")
def retrieve_series(request: Request, storage: StorageDep, study: Uid, series: Uid, _p: Reader) -> StreamingResponse:
    """Every instance of the series (result objects, or received instances from the spool)."""
    return _retrieve(request, storage, study, series, None)


@router.get("/dicomweb/studies/{study}/series/{series}/instances/{sop}", responses=_MULTIPART,
            response_class=StreamingResponse, summary="WADO-RS: retrieve an instance (PS3.18 10.4)")
def retrieve_instance(request: Request, storage: StorageDep, study: Uid, series: Uid, sop: Uid,
                      _p: Reader) -> StreamingResponse:
    """One instance as a single-part ``multipart/related`` message."""
    return _retrieve(request, storage, study, series, sop)


# -- metadata ---------------------------------------------------------------------------------------------------

def _metadata(request: Request, storage: Storage, study: str, series: str | None, sop: str | None) -> Response:
    offer = _answer(lambda: choose(request.headers.get("accept"), METADATA_OFFERS))
    found = _locate(storage, study, series, sop)
    base = dicomweb_base(request)
    texts = _answer(lambda: [metadata.instance_json_text(item, _instance_url(base, item)) for item in found])
    return Response("[" + ",".join(texts) + "]", media_type=offer.media_type)


@router.get("/dicomweb/studies/{study}/metadata", responses=_JSON, summary="WADO-RS: study metadata (PS3.18 10.4)")
def study_metadata(request: Request, storage: StorageDep, study: Uid, _p: Reader) -> Response:
    """DICOM JSON of every instance of the study; bulk data by BulkDataURI."""
    return _metadata(request, storage, study, None, None)


@router.get("/dicomweb/studies/{study}/series/{series}/metadata", responses=_JSON,
            summary="WADO-RS: series metadata (PS3.18 10.4)")
def series_metadata(request: Request, storage: StorageDep, study: Uid, series: Uid, _p: Reader) -> Response:
    """DICOM JSON of every instance of the series; bulk data by BulkDataURI."""
    return _metadata(request, storage, study, series, None)


@router.get("/dicomweb/studies/{study}/series/{series}/instances/{sop}/metadata", responses=_JSON,
            summary="WADO-RS: instance metadata (PS3.18 10.4)")
def instance_metadata(request: Request, storage: StorageDep, study: Uid, series: Uid, sop: Uid, _p: Reader) -> Response:
    """DICOM JSON of the instance (an array of one); bulk data by BulkDataURI."""
    return _metadata(request, storage, study, series, sop)


# -- frames and bulk data ---------------------------------------------------------------------------------------

#: Frame answers up to this size (native frame size times frames asked) are built in memory and sent
#: in one piece; larger ones stream frame by frame.
FRAMES_IN_MEMORY = 16 * 1024 * 1024


def _frames(request: Request, storage: Storage, study: str, series: str, sop: str,
            numbers: list[int]) -> Response:
    item = _locate(storage, study, series, sop)[0]
    lay = _answer(lambda: framing.layout(item))
    _answer(lambda: lay.check(numbers))
    offer = _answer(lambda: choose(request.headers.get("accept"), framing.offers(lay)))
    first = _answer(lambda: framing.frame_bytes(lay, numbers[0], offer))

    def parts() -> Iterator[tuple[str, int | None, Iterator[bytes]]]:
        yield offer.part_content_type, len(first), iter((first,))
        for n in numbers[1:]:
            data = framing.frame_bytes(lay, n, offer)
            yield offer.part_content_type, len(data), iter((data,))

    boundary = new_boundary()
    media_type = related_content_type(boundary, offer.media_type)
    if len(numbers) == 1 or 0 < lay.frame_bytes * len(numbers) <= FRAMES_IN_MEMORY:
        # A viewer asks for one frame per request, hundreds per series: one send with a Content-Length
        # instead of a chunked stream, whose every piece is a hop through the thread pool.
        return Response(_answer(lambda: b"".join(write_related(parts(), boundary))), media_type=media_type)
    return StreamingResponse(write_related(parts(), boundary), media_type=media_type)


@router.get("/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}", responses=_MULTIPART,
            response_class=StreamingResponse, summary="WADO-RS: frames of an instance (PS3.18 10.4)")
def retrieve_frames(request: Request, storage: StorageDep, study: Uid, series: Uid, sop: Uid,
                    frame_list: FrameList, _p: Reader) -> Response:
    """One part per frame asked for (numbered from 1): native bytes, or compressed as stored."""
    numbers = _answer(lambda: framing.parse_frame_list(frame_list))
    return _frames(request, storage, study, series, sop, numbers)


@router.get("/dicomweb/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag_path:path}",
            responses=_MULTIPART, response_class=StreamingResponse, summary="WADO-RS: bulk data (PS3.18 10.4)")
def retrieve_bulkdata(request: Request, storage: StorageDep, study: Uid, series: Uid, sop: Uid,
                      tag_path: TagPath, _p: Reader) -> Response:
    """A BulkDataURI of the metadata (PS3.18 8.7.3.5): the element's value as octet-stream, in one part.

    Native Pixel Data is its whole value in Explicit VR Little Endian (what a SEG loader reads);
    encapsulated Pixel Data is one part per frame, as for ``frames``.
    """
    item = _locate(storage, study, series, sop)[0]
    data: bytes
    if tag_path.strip("/").upper() == f"{metadata.PIXEL_DATA:08X}":
        lay = _answer(lambda: framing.layout(item))
        if lay.encapsulated:
            return _frames(request, storage, study, series, sop, list(range(1, lay.frames + 1)))
        offers: tuple[Offer, ...] = (Offer(framing.OCTET, EXPLICIT_VR_LE, True), Offer(framing.OCTET, EXPLICIT_VR_LE))
        offer = _answer(lambda: choose(request.headers.get("accept"), offers))
        data = _answer(lambda: framing.native_value(lay))
    else:
        offer = _answer(lambda: choose(request.headers.get("accept"),
                                       (Offer(framing.OCTET, None, True), Offer(framing.OCTET))))
        _vr, data = _answer(lambda: metadata.bulk_value(item, tag_path))
    if not offer.multipart:
        return Response(data, media_type=offer.part_content_type)
    boundary = new_boundary()
    body = b"".join(write_related([(offer.part_content_type, len(data), iter((data,)))], boundary))
    return Response(body, media_type=related_content_type(boundary, framing.OCTET))


# -- rendered and thumbnail -------------------------------------------------------------------------------------

def _render(request: Request, item: Located, frame: int, params: rendered.RenderParams) -> Response:
    offer = _answer(lambda: choose(request.headers.get("accept"), rendered.OFFERS))
    data = _answer(lambda: rendered.render(item, frame, offer, params))
    return Response(data, media_type=offer.media_type)


def _params(window: str | None, viewport: str | None, quality: str | None, thumbnail: bool = False) -> rendered.RenderParams:
    size = str(rendered.THUMBNAIL_SIZE)
    return _answer(lambda: rendered.parse_params(window, viewport or (f"{size},{size}" if thumbnail else None), quality))


@router.get("/dicomweb/studies/{study}/series/{series}/instances/{sop}/rendered", responses=_IMAGE,
            summary="WADO-RS: rendered instance (PS3.18 10.4.1.1.3)")
def rendered_instance(request: Request, storage: StorageDep, study: Uid, series: Uid, sop: Uid, _p: Reader,
                      window: Window = None, viewport: Viewport = None, quality: Quality = None) -> Response:
    """The instance's first frame as JPEG (default) or PNG."""
    return _render(request, _locate(storage, study, series, sop)[0], 1, _params(window, viewport, quality))


@router.get("/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}/rendered",
            responses=_IMAGE, summary="WADO-RS: rendered frame (PS3.18 10.4.1.1.3)")
def rendered_frame(request: Request, storage: StorageDep, study: Uid, series: Uid, sop: Uid,
                   frame_list: FrameList, _p: Reader,
                   window: Window = None, viewport: Viewport = None, quality: Quality = None) -> Response:
    """One frame as JPEG or PNG (a single image: only the first number of the list is rendered)."""
    numbers = _answer(lambda: framing.parse_frame_list(frame_list))
    return _render(request, _locate(storage, study, series, sop)[0], numbers[0], _params(window, viewport, quality))


@router.get("/dicomweb/studies/{study}/rendered", responses=_IMAGE, summary="WADO-RS: rendered study (PS3.18 10.4.1.1.3)")
def rendered_study(request: Request, storage: StorageDep, study: Uid, _p: Reader,
                   window: Window = None, viewport: Viewport = None, quality: Quality = None) -> Response:
    """One image for the study: its representative instance rendered (as Orthanc answers; dicomweb-client reads one image)."""
    return _render(request, _representative(storage, study, None), 1, _params(window, viewport, quality))


@router.get("/dicomweb/studies/{study}/series/{series}/rendered", responses=_IMAGE,
            summary="WADO-RS: rendered series (PS3.18 10.4.1.1.3)")
def rendered_series(request: Request, storage: StorageDep, study: Uid, series: Uid, _p: Reader,
                    window: Window = None, viewport: Viewport = None, quality: Quality = None) -> Response:
    """One image for the series: its middle instance rendered."""
    return _render(request, _representative(storage, study, series), 1, _params(window, viewport, quality))


def _representative(storage: Storage, study: str, series: str | None) -> Located:
    """The middle image of the series, or of the study's first series with images."""
    images = [f for f in _locate(storage, study, series) if not retrieve.is_sr(f.sop_class_uid)]
    first_series = images[0].series_uid if images else ""
    return _answer(lambda: rendered.representative([f for f in images if f.series_uid == first_series]))


@router.get("/dicomweb/studies/{study}/thumbnail", responses=_IMAGE, summary="WADO-RS: study thumbnail")
def study_thumbnail(request: Request, storage: StorageDep, study: Uid, _p: Reader, viewport: Viewport = None) -> Response:
    """A representative image of the study (the middle image of its first image series)."""
    return _render(request, _representative(storage, study, None), 1, _params(None, viewport, None, thumbnail=True))


@router.get("/dicomweb/studies/{study}/series/{series}/thumbnail", responses=_IMAGE, summary="WADO-RS: series thumbnail")
def series_thumbnail(request: Request, storage: StorageDep, study: Uid, series: Uid, _p: Reader,
                     viewport: Viewport = None) -> Response:
    """The middle image of the series."""
    return _render(request, _representative(storage, study, series), 1, _params(None, viewport, None, thumbnail=True))


@router.get("/dicomweb/studies/{study}/series/{series}/instances/{sop}/thumbnail", responses=_IMAGE,
            summary="WADO-RS: instance thumbnail")
def instance_thumbnail(request: Request, storage: StorageDep, study: Uid, series: Uid, sop: Uid, _p: Reader,
                       viewport: Viewport = None) -> Response:
    """The instance's first frame, small."""
    return _render(request, _locate(storage, study, series, sop)[0], 1, _params(None, viewport, None, thumbnail=True))


@router.get("/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}/thumbnail",
            responses=_IMAGE, summary="WADO-RS: frame thumbnail")
def frame_thumbnail(request: Request, storage: StorageDep, study: Uid, series: Uid, sop: Uid,
                    frame_list: FrameList, _p: Reader,
                    viewport: Viewport = None) -> Response:
    """The first frame of the list, small."""
    numbers = _answer(lambda: framing.parse_frame_list(frame_list))
    return _render(request, _locate(storage, study, series, sop)[0], numbers[0],
                   _params(None, viewport, None, thumbnail=True))
