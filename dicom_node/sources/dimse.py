"""DIMSE Query/Retrieve SCU: C-FIND, then C-GET or C-MOVE (PS3.4 Annex C, Study Root).

:class:`DimseSource` implements the :class:`~dicom_node.sources.base.Source`
protocol against a PACS that speaks DIMSE only:

- ``find_studies`` / ``find_series`` / ``find_instances``: C-FIND at STUDY,
  SERIES and IMAGE level (PS3.4 C.6.2.1), asking for the instance counts
  (NumberOfStudyRelatedInstances, NumberOfSeriesRelatedInstances) a poller
  compares with what it already holds. C-FIND answers come in no particular
  order, so studies are sorted by (StudyDate, StudyInstanceUID) before the
  page ``[offset:offset + limit]`` is cut: pages stay stable between calls.
- ``retrieve``: by the remote's ``retrieve`` setting. C-GET brings the
  instances back on the same association as C-STORE sub-operations (we
  propose the storage SOP classes with SCP role selection) and each goes
  through the sink before we answer its status. C-MOVE asks the remote to
  C-STORE to ``move_destination`` (our own SCP, which must be listening);
  the index then says which requested instances arrived.

Failures raise :class:`~dicom_node.errors.SourceError` with a message that
names the remote and the cause (rejection reason, connection refused, the
PS3.4 failure status); ``retryable`` says whether a poller should back off
and try again. Instances refused one by one are reported in
:attr:`RetrieveResult.failed <dicom_node.sources.base.RetrieveResult.failed>`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.presentation import build_context

from dicom_node.config.sources import RemoteNode
from dicom_node.errors import DicomNodeError, SourceError
from dicom_node.pixels.syntaxes import EXPLICIT_VR_LE
from dicom_node.sources.base import RetrieveResult, SeriesSummary, StudySummary
from dicom_node.sources.dimse_move import part10_chunks, retrieve_by_move
from dicom_node.sources.dimse_net import (
    FIND_MODEL,
    GET_MODEL,
    associate,
    describe,
    get_contexts,
    require_context,
    responses,
    where,
)
from dicom_node.sources.sink import NodeStorage, RetrievalSink, StagingSink, Stored
from dicom_node.validators import is_uid

__all__ = ["DimseSource", "part10_chunks"]

log = logging.getLogger(__name__)

#: UIDs per C-GET/C-MOVE identifier: a UI element holds at most 64 KiB in Explicit VR.
_UIDS_PER_REQUEST = 500
_OUT_OF_RESOURCES = 0xA700
_CANNOT_UNDERSTAND = 0xC000


def _text(ds: Dataset | None, keyword: str) -> str:
    value = getattr(ds, keyword, "") if ds is not None else ""
    return "" if value is None else str(value)


def _count(ds: Dataset | None, keyword: str) -> int | None:
    value = getattr(ds, keyword, None) if ds is not None else None
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _values(ds: Dataset | None, keyword: str) -> tuple[str, ...]:
    value = getattr(ds, keyword, None) if ds is not None else None
    if value in (None, ""):
        return ()
    if isinstance(value, (MultiValue, list, tuple)):
        return tuple(str(v) for v in value)
    return (str(value),)


def _check_uid(value: str, what: str) -> str:
    if not is_uid(value):
        raise SourceError(f"{what} {value!r} is not a valid UID", retryable=False)
    return value


def _set_filter(ds: Dataset, keyword: str, value: str) -> None:
    """One matching key (PS3.4 C.2.2.2); a comma list becomes a value list, as in QIDO-RS."""
    if tag_for_keyword(keyword) is None:
        raise SourceError(f"filter {keyword!r} is not a DICOM keyword", retryable=False)
    if keyword == "QueryRetrieveLevel":
        raise SourceError("QueryRetrieveLevel is set by the query, not a filter", retryable=False)
    vr = dictionary_VR(keyword)
    if vr in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        raise SourceError(f"filter {keyword!r} has VR {vr}, which C-FIND cannot match", retryable=False)
    parts = [p.strip() for p in str(value).split(",")] if "," in str(value) and vr in ("CS", "UI") else None
    setattr(ds, keyword, parts if parts else str(value))


class DimseSource:
    """A remote Query/Retrieve SCP (PACS) as a :class:`~dicom_node.sources.base.Source`.

    Parameters
    ----------
    remote : RemoteNode
        The ``[[sources.remotes]]`` entry: AE title, host, port, TLS, timeouts, retrieve method.
    node : NodeStorage
        The node's storage: ``config`` (our AE title, the SCP's transfer syntaxes), and for
        C-MOVE ``index`` and ``spool`` (:class:`~dicom_node.node.Node`, or the CLI's local storage).
    """

    def __init__(self, remote: RemoteNode, node: NodeStorage) -> None:
        self.remote = remote
        self.node = node
        self.name = remote.name
        #: Where retrieved instances come from (recorded on the retrieval's association row).
        self.peer_host = remote.host

    # -- helpers -------------------------------------------------------------------------------------------

    @property
    def calling_ae(self) -> str:
        """Our AE title towards the remote."""
        return self.remote.calling_ae or str(self.node.config.scp.ae_title)

    @property
    def source_label(self) -> str:
        """What the index records as the source of instances retrieved from this remote."""
        return f"qr:{self.remote.name}"

    def sink(self, on_stored: Callable[[Stored], None] | None = None) -> RetrievalSink:
        """A :class:`RetrievalSink` recording ``qr:<name>`` with the remote's name as calling AE."""
        return RetrievalSink(self.node, self.remote.name, self.source_label, self.peer_host, on_stored)

    def find_on(self, assoc: Association, identifier: Dataset) -> list[Dataset]:
        """One C-FIND on an open association; the matches (PS3.4 C.4.1.1.4 statuses).

        Raises
        ------
        SourceError
            A failure status (0xA700 retryable; 0xA900, 0xCxxx not) or a missing response.
        """
        matches: list[Dataset] = []
        code, status, _ = responses(assoc, assoc.send_c_find(identifier, FIND_MODEL), self.remote, "C-FIND",
                                    lambda ds: matches.append(ds) if ds is not None else None)
        if code != 0:
            comment = _text(status, "ErrorComment")
            raise SourceError(
                f"C-FIND {identifier.QueryRetrieveLevel} failed at {where(self.remote)}: status {describe(code)}"
                + (f" - {comment}" if comment else ""), retryable=code & 0xFF00 == _OUT_OF_RESOURCES)
        return matches

    def _query(self, identifier: Dataset) -> list[Dataset]:
        with associate(self.remote, self.calling_ae, [build_context(FIND_MODEL)]) as assoc:
            require_context(assoc, self.remote, FIND_MODEL, "C-FIND")
            return self.find_on(assoc, identifier)

    @staticmethod
    def series_query(study_uid: str) -> Dataset:
        """SERIES-level identifier: the series of a study with Modality and NumberOfSeriesRelatedInstances."""
        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = ""
        ds.Modality = ""
        ds.SeriesNumber = ""
        ds.NumberOfSeriesRelatedInstances = ""
        return ds

    @staticmethod
    def instance_query(study_uid: str, series_uid: str) -> Dataset:
        """IMAGE-level identifier: SOP Instance UIDs and InstanceNumber of one series."""
        ds = Dataset()
        ds.QueryRetrieveLevel = "IMAGE"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ""
        ds.InstanceNumber = ""
        return ds

    # -- queries -------------------------------------------------------------------------------------------

    def find_studies(self, filters: dict[str, str], limit: int, offset: int = 0) -> list[StudySummary]:
        """C-FIND at STUDY level; one page of the matches sorted by (StudyDate, StudyInstanceUID).

        Parameters
        ----------
        filters : dict
            DICOM keyword -> matching value (wildcards, date ranges ``20260101-``; a comma list
            of a CS or UI attribute becomes a value list).
        limit, offset : int
            The page, cut client side (C-FIND has no paging).
        """
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = ""
        ds.StudyDate = ""
        ds.ModalitiesInStudy = ""
        ds.NumberOfStudyRelatedInstances = ""
        for keyword, value in filters.items():
            _set_filter(ds, keyword, value)
        studies = [StudySummary(_text(m, "StudyInstanceUID"), _count(m, "NumberOfStudyRelatedInstances"),
                                _text(m, "StudyDate"), _values(m, "ModalitiesInStudy"))
                   for m in self._query(ds) if _text(m, "StudyInstanceUID")]
        studies.sort(key=lambda s: (s.study_date, s.study_instance_uid))
        log.info("c-find studies remote=%s matches=%d", self.remote.name, len(studies))
        return studies[offset:offset + limit]

    def find_series(self, study_uid: str) -> list[SeriesSummary]:
        """C-FIND at SERIES level: the series of one study with NumberOfSeriesRelatedInstances."""
        _check_uid(study_uid, "study UID")
        return self.series_from(self._query(self.series_query(study_uid)), study_uid)

    @staticmethod
    def series_from(matches: list[Dataset], study_uid: str) -> list[SeriesSummary]:
        """Summaries of SERIES-level matches, by SeriesNumber then UID."""
        found = [(_count(m, "SeriesNumber") or 0, SeriesSummary(study_uid, _text(m, "SeriesInstanceUID"),
                                                                _count(m, "NumberOfSeriesRelatedInstances"),
                                                                _text(m, "Modality")))
                 for m in matches if _text(m, "SeriesInstanceUID")]
        found.sort(key=lambda pair: (pair[0], pair[1].series_instance_uid))
        return [s for _, s in found]

    def find_instances(self, study_uid: str, series_uid: str) -> list[str]:
        """C-FIND at IMAGE level: SOP Instance UIDs of one series, by InstanceNumber."""
        _check_uid(study_uid, "study UID")
        _check_uid(series_uid, "series UID")
        return self.instances_from(self._query(self.instance_query(study_uid, series_uid)))

    @staticmethod
    def instances_from(matches: list[Dataset]) -> list[str]:
        """SOP Instance UIDs of IMAGE-level matches, by InstanceNumber."""
        found = [(_count(m, "InstanceNumber") or 0, _text(m, "SOPInstanceUID")) for m in matches]
        return [uid for _, uid in sorted(found) if uid]

    def locate(self, series_uid: str | None = None, sop_instance_uid: str | None = None) -> list[tuple[str, str]]:
        """The (study, series) UIDs holding a series or an instance, by one C-FIND (PS3.4 C.4.1).

        A SERIES-level (or IMAGE-level) query with the known UID and StudyInstanceUID
        (and SeriesInstanceUID) as universal return keys.
        Strictly hierarchical SCPs (PS3.4 C.4.1.2.2.1) may answer nothing without the
        study UID; the caller then says the study UID is needed.
        """
        ds = Dataset()
        if sop_instance_uid is not None:
            ds.QueryRetrieveLevel = "IMAGE"
            ds.SOPInstanceUID = _check_uid(sop_instance_uid, "SOP Instance UID")
            ds.SeriesInstanceUID = series_uid or ""
        elif series_uid is not None:
            ds.QueryRetrieveLevel = "SERIES"
            ds.SeriesInstanceUID = _check_uid(series_uid, "series UID")
        else:
            raise SourceError("locate needs a series or SOP Instance UID", retryable=False)
        ds.StudyInstanceUID = ""
        found: dict[tuple[str, str], None] = {}
        for match in self._query(ds):
            study, series = _text(match, "StudyInstanceUID"), _text(match, "SeriesInstanceUID")
            if is_uid(study) and is_uid(series) and (series_uid is None or series == series_uid):
                found[(study, series)] = None
        log.info("c-find locate remote=%s level=%s matches=%d", self.remote.name, ds.QueryRetrieveLevel, len(found))
        return list(found)

    # -- retrieval -----------------------------------------------------------------------------------------

    def retrieve(self, study_uid: str, series_uid: str | None, sink: StagingSink,
                 instances: Sequence[str] | None = None) -> RetrieveResult:
        """Retrieve a study, a series, or ``instances`` of a series into ``sink`` (C-GET or C-MOVE).

        Parameters
        ----------
        study_uid : str
            The study.
        series_uid : str, optional
            One series of it; None retrieves the whole study.
        sink : object
            ``store_part10(bytes) -> Stored`` (a :class:`RetrievalSink` or a session's sink).
        instances : sequence of str, optional
            Only these SOP Instance UIDs of ``series_uid``.

        Returns
        -------
        RetrieveResult
            Stored, duplicate and failed SOP Instance UIDs.

        Raises
        ------
        SourceError
            The association failed, or the remote answered a failure status before any
            instance moved (e.g. 0xA801 move destination unknown, 0xC000 unable to process).
        """
        _check_uid(study_uid, "study UID")
        if series_uid is not None:
            _check_uid(series_uid, "series UID")
        if instances is not None:
            if series_uid is None:
                raise SourceError("retrieving single instances needs their series UID", retryable=False)
            for uid in instances:
                _check_uid(uid, "SOP Instance UID")
            if not instances:
                return RetrieveResult()
        if self.remote.retrieve == "c-move":
            return retrieve_by_move(self, study_uid, series_uid, sink, instances)
        return self._retrieve_get(study_uid, series_uid, sink, instances)

    def identifiers(self, study_uid: str, series_uid: str | None,
                    instances: Sequence[str] | None) -> Iterator[Dataset]:
        """C-GET/C-MOVE identifiers (PS3.4 C.4.2.1.4.1): one, or one per batch of instance UIDs."""
        batches: list[list[str] | None] = [None] if instances is None else [
            list(instances[i:i + _UIDS_PER_REQUEST]) for i in range(0, len(instances), _UIDS_PER_REQUEST)]
        for batch in batches:
            ds = Dataset()
            ds.QueryRetrieveLevel = "IMAGE" if batch is not None else "SERIES" if series_uid else "STUDY"
            ds.StudyInstanceUID = study_uid
            if series_uid:
                ds.SeriesInstanceUID = series_uid
            if batch is not None:
                ds.SOPInstanceUID = batch if len(batch) > 1 else batch[0]
            yield ds

    def _retrieve_get(self, study_uid: str, series_uid: str | None, sink: StagingSink,
                      instances: Sequence[str] | None) -> RetrieveResult:
        result = RetrieveResult()
        contexts, exchange = get_contexts(self._transfer_syntaxes())
        exchange.handlers.append((evt.EVT_C_STORE, lambda event: self._on_store(event, sink, result)))
        with associate(self.remote, self.calling_ae, contexts, exchange) as assoc:
            require_context(assoc, self.remote, GET_MODEL, "C-GET")
            for identifier in self.identifiers(study_uid, series_uid, instances):
                code, status, ident = responses(assoc, assoc.send_c_get(identifier, GET_MODEL), self.remote, "C-GET")
                try:
                    self.account(result, "C-GET", code, status, ident)
                except SourceError as exc:
                    self.explain_unknown(assoc, study_uid, series_uid, exc)
                    raise
        log.info("c-get remote=%s study=%s series=%s stored=%d duplicates=%d failed=%d", self.remote.name,
                 study_uid, series_uid or "*", len(result.stored), len(result.duplicates), len(result.failed))
        return result

    def _transfer_syntaxes(self) -> list[str]:
        """The SCP's accepted syntaxes with Explicit VR Little Endian first (what the remote most likely holds)."""
        syntaxes = [str(ts) for ts in self.node.config.scp.transfer_syntaxes]
        return ([EXPLICIT_VR_LE] if EXPLICIT_VR_LE in syntaxes else []) + [ts for ts in syntaxes if ts != EXPLICIT_VR_LE]

    def _on_store(self, event: evt.Event, sink: StagingSink, result: RetrieveResult) -> int:
        """EVT_C_STORE of a C-GET sub-operation: store durably, then answer (never raises into pynetdicom)."""
        uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
        try:
            data = event.encoded_dataset()
        except (AttributeError, ValueError, KeyError) as exc:
            result.failed[uid] = f"cannot read the C-STORE sub-operation: {exc}"
            return _CANNOT_UNDERSTAND
        try:
            stored = sink.store_part10(data)
        except (DicomNodeError, OSError) as exc:
            log.error("retrieved instance not stored remote=%s error=%s", self.remote.name, exc)
            result.failed[uid] = f"not stored: {exc}"
            return _OUT_OF_RESOURCES
        result.add(stored, uid, describe)
        return int(stored.status)

    def missing(self, assoc: Association, study_uid: str, series_uid: str | None) -> str | None:
        """What the remote does not hold (``"study ..."`` / ``"series ..."``), by a C-FIND; None when it does."""
        matches = self.find_on(assoc, self.series_query(study_uid))
        series = {s.series_instance_uid for s in self.series_from(matches, study_uid)}
        if not series:
            return f"study {study_uid}"
        if series_uid and series_uid not in series:
            return f"series {series_uid} of study {study_uid}"
        return None

    def explain_unknown(self, assoc: Association, study_uid: str, series_uid: str | None, exc: SourceError) -> None:
        """Turn a retrieve failure status into "not found" when the remote holds no such study or series.

        PACS (Orthanc among them) answer a C-GET/C-MOVE of an unknown UID with 0xC000
        rather than success with no sub-operations; a C-FIND tells the cases apart.
        """
        if not assoc.is_established or not any(cx.abstract_syntax == FIND_MODEL for cx in assoc.accepted_contexts):
            return
        try:
            what = self.missing(assoc, study_uid, series_uid)
        except SourceError:
            return
        if what is not None:
            raise SourceError(f"{what} not found at {where(self.remote)} ({exc})", retryable=False) from exc

    def account(self, result: RetrieveResult, op: str, code: int, status: Dataset, ident: Dataset | None) -> None:
        """Fold a final C-GET/C-MOVE response into ``result`` (PS3.4 C.4.2.1.4, C.4.3.1.4)."""
        failed_uids = _values(ident, "FailedSOPInstanceUIDList")
        for uid in failed_uids:
            result.failed.setdefault(uid, f"{op} sub-operation failed at {where(self.remote)}")
        reported = _count(status, "NumberOfFailedSuboperations") or 0
        if reported > len(failed_uids):
            known = sum(1 for uid in result.failed if uid)
            if reported > known:
                result.failed.setdefault("", f"{reported} {op} sub-operations failed at {where(self.remote)}")
        if code in (0x0000, 0xB000):
            return
        comment = _text(status, "ErrorComment")
        message = f"{op} failed at {where(self.remote)}: status {describe(code)}" + (f" - {comment}" if comment else "")
        moved = _count(status, "NumberOfCompletedSuboperations") or 0
        if not (result.stored or result.duplicates or moved):
            raise SourceError(message, retryable=code & 0xFF00 == _OUT_OF_RESOURCES)
        result.failed.setdefault("", message)

