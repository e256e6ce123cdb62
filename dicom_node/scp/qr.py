"""Study Root Query/Retrieve SCP for the node's result objects: C-FIND, C-GET, C-MOVE (PS3.4 C.4).

An operation runs in its association's thread and drives the socket itself
until it ends: between C-FIND matches it looks for a C-CANCEL-RQ without
blocking; during a C-GET it sends each C-STORE-RQ sub-operation on this
association and reads the C-STORE-RSP (and any C-CANCEL) before the next one;
during a C-MOVE it stores through a pynetdicom association to the configured
destination (:func:`dicom_node.delivery.dimse.send_dimse`). It reads with a
:class:`~dicom_node.scp.pdu.PduReader` of its own, so the views the message
loop still holds on its buffer stay valid.

Statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4): 0xFF00 pending, 0x0000
success, 0xFE00 cancelled, 0xB000 sub-operations complete with failures or
warnings, 0xA702 no sub-operation could be performed, 0xA801 move destination
unknown, 0xA700/0xA701 index unavailable, 0xA900 identifier does not fit the
SOP class, 0xC000 identifier cannot be decoded.
"""

from __future__ import annotations

import logging
import select
import socket
import sqlite3
from collections import deque
from dataclasses import dataclass, field

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom.dsutils import split_dataset

from dicom_node.delivery.classify import Outcome, Verdict
from dicom_node.delivery.dimse import send_dimse
from dicom_node.errors import (
    AssociationError,
    DeliveryError,
    DicomNodeError,
    IdentifierError,
    PixelError,
    StorageError,
)
from dicom_node.pixels.transcode import transcode
from dicom_node.scp import pdu as P
from dicom_node.scp.context import ResultArchive, ScpContext
from dicom_node.scp.negotiation import (
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
    Negotiated,
)
from dicom_node.scp.qr_match import (
    Query,
    ResultFile,
    decode_dataset,
    encode_dataset,
    find,
    parse_query,
    select_results,
)

log = logging.getLogger(__name__)

QR_COMMANDS = {P.C_FIND_RQ: STUDY_ROOT_FIND, P.C_GET_RQ: STUDY_ROOT_GET, P.C_MOVE_RQ: STUDY_ROOT_MOVE}
_NAMES = {P.C_FIND_RQ: "c-find", P.C_GET_RQ: "c-get", P.C_MOVE_RQ: "c-move"}
PENDING, SUCCESS, CANCELLED, WARNING = 0xFF00, 0x0000, 0xFE00, 0xB000
#: Datasets loaded into memory per C-MOVE association (SEGs can be large).
_MOVE_BATCH = 16
_MAX_MESSAGE = 1 << 20
_FILE_ERRORS = (OSError, InvalidDicomError, ValueError, TypeError, KeyError, AttributeError, EOFError)


class _Cancelled(DicomNodeError):
    """Raised out of the C-MOVE outcome callback to stop storing after a C-CANCEL-RQ."""


@dataclass
class _Message:
    context_id: int
    command: P.Command
    dataset: bytes | None


@dataclass
class _Operation:
    """One C-FIND, C-GET or C-MOVE in progress."""

    context_id: int
    command_field: int
    message_id: int
    sop_class: str
    syntax: str
    counts: P.SubOperations = field(default_factory=P.SubOperations)
    failed_uids: list[str] = field(default_factory=list)
    cancelled: bool = False

    @property
    def name(self) -> str:
        return _NAMES[self.command_field]

    def count(self, uid: str, status: int | None) -> None:
        """Count one finished sub-operation by its C-STORE status (PS3.4 B.2.3)."""
        self.counts.remaining = max(self.counts.remaining - 1, 0)
        if status == 0x0000:
            self.counts.completed += 1
        elif status is not None and (status & 0xF000 == 0xB000 or status == 0x0001):
            self.counts.warning += 1
        else:
            self.counts.failed += 1
            self.failed_uids.append(uid)


def _store_status(outcome: Outcome) -> int | None:
    """The C-STORE status a delivery outcome stands for; None when the object was not stored."""
    if outcome.verdict is Verdict.SUCCESS:
        return SUCCESS
    if outcome.verdict is Verdict.WARNING:
        return outcome.status if outcome.status is not None and outcome.status & 0xF000 == 0xB000 else WARNING
    return None


class QueryRetrieveService:
    """Answer C-FIND, C-GET and C-MOVE requests of one association.

    Parameters
    ----------
    sock : socket.socket
        The association's connected socket.
    assoc : Negotiated
        Accepted contexts, SCU-role contexts and the peer's maximum PDU length.
    ctx : ScpContext
        Shared SCP state; ``ctx.archive`` holds the result objects.
    association_id : str
        For logs.
    """

    def __init__(self, sock: socket.socket, assoc: Negotiated, ctx: ScpContext, association_id: str) -> None:
        self.sock = sock
        self.assoc = assoc
        self.ctx = ctx
        self.id = association_id
        self._reader = P.PduReader(sock, ctx.config.max_pdu)
        self._pending: deque[_Message] = deque()
        limit = assoc.peer_max_pdu or ctx.config.max_pdu
        self._fragment = max(min(limit, 1 << 22) - 6, 1)
        self._message_id = 0

    # -- entry -----------------------------------------------------------------------

    def serve(self, context_id: int, command: P.Command, identifier: bytes) -> None:
        """Run one request to its final response; socket errors propagate to the association."""
        field_ = command.command_field or 0
        abstract, syntax = self.assoc.contexts[context_id]
        op = _Operation(context_id, field_, command.uint16(P.TAG_MESSAGE_ID) or 0, abstract, syntax)
        if QR_COMMANDS.get(field_) != abstract:
            self._respond(op, 0x0122, final=True, comment="SOP class not supported on this presentation context")
            return
        archive = self.ctx.archive
        if archive is None:
            self._respond(op, 0xC000, final=True, comment="query/retrieve is not available on this node")
            return
        try:
            query = parse_query(decode_dataset(identifier, syntax, self.ctx.config.max_inflated_bytes),
                                retrieve=field_ != P.C_FIND_RQ)
        except IdentifierError as exc:
            log.warning("%s refused assoc=%s status=0x%04X reason=%s", op.name, self.id, exc.status, exc)
            self._respond(op, exc.status, final=True, comment=str(exc))
            return
        saved = self.sock.gettimeout()
        self.sock.settimeout(self.ctx.config.dimse_timeout)
        try:
            if field_ == P.C_FIND_RQ:
                self._find(op, archive, query)
            elif field_ == P.C_GET_RQ:
                self._get(op, archive, query)
            else:
                self._move(op, archive, query, (command.text(P.TAG_MOVE_DESTINATION) or "").strip())
        finally:
            self.sock.settimeout(saved)

    # -- C-FIND ----------------------------------------------------------------------

    def _select(self, op: _Operation, archive: ResultArchive, query: Query) -> list[ResultFile] | None:
        """The result files a C-GET or C-MOVE sends; None when the index could not be read (answered)."""
        try:
            conn = archive.index.reader()
            try:
                return select_results(conn, self.ctx.spool, query)
            finally:
                conn.close()
        except (StorageError, sqlite3.Error) as exc:
            log.error("%s cannot read the index assoc=%s error=%s", op.name, self.id, exc)
            self._respond(op, 0xA701, final=True, comment="Out of resources: index unavailable")
            return None

    def _find(self, op: _Operation, archive: ResultArchive, query: Query) -> None:
        try:
            conn = archive.index.reader()
            try:
                identifiers = list(find(conn, query, archive.ae_title))
            finally:
                conn.close()
        except IdentifierError as exc:
            log.warning("c-find refused assoc=%s status=0x%04X reason=%s", self.id, exc.status, exc)
            self._respond(op, exc.status, final=True, comment=str(exc))
            return
        except (StorageError, sqlite3.Error) as exc:
            log.error("c-find cannot read the index assoc=%s error=%s", self.id, exc)
            self._respond(op, 0xA700, final=True, comment="Out of resources: index unavailable")
            return
        matches = 0
        for identifier in identifiers:
            if self._cancel_requested(op):
                log.info("c-find cancelled assoc=%s level=%s matches=%d", self.id, query.level, matches)
                self._respond(op, CANCELLED, final=True)
                return
            try:
                self._respond(op, PENDING, identifier=identifier)
            except IdentifierError as exc:
                self._respond(op, exc.status, final=True, comment=str(exc))
                return
            matches += 1
        log.info("c-find assoc=%s level=%s matches=%d", self.id, query.level, matches)
        self._respond(op, SUCCESS, final=True)

    # -- C-GET / C-MOVE --------------------------------------------------------------

    def _get(self, op: _Operation, archive: ResultArchive, query: Query) -> None:
        files = self._select(op, archive, query)
        if files is None:
            return
        op.counts.remaining = len(files)
        for f in files:
            if self._cancel_requested(op):
                break
            op.count(f.sop_instance_uid, self._store_here(op, f))
            if op.counts.remaining and not op.cancelled:
                self._respond(op, PENDING, counts=op.counts)
        self._final(op, query)

    def _move(self, op: _Operation, archive: ResultArchive, query: Query, destination: str) -> None:
        dest = archive.move_destinations.get(destination)
        if dest is None:
            log.warning("c-move refused assoc=%s destination=%s reason=unknown", self.id, destination[:16])
            self._respond(op, 0xA801, final=True, comment="Move destination unknown")
            return
        files = self._select(op, archive, query)
        if files is None:
            return
        op.counts.remaining = len(files)

        def on_outcome(outcome: Outcome) -> None:
            op.count(outcome.sop_instance_uid, _store_status(outcome))
            if op.counts.remaining:
                self._respond(op, PENDING, counts=op.counts)
            if self._cancel_requested(op):
                raise _Cancelled("C-CANCEL-RQ received")

        try:
            for start in range(0, len(files), _MOVE_BATCH):
                if self._cancel_requested(op):
                    break
                loaded = []
                for f in files[start : start + _MOVE_BATCH]:
                    try:
                        loaded.append(pydicom.dcmread(f.path))
                    except _FILE_ERRORS as exc:
                        log.error("c-move cannot read a result sop_instance_uid=%s error=%s", f.sop_instance_uid,
                                  type(exc).__name__)
                        op.count(f.sop_instance_uid, None)
                if loaded:
                    try:
                        send_dimse(dest, loaded, on_outcome)
                    except DeliveryError as exc:
                        log.error("c-move destination unusable assoc=%s destination=%s error=%s",
                                  self.id, destination, exc)
                        for ds in loaded:
                            op.count(str(ds.SOPInstanceUID), None)
        except _Cancelled:
            pass
        self._final(op, query, destination)

    def _final(self, op: _Operation, query: Query, destination: str | None = None) -> None:
        c = op.counts
        failed = Dataset()
        failed.FailedSOPInstanceUIDList = op.failed_uids
        if op.cancelled:
            self._respond(op, CANCELLED, identifier=failed if op.failed_uids else None, counts=c, final=True)
            status = CANCELLED
        elif not c.failed and not c.warning:
            status = SUCCESS
            self._respond(op, SUCCESS, counts=c, final=True)
        elif not c.completed and not c.warning:
            status = 0xA702
            self._respond(op, status, identifier=failed, counts=c, final=True,
                          comment="Unable to perform sub-operations")
        else:
            status = WARNING
            self._respond(op, status, identifier=failed, counts=c, final=True)
        log.info("%s assoc=%s level=%s destination=%s completed=%d failed=%d warning=%d status=0x%04X", op.name,
                 self.id, query.level, destination or "-", c.completed, c.failed, c.warning, status)

    def _store_here(self, op: _Operation, f: ResultFile) -> int | None:
        """One C-GET sub-operation on this association; returns the C-STORE-RSP status (None: not sent)."""
        syntaxes = {cid: ts for cid, (abstract, ts) in self.assoc.scu_contexts.items() if abstract == f.sop_class_uid}
        if not syntaxes:
            log.warning("c-get sub-operation failed assoc=%s sop_instance_uid=%s reason=no context with the SCP "
                        "role for the SOP class", self.id, f.sop_instance_uid)
            return None
        try:
            context_id, data = self._dataset_for(f, syntaxes)
        except (PixelError, IdentifierError, *_FILE_ERRORS) as exc:
            log.error("c-get sub-operation failed assoc=%s sop_instance_uid=%s error=%s", self.id,
                      f.sop_instance_uid, type(exc).__name__)
            return None
        self._message_id = self._message_id % 0xFFFF + 1
        command = P.encode_store_rq(self._message_id, f.sop_class_uid, f.sop_instance_uid)
        self._send_message(context_id, command, data)
        return self._await_store_response(op, self._message_id)

    @staticmethod
    def _dataset_for(f: ResultFile, syntaxes: dict[int, str]) -> tuple[int, bytes]:
        """The context to send on and the dataset bytes: as stored when its syntax was accepted, else transcoded."""
        meta, offset = split_dataset(f.path)
        context_id = next((cid for cid, ts in syntaxes.items() if ts == str(meta.TransferSyntaxUID)), None)
        if context_id is not None:
            with open(f.path, "rb") as fh:  # byte for byte as stored: no re-encoding
                fh.seek(offset)
                return context_id, fh.read()
        # Transcoding keeps the UIDs (dicom_node.pixels.transcode), so the instance stays the same.
        out = transcode(pydicom.dcmread(f.path), list(syntaxes.values()))
        target = str(out.file_meta.TransferSyntaxUID)
        return next(cid for cid, ts in syntaxes.items() if ts == target), encode_dataset(out, target)

    def _await_store_response(self, op: _Operation, message_id: int) -> int | None:
        while True:
            message = self._read_message(block=True)
            assert message is not None
            command = message.command
            if command.command_field == P.C_STORE_RSP and command.uint16(P.TAG_MESSAGE_ID_RESPONDED) == message_id:
                return command.uint16(P.TAG_STATUS)
            self._interrupt(op, message)

    # -- messages ------------------------------------------------------------------------

    def _respond(self, op: _Operation, status: int, *, identifier: Dataset | None = None,
                 counts: P.SubOperations | None = None, final: bool = False, comment: str | None = None) -> None:
        data = encode_dataset(identifier, op.syntax) if identifier is not None else None
        command = P.encode_qr_response(op.command_field, op.message_id, status, op.sop_class,
                                       has_dataset=data is not None, counts=counts, final=final, error_comment=comment)
        self._send_message(op.context_id, command, data)

    def _send(self, pdu: bytes) -> None:
        self.sock.sendall(pdu)

    def _send_message(self, context_id: int, command: bytes, dataset: bytes | None) -> None:
        for start in range(0, len(command), self._fragment):
            last = start + self._fragment >= len(command)
            self._send(P.p_data_pdu(context_id, 0x03 if last else 0x01, command[start : start + self._fragment]))
        if dataset is None:
            return
        view = memoryview(dataset)
        for start in range(0, len(view), self._fragment):
            last = start + self._fragment >= len(view)
            self._send(P.p_data_pdu(context_id, 0x02 if last else 0x00, view[start : start + self._fragment]))

    def _cancel_requested(self, op: _Operation) -> bool:
        """Read whatever the peer sent meanwhile, without blocking; True once a C-CANCEL-RQ arrived."""
        while not op.cancelled:
            message = self._read_message(block=False)
            if message is None:
                break
            self._interrupt(op, message)
        return op.cancelled

    def _interrupt(self, op: _Operation, message: _Message) -> None:
        """A message received while ``op`` runs: C-CANCEL-RQ, or a protocol violation (PS3.7 9.3.2.3)."""
        command = message.command
        if command.command_field == P.C_CANCEL_RQ:
            if command.uint16(P.TAG_MESSAGE_ID_RESPONDED) == op.message_id:
                op.cancelled = True
            return
        raise AssociationError(
            f"DIMSE message 0x{command.command_field or 0:04X} while {op.name} is outstanding "
            "(asynchronous operations are not negotiated)"
        )

    def _read_message(self, block: bool) -> _Message | None:
        """The next whole DIMSE message; None when ``block`` is false and nothing is waiting."""
        if self._pending:
            return self._pending.popleft()
        if not block and not select.select([self.sock], [], [], 0)[0]:
            return None
        command_buf, dataset, command = bytearray(), None, None
        while not self._pending:
            pdu_type, pdu = self._reader.read()
            if pdu_type == P.ABORT:
                raise ConnectionAbortedError("A-ABORT received during a query/retrieve operation")
            if pdu_type != P.P_DATA_TF:
                raise AssociationError(f"PDU type 0x{pdu_type:02X} during a query/retrieve operation")
            for context_id, control, fragment in P.iter_pdvs(pdu):
                if context_id not in self.assoc.contexts:
                    raise AssociationError(f"presentation context {context_id} was not accepted")
                if control & 0x01:
                    command_buf += fragment
                    if len(command_buf) > 65536:
                        raise AssociationError("command set larger than 64 KiB")
                    if control & 0x02:
                        command = P.decode_command(command_buf)
                        command_buf = bytearray()
                        if command.has_dataset:
                            dataset = bytearray()
                        else:
                            self._pending.append(_Message(context_id, command, None))
                    continue
                if dataset is None or command is None:
                    raise AssociationError("dataset fragment without a command")
                dataset += fragment
                if len(dataset) > _MAX_MESSAGE:
                    raise AssociationError("unexpected large dataset during a query/retrieve operation")
                if control & 0x02:
                    self._pending.append(_Message(context_id, command, bytes(dataset)))
                    dataset, command = None, None
        return self._pending.popleft()
