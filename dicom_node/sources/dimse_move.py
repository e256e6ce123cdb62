"""Retrieval by C-MOVE to the node's own Storage SCP (PS3.4 C.4.2).

The remote opens its own association to ``move_destination`` (our SCP, which
must be listening where the remote's configuration says) and C-STOREs the
instances there; our SCP acknowledges each one only after it is durable in the
spool and index. So once the final C-MOVE response arrives the index can say
which requested instances arrived: the expected SOP Instance UIDs come from a
C-FIND at IMAGE level on the same association, and those already indexed
before the move count as duplicates.

Moved instances are then relabelled ``qr:<remote>`` in the index (our SCP
recorded them as pushed) and reported to the sink's ``on_stored`` callback, as
C-GET ones are. When the caller's sink does not write into the node's own index
(a retrieval session keeps its own), the moved files are also handed to that
sink from the spool; they stay in the node's spool and index as well.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Protocol

from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.presentation import build_context

from dicom_node.config.sources import RemoteNode
from dicom_node.errors import DicomNodeError, SourceError
from dicom_node.index import instances
from dicom_node.sources.base import RetrieveResult, SeriesSummary
from dicom_node.sources.dimse_net import (
    FIND_MODEL,
    MOVE_MODEL,
    associate,
    require_context,
    responses,
    where,
)
from dicom_node.sources.sink import NodeStorage, RetrievalSink, StagingSink, Stored

__all__ = ["DimseSource", "indexed", "part10_chunks", "retrieve_by_move"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class DimseSource(Protocol):
    """What a C-MOVE retrieval uses of :class:`dicom_node.sources.dimse.DimseSource`.

    A protocol rather than the class, so that ``dimse`` imports this module and not
    the other way round (the two used to import each other).
    """

    remote: RemoteNode
    node: NodeStorage

    @property
    def calling_ae(self) -> str: ...

    @property
    def source_label(self) -> str: ...

    def find_on(self, assoc: Association, identifier: Dataset) -> list[Dataset]: ...

    def series_query(self, study_uid: str) -> Dataset: ...

    def instance_query(self, study_uid: str, series_uid: str) -> Dataset: ...

    def series_from(self, matches: list[Dataset], study_uid: str) -> list[SeriesSummary]: ...

    def instances_from(self, matches: list[Dataset]) -> list[str]: ...

    def missing(self, assoc: Association, study_uid: str, series_uid: str | None) -> str | None: ...

    def identifiers(self, study_uid: str, series_uid: str | None,
                    instances: Sequence[str] | None) -> Iterator[Dataset]: ...

    def account(self, result: RetrieveResult, op: str, code: int, status: Dataset, ident: Dataset | None) -> None: ...

    def explain_unknown(self, assoc: Association, study_uid: str, series_uid: str | None, exc: SourceError) -> None: ...


def part10_chunks(path: str | os.PathLike[str]) -> Iterator[bytes]:
    """A spool file as chunks, for handing a moved instance to a foreign sink."""
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk

def indexed(node: NodeStorage, uids: Sequence[str]) -> dict[str, str]:
    """SOP Instance UID -> spool-relative path, for those of ``uids`` the index holds."""
    conn = node.index.reader()
    try:
        return instances.paths_of(conn, uids)
    finally:
        conn.close()


def _expected(source: DimseSource, assoc: Association, study_uid: str, series_uid: str | None) -> list[str]:
    """SOP Instance UIDs the move should bring: C-FIND at SERIES then IMAGE level."""
    series = [series_uid] if series_uid else [s.series_instance_uid for s in source.series_from(
        source.find_on(assoc, source.series_query(study_uid)), study_uid)]
    uids: list[str] = []
    for uid in series:
        uids.extend(source.instances_from(source.find_on(assoc, source.instance_query(study_uid, uid))))
    return uids


def retrieve_by_move(source: DimseSource, study_uid: str, series_uid: str | None, sink: StagingSink,
                     instances: Sequence[str] | None) -> RetrieveResult:
    """C-MOVE a study, series or instances to our SCP and report what arrived.

    Raises
    ------
    SourceError
        The association failed, the remote lacks C-FIND or C-MOVE, or it refused the
        move outright (0xA801 move destination unknown, 0xC000 ...).
    """
    remote = source.remote
    destination = remote.move_destination or str(source.node.config.scp.ae_title)
    result = RetrieveResult()
    with associate(remote, source.calling_ae, [build_context(FIND_MODEL), build_context(MOVE_MODEL)]) as assoc:
        require_context(assoc, remote, MOVE_MODEL, "C-MOVE")
        require_context(assoc, remote, FIND_MODEL, "C-FIND (needed to check what a C-MOVE brought)")
        expected = list(instances) if instances is not None else _expected(source, assoc, study_uid, series_uid)
        if not expected:
            what = source.missing(assoc, study_uid, series_uid)
            if what is not None:
                raise SourceError(f"{what} not found at {where(remote)} (C-FIND found nothing to move)",
                                  retryable=False)
            return result
        before = indexed(source.node, expected)
        for identifier in source.identifiers(study_uid, series_uid, instances):
            replies = assoc.send_c_move(identifier, destination, MOVE_MODEL)
            code, status, ident = responses(assoc, replies, remote, "C-MOVE")
            try:
                source.account(result, f"C-MOVE to {destination}", code, status, ident)
            except SourceError as exc:
                source.explain_unknown(assoc, study_uid, series_uid, exc)
                raise
    after = indexed(source.node, expected)
    for uid in expected:
        if uid in before:
            result.failed.pop(uid, None)
            result.duplicates.append(uid)
        elif uid in after:
            result.failed.pop(uid, None)
            result.stored.append(uid)
        else:
            result.failed.setdefault(uid, f"not received: {remote.ae_title} did not C-STORE it to {destination}")
    _confirm(source, sink, result)
    if not (isinstance(sink, RetrievalSink) and sink.node is source.node):
        result = _hand_over(source, sink, result, after)
    log.info("c-move remote=%s destination=%s study=%s series=%s stored=%d duplicates=%d failed=%d", remote.name,
             destination, study_uid, series_uid or "*", len(result.stored), len(result.duplicates), len(result.failed))
    return result


def _confirm(source: DimseSource, sink: StagingSink, result: RetrieveResult) -> None:
    """Record moved instances as retrieved from the remote.

    They arrived through our SCP, which recorded them as pushed (source ``dimse``);
    the move proves they came from this remote, so they get its label
    (``qr:<remote>``, which routing restrictions of a poller key on), and the sink's
    ``on_stored`` callback (a poller's seen set) hears of each, as for C-GET.
    """
    uids = list(result.stored)
    label = source.source_label

    def relabel(conn: sqlite3.Connection) -> None:
        instances.relabel_source(conn, uids, label)

    if uids:
        source.node.writer.run(relabel)
    notify = getattr(sink, "on_stored", None)
    if callable(notify):
        for uid in result.stored:
            notify(Stored(0, None, uid, "stored"))
        for uid in result.duplicates:
            notify(Stored(0, None, uid, "duplicate"))


def _hand_over(source: DimseSource, sink: StagingSink, moved: RetrieveResult, paths: dict[str, str]) -> RetrieveResult:
    """Give the moved files to a sink that keeps its own store (a retrieval session)."""
    result = RetrieveResult(failed=dict(moved.failed))
    for uid in moved.stored + moved.duplicates:
        try:
            stored = sink.store_part10(part10_chunks(source.node.spool.local(paths[uid])))
        except (DicomNodeError, OSError) as exc:
            result.failed[uid] = f"moved but not stored by the sink: {exc}"
            continue
        result.add(stored, uid)
    return result
