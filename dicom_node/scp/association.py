"""One accepted connection: negotiation, then C-ECHO / C-STORE / C-FIND / C-GET / C-MOVE until release or abort.

Runs in its own thread with a blocking socket. P-DATA dataset fragments are
written from the receive buffer straight into the temporary spool file, so a
1 GB instance never sits in memory. Every failure becomes a DIMSE status or an
A-ABORT; nothing raised here reaches the peer as anything else.

A Query/Retrieve request is not spooled: its identifier is kept in memory
(bounded), and once complete :class:`~dicom_node.scp.qr.QueryRetrieveService`
runs the operation to its final response, driving the socket meanwhile.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from dicom_node.errors import (
    AssociationError,
    IngestError,
    InsufficientSpaceError,
    StorageError,
)
from dicom_node.index import ops
from dicom_node.ingest import Arrival
from dicom_node.scp import pdu as P
from dicom_node.scp.context import ScpContext
from dicom_node.scp.filemeta import file_meta
from dicom_node.scp.negotiation import (
    APPLICATION_CONTEXT,
    REASON_APP_CONTEXT,
    REASON_LOCAL_LIMIT,
    RJ_PERMANENT,
    RJ_TRANSIENT,
    SRC_PRESENTATION,
    SRC_USER,
    MalformedRequest,
    Negotiated,
    Rejection,
    check_access,
    decode_request,
    negotiate,
    reject_pdu,
)
from dicom_node.scp.qr import QR_COMMANDS, QueryRetrieveService
from dicom_node.scp.tls import peer_subject

log = logging.getLogger(__name__)

# PS3.4 / PS3.7 Annex C statuses used here.
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
UNRECOGNISED_OPERATION = 0x0211
#: PS3.7 Annex C "Refused: Not Authorized": a C-STORE-RQ on a context where the
#: requestor took only the SCP role (PS3.7 D.3.3.4) may not be performed by us.
NOT_AUTHORIZED = 0x0124
#: Q/R identifiers are small; a long list of UIDs still fits.
MAX_IDENTIFIER = 1 << 20


@dataclass
class _Incoming:
    """A dataset being received for one C-STORE request."""

    command: P.Command
    context_id: int
    fd: int | None = None
    temp: Path | None = None
    data_offset: int = 0
    size: int = 0
    written: int = 0
    refusal: tuple[int, str] | None = None
    #: The identifier of a C-FIND / C-GET / C-MOVE request (None for C-STORE).
    identifier: bytearray | None = None


class AssociationHandler:
    """Serve one TCP connection as a DICOM association acceptor.

    Parameters
    ----------
    sock : socket.socket
        The accepted connection.
    peer_host : str
        Peer IP address (for the allowlist; never used as a path).
    ctx : ScpContext
        Configuration, storage and counters shared by all associations.
    over_limit : bool
        True when accepting would exceed ``max_associations``: the request is
        answered with A-ASSOCIATE-RJ (transient, local limit exceeded).
    """

    def __init__(self, sock: socket.socket, peer_host: str, ctx: ScpContext, over_limit: bool = False) -> None:
        self.sock = sock
        self.peer_host = peer_host
        self.ctx = ctx
        self.over_limit = over_limit
        self.id = uuid.uuid4().hex
        self.instances = 0
        #: Instances acknowledged but already held (kept-first duplicates).
        self.duplicates = 0
        self._assoc: Negotiated | None = None
        self._cmd_buf = bytearray()
        self._incoming: _Incoming | None = None
        self._ended = False
        self._qr: QueryRetrieveService | None = None
        #: Recorded in the index's associations table (instances and series link to it).
        self._registered = False

    # -- lifecycle ---------------------------------------------------------------

    def run(self) -> None:
        """Handle the connection to its end; never raises."""
        state = "aborted"
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.settimeout(self.ctx.config.acse_timeout)
            reader = P.PduReader(self.sock, self.ctx.config.max_pdu)
            if not self._associate(reader):
                return
            # An index that cannot write does not end the association: C-ECHO still answers and
            # each C-STORE gets 0xA700 until the index can record the association (see _open).
            self._register()
            self.sock.settimeout(self.ctx.config.network_timeout)
            state = self._serve(reader)
        except TimeoutError:
            log.warning("association timed out, aborting assoc=%s", self.id)
            self._send(P.abort_pdu())
        except (ConnectionError, OSError) as exc:
            log.info("association ended by the transport assoc=%s reason=%s", self.id, type(exc).__name__)
        except AssociationError as exc:
            # PS3.8 Table 9-26: the reason the PDU layer found, else reason-not-specified.
            reason = exc.reason if isinstance(exc, P.PduError) else P.ABORT_REASON_NOT_SPECIFIED
            log.warning("protocol error, aborting assoc=%s peer=%s abort_reason=%d error=%s",
                        self.id, self.peer_host, reason, exc)
            self._send(P.abort_pdu(P.ABORT_SOURCE_PROVIDER, reason))
        except StorageError as exc:
            log.error("storage failure, aborting assoc=%s error=%s", self.id, exc)
            self._send(P.abort_pdu())
        except Exception as exc:  # a bug: still one log record and an A-ABORT, never a dead thread
            log.error("internal error, aborting assoc=%s error=%s", self.id, type(exc).__name__, exc_info=exc)
            self._send(P.abort_pdu())
        finally:
            self._drop_incoming()
            if self._registered:
                self._end(state)
            self.sock.close()

    def _register(self) -> bool:
        """Record the association in the index (once); False, logged, while the index cannot write."""
        if self._registered:
            return True
        assoc = self._assoc
        assert assoc is not None  # only after negotiation
        try:
            self.ctx.writer.run(
                lambda c: ops.begin_association(c, self.id, assoc.calling_ae, assoc.called_ae, self.peer_host, time.time())
            )
        except StorageError as exc:
            log.error("cannot record the association assoc=%s error=%s", self.id, exc)
            return False
        self._registered = True
        return True

    def _end(self, state: str) -> None:
        if self._ended:
            return
        self._ended = True
        delivered: int | None = None
        try:
            delivered = self.ctx.writer.run(lambda c: ops.end_association(c, self.id, state, time.time(), self.instances))
        except StorageError as exc:
            log.error("could not record the end of assoc=%s error=%s", self.id, exc)
        log.info("association %s assoc=%s instances=%d", state, self.id, self.instances)
        if state == "released" and delivered == 0:
            self._log_duplicates_only()

    def _log_duplicates_only(self) -> None:
        """Say why a released association starts nothing when it held only known instances.

        Under ``storage.duplicate_policy = "keep_first"`` an instance already
        held is acknowledged with Success (PS3.4 B.2.3) and dropped, so a
        re-sent series adds no series and no job. A duplicate that completes a
        series still being received links this association to it; ``_end``
        only calls this when it delivered to no series at all.
        """
        if self.duplicates == 0 or self.duplicates != self.instances:
            return
        assert self._assoc is not None  # only registered associations end
        log.info(
            "association stored only duplicates: no new series, nothing will run; send new UIDs or use "
            "storage.duplicate_policy=replace assoc=%s calling_ae=%s instances=%d duplicates=%d",
            self.id, self._assoc.calling_ae, self.instances, self.duplicates,
        )

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            log.debug("send failed assoc=%s error=%s", self.id, exc)

    def _associate(self, reader: P.PduReader) -> bool:
        pdu_type, data = reader.read()
        if pdu_type == P.ABORT:
            return False  # PS3.8 Table 9-10, Sta2 + Evt16 (AA-2): close, send nothing
        if pdu_type != P.ASSOCIATE_RQ:
            raise P.PduError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}", P.ABORT_UNEXPECTED_PDU)
        try:
            request = decode_request(bytes(data))
        except MalformedRequest as exc:
            log.warning("association rejected: malformed A-ASSOCIATE-RQ peer=%s source=%d reason=%d error=%s",
                        self.peer_host, exc.source, exc.reason, exc)
            self.ctx.metrics.rejected += 1
            self._send(reject_pdu(Rejection(RJ_PERMANENT, exc.source, exc.reason, str(exc))))
            return False
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        rejection = self._rejection(request, calling, called)
        if rejection is not None:
            log.warning(
                "association rejected calling_ae=%s called_ae=%s peer=%s reason=%s",
                calling, called, self.peer_host, rejection.why,
            )
            self.ctx.metrics.rejected += 1
            self._send(reject_pdu(rejection))
            return False
        self._assoc = negotiate(self.ctx.config, request, self.ctx.supported)
        self._send(self._assoc.ac_pdu)
        log.info(
            "association accepted assoc=%s calling_ae=%s called_ae=%s peer=%s contexts=%d",
            self.id, calling, called, self.peer_host, len(self._assoc.contexts),
        )
        return True

    def _rejection(self, request: object, calling: str, called: str) -> Rejection | None:
        if str(getattr(request, "application_context_name", "")) != APPLICATION_CONTEXT:
            return Rejection(RJ_PERMANENT, SRC_USER, REASON_APP_CONTEXT, "application context not supported")
        rejection = check_access(self.ctx.config, calling, called, self.peer_host, peer_subject(self.sock))
        if rejection is None and self.over_limit:
            rejection = Rejection(RJ_TRANSIENT, SRC_PRESENTATION, REASON_LOCAL_LIMIT, "association limit reached")
        return rejection

    # -- message loop ------------------------------------------------------------

    def _serve(self, reader: P.PduReader) -> str:
        cfg = self.ctx.config
        timeout = cfg.network_timeout
        while True:
            # Mid-message the peer owes us the rest within the DIMSE timeout; between
            # messages an idle association may wait for the network timeout.
            wanted = cfg.dimse_timeout if (self._incoming is not None or self._cmd_buf) else cfg.network_timeout
            if wanted != timeout:
                self.sock.settimeout(wanted)
                timeout = wanted
            pdu_type, data = reader.read()
            if pdu_type == P.P_DATA_TF:
                for context_id, control, fragment in P.iter_pdvs(data):
                    self._on_pdv(context_id, control, fragment)
            elif pdu_type == P.RELEASE_RQ:
                if self._incoming is not None or self._cmd_buf:
                    raise P.PduError("A-RELEASE-RQ in the middle of a message", P.ABORT_UNEXPECTED_PDU)
                # Record the release before confirming it: a crash right after the
                # A-RELEASE-RP must not turn a released association into an aborted one.
                self._end("released")
                self._send(P.release_rp())
                return "released"
            elif pdu_type == P.ABORT:
                return "aborted"
            else:
                raise P.PduError(
                    f"unexpected PDU type 0x{pdu_type:02X} on an established association", P.ABORT_UNEXPECTED_PDU
                )

    def _on_pdv(self, context_id: int, control: int, fragment: memoryview) -> None:
        assert self._assoc is not None
        if context_id not in self._assoc.contexts:
            raise P.PduError(f"presentation context {context_id} was not accepted", P.ABORT_INVALID_PARAMETER)
        if control & 0x01:
            if self._incoming is not None:
                raise AssociationError("command fragment while a dataset is being received")
            self._cmd_buf += fragment
            if len(self._cmd_buf) > 65536:
                raise AssociationError("command set larger than 64 KiB")
            if control & 0x02:
                command = P.decode_command(self._cmd_buf)
                self._cmd_buf = bytearray()
                self._on_command(context_id, command)
            return
        incoming = self._incoming
        if incoming is None or incoming.context_id != context_id:
            raise AssociationError("dataset fragment without a command")
        self._write(incoming, fragment)
        if control & 0x02:
            self._incoming = None
            self._finish(incoming)

    def _on_command(self, context_id: int, command: P.Command) -> None:
        field_ = command.command_field
        if not command.has_dataset:
            if field_ == P.C_ECHO_RQ:
                self._respond(context_id, command, SUCCESS)
            elif field_ == P.C_CANCEL_RQ:
                pass  # for an operation already answered: nothing to cancel, and C-CANCEL has no response
            else:
                self._respond(context_id, command, UNRECOGNISED_OPERATION, "operation not supported")
            return
        incoming = _Incoming(command, context_id)
        if field_ == P.C_STORE_RQ and context_id not in self._assoc_scp_contexts():
            log.warning("C-STORE refused: the peer took only the SCP role on this context assoc=%s context=%d",
                        self.id, context_id)
            incoming.refusal = (NOT_AUTHORIZED, "Refused: SCU role not negotiated for this SOP class")
        elif field_ == P.C_STORE_RQ:
            self._open(incoming)
        elif field_ in QR_COMMANDS:
            incoming.identifier = bytearray()
        else:
            incoming.refusal = (UNRECOGNISED_OPERATION, "operation not supported")
        self._incoming = incoming

    def _assoc_scp_contexts(self) -> frozenset[int]:
        assert self._assoc is not None
        return self._assoc.scp_contexts

    def _open(self, incoming: _Incoming) -> None:
        if not self._register():  # the index cannot write: nothing could be acknowledged
            incoming.refusal = (OUT_OF_RESOURCES, "Out of resources: the index cannot write")
            return
        try:
            self.ctx.spool.check_space()
            incoming.fd, incoming.temp = self.ctx.spool.new_temp()
        except InsufficientSpaceError:
            self.ctx.metrics.refused_disk += 1
            log.warning("refusing C-STORE: spool free space below the reserve assoc=%s", self.id)
            incoming.refusal = (OUT_OF_RESOURCES, "Out of resources: disk space reserve reached")
            return
        except StorageError as exc:
            log.error("cannot open a temporary file assoc=%s error=%s", self.id, exc)
            incoming.refusal = (OUT_OF_RESOURCES, "Out of resources: cannot write")
            return
        assert self._assoc is not None
        header = file_meta(
            incoming.command.text(P.TAG_AFFECTED_SOP_CLASS) or "",
            incoming.command.text(P.TAG_AFFECTED_SOP_INSTANCE) or "",
            self._assoc.contexts[incoming.context_id][1],
            self._assoc.calling_ae,
        )
        incoming.data_offset = len(header)
        self._write_fd(incoming, memoryview(header))

    def _write(self, incoming: _Incoming, fragment: memoryview) -> None:
        incoming.size += len(fragment)
        if incoming.identifier is not None:
            self._keep_identifier(incoming, fragment)
            return
        if incoming.refusal is not None:
            return
        if incoming.size > self.ctx.config.max_dataset_bytes:
            incoming.refusal = (OUT_OF_RESOURCES, "Out of resources: dataset larger than the configured limit")
            self._drop(incoming)
            return
        self._write_fd(incoming, fragment)

    def _keep_identifier(self, incoming: _Incoming, fragment: memoryview) -> None:
        assert incoming.identifier is not None
        if incoming.size > MAX_IDENTIFIER:
            incoming.identifier = None
            incoming.refusal = (0xC000, "Unable to process: identifier larger than 1 MiB")
            return
        incoming.identifier += fragment

    def _write_fd(self, incoming: _Incoming, data: memoryview) -> None:
        try:
            view = memoryview(data)
            offset = incoming.written
            while view:
                written = os.write(incoming.fd, view)  # type: ignore[arg-type]
                view = view[written:]
                incoming.written += written
            self.ctx.spool.start_writeback(incoming.fd, offset, incoming.written - offset)  # type: ignore[arg-type]
        except OSError as exc:
            log.error("write to the spool failed assoc=%s error=%s", self.id, exc.strerror)
            incoming.refusal = (OUT_OF_RESOURCES, "Out of resources: write failed")
            self._drop(incoming)

    def _drop(self, incoming: _Incoming) -> None:
        if incoming.temp is not None:
            self.ctx.spool.discard(incoming.fd, incoming.temp)
            incoming.fd, incoming.temp = None, None

    def _drop_incoming(self) -> None:
        if self._incoming is not None:
            self._drop(self._incoming)
            self._incoming = None

    def _finish(self, incoming: _Incoming) -> None:
        if incoming.identifier is not None:
            if self._qr is None:
                assert self._assoc is not None
                self._qr = QueryRetrieveService(self.sock, self._assoc, self.ctx, self.id)
            self._qr.serve(incoming.context_id, incoming.command, bytes(incoming.identifier))
            return
        status, comment = self._store(incoming)
        self._respond(incoming.context_id, incoming.command, status, comment)

    def _store(self, incoming: _Incoming) -> tuple[int, str | None]:
        if incoming.refusal is not None:
            return incoming.refusal
        assert self._assoc is not None and incoming.fd is not None and incoming.temp is not None
        arrival = Arrival(
            fd=incoming.fd,
            temp=incoming.temp,
            data_offset=incoming.data_offset,
            size=incoming.size,
            transfer_syntax=self._assoc.contexts[incoming.context_id][1],
            sop_class_uid=incoming.command.text(P.TAG_AFFECTED_SOP_CLASS) or "",
            sop_instance_uid=incoming.command.text(P.TAG_AFFECTED_SOP_INSTANCE) or "",
            calling_ae=self._assoc.calling_ae,
            called_ae=self._assoc.called_ae,
            association_id=self.id,
        )
        incoming.fd, incoming.temp = None, None
        try:
            outcome = self.ctx.ingestor.store(arrival)
        except IngestError as exc:
            log.warning("C-STORE refused assoc=%s status=0x%04X reason=%s", self.id, exc.status, exc)
            return exc.status, str(exc)
        except StorageError as exc:
            log.error("C-STORE failed to store assoc=%s error=%s", self.id, exc)
            return OUT_OF_RESOURCES, "Out of resources: storage failure"
        self.instances += 1
        if outcome == ops.DUPLICATE:
            self.duplicates += 1
        self.ctx.metrics.count(outcome, incoming.size)
        return SUCCESS, None

    def _respond(self, context_id: int, command: P.Command, status: int, comment: str | None = None) -> None:
        payload = P.encode_response(
            command.command_field or 0,
            command.uint16(P.TAG_MESSAGE_ID) or 0,
            status,
            command.text(P.TAG_AFFECTED_SOP_CLASS),
            command.text(P.TAG_AFFECTED_SOP_INSTANCE),
            comment,
        )
        self.sock.sendall(P.p_data_pdu(context_id, 0x03, payload))
