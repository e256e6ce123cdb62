"""Store the instances of one retrieval session in the session's own folder.

:class:`SessionSink` has the methods of :class:`~dicom_node.sources.sink.RetrievalSink`
(``store_part10``, ``store_dataset``) so DICOMweb and DIMSE sources retrieve into
it unchanged, but the files go to ``<storage.root>/sessions/<session id>/``, not
into the routed spool: a session feeds ``predict`` on request and never starts
routing jobs. Bytes are staged in a spool temporary file (with the spool's
bounds: dataset size, free-space reserve), their identifying header is checked,
and the file is fsynced and renamed to ``<sha256(SOP Instance UID)>.dcm`` before
its ``session_instances`` row is committed. File names derive from a hash, never
from a peer's value.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from dicom_node.errors import IngestError, StorageError
from dicom_node.index import InstanceRecord
from dicom_node.index import sessions as session_queries
from dicom_node.ingest import Arrival
from dicom_node.sources.sink import NodeStorage, StagingSink, Stored
from dicom_node.spool import Spool
from dicom_node.staging import Part

log = logging.getLogger(__name__)

OUT_OF_RESOURCES = 0xA700


def session_file_name(sop_instance_uid: str) -> str:
    """File name of an instance in a session folder; derived from a hash, never from the UID text."""
    return hashlib.sha256(sop_instance_uid.encode("ascii")).hexdigest()[:40] + ".dcm"


def _insert_op(session_id: str, row: Mapping[str, object]) -> Callable[[sqlite3.Connection], str | None]:
    """Index operation: add the instance row while the session exists; its outcome or None."""

    def op(conn: sqlite3.Connection) -> str | None:
        return session_queries.add_instance(conn, session_id, row)

    return op


class SessionSink(StagingSink):
    """Stores instances into one session's folder (see the module docstring).

    Parameters
    ----------
    node : NodeStorage
        The storage the files go through (``spool``, ``writer``, ``ingestor``, ``config``).
    session_id : str
        The server-generated session id (32 hex digits).
    folder : pathlib.Path
        The session's folder (created by the session service).
    cancelled : threading.Event, optional
        Set when the session is deleted or the node stops: later instances are refused.
    """

    source_ae = "SESSION"

    def __init__(self, node: NodeStorage, session_id: str, folder: Path, cancelled: threading.Event | None = None) -> None:
        self._node = node
        self.session_id = session_id
        self.folder = folder
        self.cancelled = cancelled or threading.Event()
        self.stored: list[Stored] = []
        self._lock = threading.Lock()

    @property
    def ok_count(self) -> int:
        """How many instances were stored."""
        return sum(1 for s in self.stored if s.status == 0)

    def _record(self, result: Stored) -> Stored:
        with self._lock:
            self.stored.append(result)
        return result

    def _staging(self) -> tuple[Spool, int]:
        return self._node.spool, self._node.config.scp.max_dataset_bytes

    def store_staged(self, part: Part) -> Stored:
        """Store a part staged by :class:`~dicom_node.staging.PartWriter` (uploads use this directly).

        The temporary file is consumed (moved or deleted) whatever happens.

        Raises
        ------
        StorageError
            The session was closed (deleted, expired, node stopping): the source should stop retrieving.
        """
        spool = self._node.spool
        if self.cancelled.is_set():
            if part.temp is not None:
                spool.discard(part.fd, part.temp)
                part.fd, part.temp = None, None
            raise StorageError("the session was closed")
        if part.failure is not None:
            return self._record(Stored(part.failure[0], part.failure[1], part.sop_instance_uid))
        assert part.temp is not None and part.fd is not None
        fd: int | None = part.fd
        temp = part.temp
        part.fd, part.temp = None, None
        try:
            record = self._check(temp, part)
        except IngestError as exc:
            spool.discard(fd, temp)
            return self._record(Stored(exc.status, str(exc), part.sop_instance_uid))
        name = session_file_name(record.sop_instance_uid)
        row = _session_row(record, name)
        final = self.folder / name
        try:
            assert fd is not None
            if spool.fsync:
                os.fsync(fd)
            os.close(fd)
            fd = None  # closed: a later failure must not close it again
            os.replace(temp, final)
            spool.sync_dirs({self.folder})
            outcome = self._node.writer.run(_insert_op(self.session_id, row))
        except (OSError, StorageError) as exc:
            log.error("session instance not stored session=%s error=%s", self.session_id,
                      getattr(exc, "strerror", None) or exc)
            spool.discard(fd, temp)
            return self._record(Stored(OUT_OF_RESOURCES, "Out of resources: cannot write the session file",
                                       record.sop_instance_uid))
        if outcome is None:  # deleted (or expired) while the instance arrived
            final.unlink(missing_ok=True)
            return self._record(Stored(OUT_OF_RESOURCES, "the session was closed", record.sop_instance_uid))
        return self._record(Stored(0, None, record.sop_instance_uid, outcome))

    def _check(self, temp: Path, part: Part) -> InstanceRecord:
        """The identifying header of a staged part, from the checks C-STORE uses."""
        arrival = Arrival(fd=-1, temp=temp, data_offset=part.data_offset, size=part.size,
                          transfer_syntax=part.transfer_syntax, sop_class_uid=part.sop_class_uid,
                          sop_instance_uid=part.sop_instance_uid, calling_ae=self.source_ae, called_ae="",
                          association_id="", source="session")
        return self._node.ingestor.check(arrival)


def _session_row(record: InstanceRecord, name: str) -> dict[str, object]:
    """The ``session_instances`` row of a checked instance stored as ``name`` in the session folder."""
    return {
        "sop_instance_uid": record.sop_instance_uid,
        "sop_class_uid": record.sop_class_uid,
        "series_instance_uid": record.series_instance_uid,
        "study_instance_uid": record.study_instance_uid,
        "transfer_syntax_uid": record.transfer_syntax_uid,
        "modality": record.modality,
        "instance_number": record.instance_number,
        "path": name,
        "size": record.size,
    }
