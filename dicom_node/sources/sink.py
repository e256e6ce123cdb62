"""Store retrieved instances through the durable C-STORE path.

Everything pulled (WADO-RS parts, C-GET sub-operations, session uploads) goes
through :class:`RetrievalSink`: bytes are staged in a spool temporary file,
checked and fsynced by :class:`~dicom_node.ingest.Ingestor`, and indexed
before :meth:`RetrievalSink.store_part10` returns. One retrieval is one
pseudo-association (calling AE = the source's name): released when the
retrieval finished, aborted when it failed, so the assembler completes a
pulled series exactly as it completes a pushed one.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from pydicom.dataset import Dataset

from dicom_node.config import NodeConfig
from dicom_node.errors import IngestError, StorageError
from dicom_node.index import Index, IndexWriter, ops
from dicom_node.ingest import Arrival, Ingestor
from dicom_node.scp.server import StorageServer
from dicom_node.spool import Spool
from dicom_node.staging import Part, PartWriter

log = logging.getLogger(__name__)

OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000


class NodeStorage(Protocol):
    """The storage half of a node that pulled instances go through.

    :class:`~dicom_node.node.Node` in ``serve``, and
    :class:`~dicom_node.commands.fetch.LocalStorage` in the CLI, both provide it.
    Sinks, sources and the poller take this instead of ``Any`` so that a missing or
    misnamed member is a type error rather than an ``AttributeError`` mid-retrieval.
    """

    @property
    def config(self) -> NodeConfig: ...

    @property
    def spool(self) -> Spool: ...

    @property
    def index(self) -> Index: ...

    @property
    def writer(self) -> IndexWriter: ...

    @property
    def ingestor(self) -> Ingestor: ...

    @property
    def scp(self) -> StorageServer: ...


@dataclass(frozen=True)
class Stored:
    """Outcome of one instance: PS3.4 status (0 = stored), reason, UIDs."""

    status: int
    reason: str | None
    sop_instance_uid: str
    outcome: str = ""  # "stored" | "replaced" | "duplicate" on success


class StagingSink:
    """What every sink shares: PS3.10 bytes or a Dataset are staged in a spool temporary file.

    Subclasses decide where a staged part goes (:meth:`store_staged`): the routed
    spool (:class:`RetrievalSink`) or a session's folder. ``source_ae`` is written
    as Source Application Entity Title (0002,0016) of the staged file.
    """

    source_ae = ""

    def _staging(self) -> tuple[Spool, int]:
        """The spool that stages parts and the largest dataset it takes."""
        raise NotImplementedError

    def store_staged(self, part: Part) -> Stored:
        """Store a part staged by :class:`~dicom_node.staging.PartWriter`; consumes its temporary file."""
        raise NotImplementedError

    def store_part10(self, chunks: Iterable[bytes] | bytes) -> Stored:
        """Store one PS3.10 file given as bytes or as an iterable of byte chunks.

        Returns the outcome; never raises for bad data (the status says why).
        """
        spool, max_bytes = self._staging()
        writer = PartWriter(spool, max_bytes, "application/dicom", self.source_ae)
        try:
            for chunk in ([chunks] if isinstance(chunks, (bytes, bytearray, memoryview)) else chunks):
                writer.feed(bytes(chunk))
        except BaseException:
            writer.discard()
            raise
        return self.store_staged(writer.finish())

    def store_dataset(self, dataset: Dataset, transfer_syntax: str | None = None) -> Stored:
        """Store a pydicom Dataset (C-GET sub-operations), encoded in ``transfer_syntax``.

        ``dataset.file_meta.TransferSyntaxUID`` is used when ``transfer_syntax`` is None.
        """
        from pydicom.dataset import FileMetaDataset
        from pydicom.filewriter import dcmwrite
        from pydicom.uid import UID

        ts = transfer_syntax or str(dataset.file_meta.TransferSyntaxUID)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        meta.TransferSyntaxUID = UID(ts)
        dataset.file_meta = meta
        buf = io.BytesIO()
        try:
            dcmwrite(buf, dataset, enforce_file_format=True)
        except (ValueError, TypeError, AttributeError) as exc:
            return self._record(Stored(CANNOT_UNDERSTAND, f"cannot encode the dataset: {exc}",
                                       str(getattr(dataset, "SOPInstanceUID", ""))))
        return self.store_part10(buf.getvalue())

    def _record(self, result: Stored) -> Stored:
        raise NotImplementedError


class RetrievalSink(StagingSink):
    """A pseudo-association that stores retrieved instances durably.

    Parameters
    ----------
    node : NodeStorage
        The node's storage (spool, index writer, ingestor, config, SCP metrics).
    calling_ae : str
        Recorded as the calling AE of the instances (the source's name, at most 16 characters).
    source : str
        Recorded in ``instances.source``, e.g. ``"dicomweb:orthanc"`` or ``"qr:pacs"``.
    peer_host : str
        Host the data came from (for the association row only).
    on_stored : callable, optional
        Called with each :class:`Stored` outcome once the instance is durable (or refused);
        a poller records its seen set there. An exception it raises ends the retrieval.

    Use as a context manager::

        with RetrievalSink(node, "orthanc", "dicomweb:orthanc") as sink:
            sink.store_part10(chunks)
    """

    def __init__(self, node: NodeStorage, calling_ae: str, source: str, peer_host: str = "",
                 on_stored: Callable[[Stored], None] | None = None) -> None:
        self.node = node
        self.on_stored = on_stored
        self.calling_ae = self.source_ae = calling_ae[:16]
        self.source = source
        self.peer_host = peer_host
        self.association_id = uuid.uuid4().hex
        self.stored: list[Stored] = []
        self._open = False

    def __enter__(self) -> RetrievalSink:
        cfg = self.node.config
        self.node.writer.run(lambda c: ops.begin_association(
            c, self.association_id, self.calling_ae, cfg.scp.ae_title, self.peer_host, time.time()))
        self._open = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close("released" if exc_type is None else "aborted")

    def close(self, state: str) -> None:
        """End the pseudo-association (``"released"`` lets its series complete)."""
        if not self._open:
            return
        self._open = False
        count = sum(1 for s in self.stored if s.status == 0)
        try:
            self.node.writer.run(lambda c: ops.end_association(c, self.association_id, state, time.time(), count))
        except StorageError as exc:
            log.error("could not record the end of retrieval assoc=%s error=%s", self.association_id, exc)

    def _staging(self) -> tuple[Spool, int]:
        if not self._open:
            raise StorageError("the retrieval sink is not open")
        return self.node.spool, self.node.config.scp.max_dataset_bytes

    def store_staged(self, part: Part) -> Stored:
        """Store a part already staged in the spool by :class:`~dicom_node.staging.Part10Reader`.

        The part's temporary file is consumed (moved into the spool or removed) whatever happens.
        """
        if not self._open:
            if part.temp is not None:
                self.node.spool.discard(part.fd, part.temp)
                part.fd, part.temp = None, None
            raise StorageError("the retrieval sink is not open")
        if part.failure is not None:
            return self._record(Stored(part.failure[0], part.failure[1], part.sop_instance_uid))
        return self._ingest(part)

    def _ingest(self, part: Part) -> Stored:
        node = self.node
        if part.fd is None or part.temp is None:
            # PartWriter.finish() marks a part without staged data as failed, so only a part
            # handed over twice gets here; refuse it rather than ingest a closed file.
            return self._record(Stored(CANNOT_UNDERSTAND, "part has no staged data", part.sop_instance_uid))
        arrival = Arrival(fd=part.fd, temp=part.temp, data_offset=part.data_offset, size=part.size,
                          transfer_syntax=part.transfer_syntax, sop_class_uid=part.sop_class_uid,
                          sop_instance_uid=part.sop_instance_uid, calling_ae=self.calling_ae,
                          called_ae=node.config.scp.ae_title, association_id=self.association_id,
                          source=self.source)
        part.fd, part.temp = None, None
        try:
            outcome = node.ingestor.store(arrival)
        except IngestError as exc:
            log.warning("retrieved instance refused source=%s status=0x%04X reason=%s", self.source, exc.status, exc)
            result = Stored(exc.status, str(exc), part.sop_instance_uid)
        except StorageError as exc:
            log.error("retrieved instance failed to store source=%s error=%s", self.source, exc)
            result = Stored(OUT_OF_RESOURCES, "Out of resources: storage failure", part.sop_instance_uid)
        else:
            node.scp.ctx.metrics.count(outcome, arrival.size)
            result = Stored(0, None, part.sop_instance_uid, outcome)
        return self._record(result)

    def _record(self, result: Stored) -> Stored:
        self.stored.append(result)
        if self.on_stored is not None:
            self.on_stored(result)
        return result
