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
import io
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dicom_node.api.stow import Part, PartWriter
from dicom_node.errors import IngestError, StorageError
from dicom_node.ingest import clean_uid, read_header
from dicom_node.sources.sink import Stored

log = logging.getLogger(__name__)

OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
MISMATCH = 0xA900


def session_file_name(sop_instance_uid: str) -> str:
    """File name of an instance in a session folder; derived from a hash, never from the UID text."""
    return hashlib.sha256(sop_instance_uid.encode("ascii")).hexdigest()[:40] + ".dcm"


def _insert_op(session_id: str, row: dict[str, Any]) -> Callable[[sqlite3.Connection], str | None]:
    """Index operation: add the instance row while the session exists; its outcome or None."""

    def op(conn: sqlite3.Connection) -> str | None:
        if conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone() is None:
            return None
        existed = conn.execute("SELECT 1 FROM session_instances WHERE session_id = ? AND sop_instance_uid = ?",
                               (session_id, row["sop_instance_uid"])).fetchone() is not None
        conn.execute(
            "INSERT OR REPLACE INTO session_instances(session_id, sop_instance_uid, sop_class_uid, series_instance_uid,"
            " study_instance_uid, transfer_syntax_uid, modality, instance_number, path, size)"
            " VALUES (:session_id, :sop_instance_uid, :sop_class_uid, :series_instance_uid, :study_instance_uid,"
            " :transfer_syntax_uid, :modality, :instance_number, :path, :size)", {"session_id": session_id, **row})
        return "replaced" if existed else "stored"

    return op


class SessionSink:
    """Stores instances into one session's folder (see the module docstring).

    Parameters
    ----------
    node : object
        The :class:`~dicom_node.node.Node` (``spool``, ``writer``, ``config``).
    session_id : str
        The server-generated session id (32 hex digits).
    folder : pathlib.Path
        The session's folder (created by the session service).
    cancelled : threading.Event, optional
        Set when the session is deleted or the node stops: later instances are refused.
    """

    def __init__(self, node: Any, session_id: str, folder: Path, cancelled: threading.Event | None = None) -> None:
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

    def store_part10(self, chunks: Iterable[bytes] | bytes) -> Stored:
        """Store one PS3.10 file given as bytes or as an iterable of byte chunks.

        Returns the outcome (PS3.4 status 0 = stored); never raises for bad data
        (:class:`StorageError` once the session is closed).
        """
        cfg = self._node.config
        writer = PartWriter(self._node.spool, cfg.scp.max_dataset_bytes, "application/dicom")
        try:
            for chunk in ([chunks] if isinstance(chunks, (bytes, bytearray, memoryview)) else chunks):
                writer.feed(bytes(chunk))
        except BaseException:
            writer.discard()
            raise
        return self.store_staged(writer.finish())

    def store_dataset(self, dataset: Any, transfer_syntax: str | None = None) -> Stored:
        """Store a pydicom Dataset (C-GET sub-operations), encoded in ``transfer_syntax``."""
        from pydicom.dataset import FileMetaDataset
        from pydicom.filewriter import dcmwrite

        ts = transfer_syntax or str(dataset.file_meta.TransferSyntaxUID)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        meta.TransferSyntaxUID = ts
        dataset.file_meta = meta
        buf = io.BytesIO()
        try:
            dcmwrite(buf, dataset, enforce_file_format=True)
        except (ValueError, TypeError, AttributeError) as exc:
            return self._record(Stored(CANNOT_UNDERSTAND, f"cannot encode the dataset: {exc}",
                                       str(getattr(dataset, "SOPInstanceUID", ""))))
        return self.store_part10(buf.getvalue())

    def store_staged(self, part: Part) -> Stored:
        """Store a part staged by :class:`~dicom_node.api.stow.PartWriter` (uploads use this directly).

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
        fd, temp = part.fd, part.temp
        part.fd, part.temp = None, None
        try:
            row = self._check(temp, part)
        except IngestError as exc:
            spool.discard(fd, temp)
            return self._record(Stored(exc.status, str(exc), part.sop_instance_uid))
        final = self.folder / row["path"]
        try:
            if spool.fsync:
                os.fsync(fd)
            os.close(fd)
            fd = None
            os.replace(temp, final)
            spool.sync_dirs({self.folder})
            outcome = self._node.writer.run(_insert_op(self.session_id, row))
        except (OSError, StorageError) as exc:
            log.error("session instance not stored session=%s error=%s", self.session_id,
                      getattr(exc, "strerror", None) or exc)
            spool.discard(fd, temp)
            return self._record(Stored(OUT_OF_RESOURCES, "Out of resources: cannot write the session file",
                                       row["sop_instance_uid"]))
        if outcome is None:  # deleted (or expired) while the instance arrived
            final.unlink(missing_ok=True)
            return self._record(Stored(OUT_OF_RESOURCES, "the session was closed", row["sop_instance_uid"]))
        return self._record(Stored(0, None, row["sop_instance_uid"], outcome))

    def _check(self, temp: Path, part: Part) -> dict[str, Any]:
        header = read_header(temp, part.data_offset, part.transfer_syntax, self._node.config.scp.max_inflated_bytes)
        sop_class = clean_uid(str(header.get("sop_class_uid") or ""), "SOP Class UID (0008,0016)")
        sop_instance = clean_uid(str(header.get("sop_instance_uid") or ""), "SOP Instance UID (0008,0018)")
        if sop_instance != part.sop_instance_uid or sop_class != part.sop_class_uid:
            raise IngestError("SOP Class/Instance UID in the dataset differs from the File Meta Information", MISMATCH)
        number = str(header.get("instance_number") or "").strip()
        return {
            "sop_instance_uid": sop_instance,
            "sop_class_uid": sop_class,
            "series_instance_uid": clean_uid(str(header.get("series_instance_uid") or ""), "Series Instance UID (0020,000E)"),
            "study_instance_uid": clean_uid(str(header.get("study_instance_uid") or ""), "Study Instance UID (0020,000D)"),
            "transfer_syntax_uid": part.transfer_syntax,
            "modality": str(header.get("modality") or "")[:16] or None,
            "instance_number": int(number) if re.fullmatch(r"-?\d{1,11}", number) else None,
            "path": session_file_name(sop_instance),
            "size": part.size,
        }
