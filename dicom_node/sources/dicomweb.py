"""A DICOMweb origin server as a pull source: QIDO-RS to find, WADO-RS to retrieve (PS3.18 10.6, 10.4).

:class:`DicomwebSource` implements :class:`~dicom_node.sources.base.Source`:

- ``find_studies``: ``GET {root}/studies`` with the poller's matching keys
  (ModalitiesInStudy as a comma list, StudyDate as a ``YYYYMMDD-YYYYMMDD``
  range, any other keyword), ``includefield`` (always
  NumberOfStudyRelatedInstances) and ``limit``/``offset`` paging.
- ``find_series`` / ``find_instances``: the series of a study with
  NumberOfSeriesRelatedInstances; the SOP Instance UIDs of a series (paged).
- ``retrieve``: ``GET {root}/studies/{study}/series/{series}`` (or one request
  per instance when only some are wanted) with ``Accept: multipart/related;
  type="application/dicom"; transfer-syntax=...`` listing every syntax the
  decoder handles. The body is split as it streams by the STOW-RS
  :class:`~dicom_node.staging.Part10Reader`: each part goes straight into a
  spool temporary file, so memory stays bounded by one chunk whatever the study
  size, and is stored through the sink as soon as it is complete.

Server quirks handled here: Orthanc 1.10 (DICOMweb plugin 1.7) honours only the
*last* media range of a multi-valued Accept and answers 400 (unknown syntax) or
500 (its transcoder failed) where PS3.18 8.7.3.5 says 406, so Explicit VR Little
Endian, which every server can produce, comes last, and 400/406/415/500 to a
request naming syntaxes are retried once with ``transfer-syntax=*`` (the stored
syntax; the node decodes or refuses it later). Orthanc also answers nothing for
``ModalitiesInStudy`` with ``offset > 0``; the poller's page then ends early and
the scan is not counted as complete (see :mod:`dicom_node.sources.poller`).

UIDs from the server are checked (:func:`~dicom_node.validators.is_uid`) before
they become part of a URL. Requests go through a pinned session
(:func:`dicom_node.net.http.new_session`): each one is checked against the
poller's outbound policy, its host resolved once and the checked address
connected to; it sends the configured credentials (read at each request, so a
rotated token file needs no restart), never follows redirects and ignores
proxy/.netrc settings of the environment.

Errors raise :class:`HttpSourceError` (a :class:`~dicom_node.errors.SourceError`)
with the HTTP ``status`` (0 for connection failures) and the server's
``Retry-After`` in seconds when it gave one
(:func:`~dicom_node.net.retry.parse_retry_after`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from dicom_node.config.sources import Poller
from dicom_node.dicomweb.multipart import MultipartError, boundary_of
from dicom_node.errors import SourceError
from dicom_node.net.http import new_session
from dicom_node.net.policy import OutboundError, OutboundPolicy
from dicom_node.net.retry import parse_retry_after
from dicom_node.pixels.syntaxes import COMPRESSED_SYNTAXES, EXPLICIT_VR_LE, UNCOMPRESSED_SYNTAXES
from dicom_node.sources.base import RetrieveResult, SeriesSummary, StudySummary
from dicom_node.sources.sink import NodeStorage, RetrievalSink, StagingSink, Stored
from dicom_node.spool import Spool
from dicom_node.staging import Part, Part10Reader
from dicom_node.validators import is_uid

log = logging.getLogger(__name__)

#: Syntaxes offered in Accept: compressed first, Explicit VR Little Endian last (see the module docstring).
ACCEPTED_SYNTAXES = COMPRESSED_SYNTAXES + tuple(t for t in UNCOMPRESSED_SYNTAXES if t != EXPLICIT_VR_LE) + (EXPLICIT_VR_LE,)
_DICOM_JSON = "application/dicom+json"
_RETRYABLE = {408, 429, 500, 502, 503, 504}
_SYNTAX_REFUSED = {400, 406, 415, 500}
_CHUNK = 1 << 20
_MAX_PARTS = 1_000_000

# QIDO-RS attribute tags (PS3.18 Table 10.6.3-3..5), in the DICOM JSON model's 8-hex-digit form.
_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"
_STUDY_DATE, _MODALITIES, _MODALITY = "00080020", "00080061", "00080060"
_STUDY_COUNT, _SERIES_COUNT = "00201208", "00201209"


class HttpSourceError(SourceError):
    """A DICOMweb request failed: ``status`` (0 = no HTTP answer) and ``retry_after`` seconds, if given."""

    def __init__(self, message: str, *, status: int = 0, retryable: bool | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, retryable)
        self.status = status
        self.retry_after = retry_after


def accept_header(syntaxes: Sequence[str]) -> str:
    """``Accept`` for a WADO-RS retrieval of PS3.10 instances in any of ``syntaxes`` (PS3.18 8.7.3.5)."""
    return ", ".join(f'multipart/related; type="application/dicom"; transfer-syntax={ts}' for ts in syntaxes)


def build_session(poller: Poller) -> requests.Session:
    """A pinned session with the poller's policy and CA bundle (credentials go with each request)."""
    return new_session(policy(poller), ca_file=poller.ca_file)


def _value(obj: dict[str, Any], tag: str) -> Any:
    values = (obj.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def _count(obj: dict[str, Any], tag: str) -> int | None:
    value = _value(obj, tag)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _uid(obj: dict[str, Any], tag: str) -> str | None:
    value = _value(obj, tag)
    return value if isinstance(value, str) and is_uid(value) else None


class DicomwebSource:
    """A DICOMweb service root polled by a ``kind = "dicomweb"`` poller.

    Parameters
    ----------
    poller : Poller
        URL, credentials, timeouts and ``includefield`` of the ``[[sources.pollers]]`` entry.
    node : NodeStorage
        The node's storage (:class:`~dicom_node.node.Node`); parts are staged in its spool.
    """

    def __init__(self, poller: Poller, node: NodeStorage) -> None:
        self.poller = poller
        self.node = node
        self.name = poller.name
        self.source_label = f"dicomweb:{poller.name}"
        self.peer_host = urlsplit(poller.url).hostname or ""
        self.requests = 0  # HTTP requests sent (for logs and tests)
        self._session: requests.Session | None = None

    def sink(self, on_stored: Callable[[Stored], None] | None = None) -> RetrievalSink:
        """A sink recording ``dicomweb:<name>`` with the poller's name as calling AE."""
        return RetrievalSink(self.node, self.poller.name, self.source_label, self.peer_host, on_stored)

    def close(self) -> None:
        """Close pooled connections."""
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- HTTP ------------------------------------------------------------------------------------------------

    def _base(self) -> str:
        """The service root (the session checks, resolves and pins every request's host)."""
        return self.poller.url.rstrip("/")

    def _headers(self, accept: str) -> dict[str, str]:
        headers = {"Accept": accept}
        auth = self.poller.auth
        try:
            if auth.type == "bearer":
                headers["Authorization"] = f"Bearer {auth.secret()}"
        except OutboundError as exc:
            raise HttpSourceError(f"DICOMweb {self.name}: {exc}", retryable=False) from exc
        return headers

    def _auth(self) -> tuple[str, str] | None:
        auth = self.poller.auth
        if auth.type != "basic":
            return None
        try:
            return (auth.username, auth.secret())
        except OutboundError as exc:
            raise HttpSourceError(f"DICOMweb {self.name}: {exc}", retryable=False) from exc

    def _get(self, path: str, accept: str, params: dict[str, Any] | None = None, stream: bool = False) -> requests.Response:
        """One GET below the service root; non-2xx answers raise :class:`HttpSourceError`."""
        url = self._base() + path
        if self._session is None:
            self._session = build_session(self.poller)
        timeout = self.poller.timeout
        self.requests += 1
        try:
            response = self._session.get(url, params=params, headers=self._headers(accept), auth=self._auth(),
                                         timeout=(min(10.0, timeout), timeout), stream=stream, allow_redirects=False)
        except OutboundError as exc:  # the policy refused the URL or an address of its host, or DNS failed
            raise HttpSourceError(f"DICOMweb {self.name}: {exc}", retryable=exc.retryable) from exc
        except requests.exceptions.SSLError as exc:
            raise HttpSourceError(f"DICOMweb {self.name}: TLS failure: {type(exc).__name__}", retryable=False) from exc
        except requests.RequestException as exc:
            raise HttpSourceError(f"DICOMweb {self.name}: cannot reach {self.poller.url}: {type(exc).__name__}",
                                  retryable=True) from exc
        if response.status_code >= 300:
            response.close()
            raise self._http_error(response, path.split("?")[0])
        return response

    def _http_error(self, response: requests.Response, what: str) -> HttpSourceError:
        code = response.status_code
        wait = parse_retry_after(response.headers.get("Retry-After"))
        if code in (401, 403):
            hint = "check the credentials" if code == 401 else "the credentials lack permission"
            message = f"DICOMweb {self.name}: HTTP {code} {response.reason} for {_kind(what)}; {hint}"
        elif 300 <= code < 400:
            message = f"DICOMweb {self.name}: HTTP {code} redirect for {_kind(what)}; configure the final URL"
        else:
            message = f"DICOMweb {self.name}: HTTP {code} {response.reason} for {_kind(what)}"
        return HttpSourceError(message, status=code, retryable=code in _RETRYABLE, retry_after=wait)

    def _json(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        response = self._get(path, _DICOM_JSON + ", application/json", params)
        try:
            if response.status_code == 204 or not response.content:
                return []
            data = response.json()
        except (ValueError, requests.RequestException) as exc:
            raise HttpSourceError(f"DICOMweb {self.name}: QIDO-RS answer is not DICOM JSON", retryable=True) from exc
        finally:
            response.close()
        if not isinstance(data, list):
            raise HttpSourceError(f"DICOMweb {self.name}: QIDO-RS answer is not a JSON array", retryable=False)
        return [d for d in data if isinstance(d, dict)]

    # -- QIDO-RS ---------------------------------------------------------------------------------------------

    def find_studies(self, filters: dict[str, str], limit: int, offset: int = 0) -> list[StudySummary]:
        """One page of studies matching ``filters`` (PS3.18 10.6.1, Study level)."""
        fields = ["NumberOfStudyRelatedInstances", "ModalitiesInStudy", "StudyDate",
                  *[f for f in self.poller.includefield if f not in ("NumberOfStudyRelatedInstances",)]]
        params: dict[str, Any] = {k: v for k, v in filters.items() if v != ""}
        params.update(includefield=",".join(dict.fromkeys(fields)), limit=limit, offset=offset)
        studies = []
        for obj in self._json("/studies", params):
            uid = _uid(obj, _STUDY_UID)
            if uid is None:
                log.warning("qido-rs study without a valid StudyInstanceUID ignored source=%s", self.name)
                continue
            modalities = (obj.get(_MODALITIES) or {}).get("Value") or []
            studies.append(StudySummary(uid, _count(obj, _STUDY_COUNT), str(_value(obj, _STUDY_DATE) or ""),
                                        tuple(str(m) for m in modalities)))
        return studies

    def find_series(self, study_uid: str) -> list[SeriesSummary]:
        """The series of a study with NumberOfSeriesRelatedInstances (PS3.18 10.6.1, Series level)."""
        study = _checked(study_uid, "StudyInstanceUID")
        series = []
        for obj in self._json(f"/studies/{study}/series", {"includefield": "NumberOfSeriesRelatedInstances"}):
            uid = _uid(obj, _SERIES_UID)
            if uid is not None:
                series.append(SeriesSummary(study, uid, _count(obj, _SERIES_COUNT), str(_value(obj, _MODALITY) or "")))
        return series

    def find_instances(self, study_uid: str, series_uid: str) -> list[str]:
        """SOP Instance UIDs of a series, paged by ``page_size`` (PS3.18 10.6.1, Instance level)."""
        path = f"/studies/{_checked(study_uid, 'StudyInstanceUID')}/series/{_checked(series_uid, 'SeriesInstanceUID')}/instances"
        found: dict[str, None] = {}
        limit, offset = self.poller.page_size, 0
        while True:
            page = [u for u in (_uid(o, _SOP_UID) for o in self._json(path, {"limit": limit, "offset": offset})) if u]
            before = len(found)
            found.update(dict.fromkeys(page))
            # A short page ends the list; a page with nothing new means the server ignores offset.
            if len(page) < limit or len(found) == before:
                return list(found)
            offset += len(page)

    def locate(self, series_uid: str | None = None, sop_instance_uid: str | None = None) -> list[tuple[str, str]]:
        """The (study, series) UIDs holding a series or an instance, by an all-studies search (PS3.18 10.6.1).

        ``GET {root}/series?SeriesInstanceUID=`` or ``GET {root}/instances?SOPInstanceUID=``
        (PS3.18 10.6.1.2: the all-studies resources); the answers carry StudyInstanceUID and SeriesInstanceUID (PS3.18 Table 10.6.3-3, -4).
        A retrieval session uses it when a caller named a series or an instance without its study.
        """
        if sop_instance_uid is not None:
            path, params = "/instances", {"SOPInstanceUID": _checked(sop_instance_uid, "SOPInstanceUID")}
        elif series_uid is not None:
            path, params = "/series", {"SeriesInstanceUID": _checked(series_uid, "SeriesInstanceUID")}
        else:
            raise HttpSourceError("locate needs a series or SOP Instance UID", retryable=False)
        params["includefield"] = "StudyInstanceUID,SeriesInstanceUID"
        found: dict[tuple[str, str], None] = {}
        for obj in self._json(path, params):
            study, series = _uid(obj, _STUDY_UID), _uid(obj, _SERIES_UID)
            if study and series and (series_uid is None or series == series_uid):
                found[(study, series)] = None
        return list(found)

    # -- WADO-RS ---------------------------------------------------------------------------------------------

    def retrieve(self, study_uid: str, series_uid: str | None, sink: StagingSink,
                 instances: Sequence[str] | None = None) -> RetrieveResult:
        """Retrieve a study, a series, or only ``instances`` of a series into ``sink`` (PS3.18 10.4.1).

        Raises
        ------
        HttpSourceError
            The server refused or the transfer broke off; what was stored before stays stored.
        """
        path = f"/studies/{_checked(study_uid, 'StudyInstanceUID')}"
        if series_uid is not None:
            path += f"/series/{_checked(series_uid, 'SeriesInstanceUID')}"
        result = RetrieveResult()
        if instances is None:
            self._retrieve_path(path, sink, result)
            return result
        if series_uid is None:
            raise HttpSourceError("retrieving single instances needs their series UID", retryable=False)
        for uid in instances:
            self._retrieve_path(f"{path}/instances/{_checked(uid, 'SOPInstanceUID')}", sink, result)
        return result

    def _open_retrieval(self, path: str) -> requests.Response:
        try:
            return self._get(path, accept_header(ACCEPTED_SYNTAXES), stream=True)
        except HttpSourceError as exc:
            if exc.status not in _SYNTAX_REFUSED:
                raise
            log.info("wado-rs refused the listed transfer syntaxes; asking for the stored one source=%s status=%d",
                     self.name, exc.status)
        return self._get(path, accept_header(["*"]), stream=True)

    def _retrieve_path(self, path: str, sink: StagingSink, result: RetrieveResult) -> None:
        response = self._open_retrieval(path)
        spool, cfg = self.node.spool, self.node.config
        reader: Part10Reader | None = None
        try:
            try:
                boundary = boundary_of(response.headers.get("Content-Type", ""))
            except MultipartError as exc:
                raise HttpSourceError(f"DICOMweb {self.name}: WADO-RS answer is not multipart/related DICOM: {exc}",
                                      retryable=False) from exc
            reader = Part10Reader(boundary, spool, _MAX_PARTS, cfg.scp.max_dataset_bytes, self.name[:16])
            for chunk in response.iter_content(_CHUNK):
                reader.feed(chunk)
                _store_taken(reader.take(), sink, result, spool)
            reader.close()
            _store_taken(reader.take(), sink, result, spool)
        except MultipartError as exc:
            truncated = "ended before" in str(exc)
            raise HttpSourceError(f"DICOMweb {self.name}: WADO-RS body {'cut short' if truncated else 'malformed'}: {exc}",
                                  retryable=truncated) from exc
        except requests.RequestException as exc:
            raise HttpSourceError(f"DICOMweb {self.name}: WADO-RS transfer broke off: {type(exc).__name__}",
                                  retryable=True) from exc
        finally:
            if reader is not None:
                reader.abort()
            response.close()


def policy(poller: Poller) -> OutboundPolicy:
    """The outbound policy of a poller's service root (operator-configured: private ranges allowed)."""
    return OutboundPolicy.configured(poller.allow_link_local)


def _checked(uid: str, what: str) -> str:
    if not is_uid(uid):
        raise HttpSourceError(f"{what} {uid!r} is not a valid UID", retryable=False)
    return quote(uid, safe=".")


def _kind(path: str) -> str:
    """Which request failed, without UIDs: ``QIDO-RS studies``, ``WADO-RS series``, ..."""
    parts = path.strip("/").split("/")
    if len(parts) % 2:
        return f"QIDO-RS {parts[-1]}"
    return "WADO-RS " + {"studies": "study", "instances": "instance"}.get(parts[-2], parts[-2])


def _store_taken(parts: list[Part], sink: StagingSink, result: RetrieveResult, spool: Spool) -> None:
    """Store staged parts in order; if the sink gives up (closed, failing), discard the rest of them."""
    pending = list(parts)
    try:
        while pending:
            result.add(sink.store_staged(pending.pop(0)))
    finally:
        for part in pending:
            if part.temp is not None:
                spool.discard(part.fd, part.temp)
                part.fd, part.temp = None, None
