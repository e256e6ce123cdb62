"""PDU framing and DIMSE command set codec (PS3.8 section 9, PS3.7 section 9 and annex E).

Command sets are always Implicit VR Little Endian (PS3.7 6.3.1); they are small,
so they are parsed and built by hand here rather than through a full dataset.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

from dicom_node.errors import AssociationError

# PDU types (PS3.8 Table 9-1).
ASSOCIATE_RQ = 0x01
ASSOCIATE_AC = 0x02
ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
RELEASE_RQ = 0x05
RELEASE_RP = 0x06
ABORT = 0x07

# DIMSE command fields (PS3.7 Table E.1-1).
C_STORE_RQ = 0x0001
C_GET_RQ = 0x0010
C_FIND_RQ = 0x0020
C_MOVE_RQ = 0x0021
C_ECHO_RQ = 0x0030
C_CANCEL_RQ = 0x0FFF
C_STORE_RSP = 0x8001
NO_DATASET = 0x0101
DATASET_PRESENT = 0x0001

# Command set tags (group 0000).
TAG_GROUP_LENGTH = 0x00000000
TAG_AFFECTED_SOP_CLASS = 0x00000002
TAG_COMMAND_FIELD = 0x00000100
TAG_MESSAGE_ID = 0x00000110
TAG_MESSAGE_ID_RESPONDED = 0x00000120
TAG_MOVE_DESTINATION = 0x00000600
TAG_PRIORITY = 0x00000700
TAG_DATASET_TYPE = 0x00000800
TAG_STATUS = 0x00000900
TAG_ERROR_COMMENT = 0x00000902
TAG_AFFECTED_SOP_INSTANCE = 0x00001000
TAG_REMAINING = 0x00001020
TAG_COMPLETED = 0x00001021
TAG_FAILED = 0x00001022
TAG_WARNING = 0x00001023
TAG_MOVE_ORIGINATOR_AE = 0x00001030
TAG_MOVE_ORIGINATOR_ID = 0x00001031

# A-ABORT source and reasons (PS3.8 Table 9-26); the reasons apply to the service-provider source.
ABORT_SOURCE_USER = 0x00
ABORT_SOURCE_PROVIDER = 0x02
ABORT_REASON_NOT_SPECIFIED = 0x00
ABORT_UNRECOGNIZED_PDU = 0x01
ABORT_UNEXPECTED_PDU = 0x02
ABORT_UNRECOGNIZED_PARAMETER = 0x04
ABORT_UNEXPECTED_PARAMETER = 0x05
ABORT_INVALID_PARAMETER = 0x06

_U16 = struct.Struct("<H")
_ELEM = struct.Struct("<HHI")
_PDU_HEADER = struct.Struct(">BxI")
_PDV_HEADER = struct.Struct(">IBB")
_GROUP_LENGTH = struct.Struct("<HHII")
_FIXED_RESPONSE = struct.Struct("<" + "HHIH" * 4)


class PduError(AssociationError):
    """A PDU that breaks PS3.8: answered with A-ABORT (service provider) and this reason.

    Parameters
    ----------
    message : str
        What is wrong, for the log (never PDU content: it may carry PHI).
    reason : int
        A-ABORT reason (PS3.8 Table 9-26).
    """

    def __init__(self, message: str, reason: int = ABORT_REASON_NOT_SPECIFIED) -> None:
        super().__init__(message)
        self.reason = reason


class PduReader:
    """Read whole PDUs from a socket into one reusable buffer.

    Parameters
    ----------
    sock : socket.socket
        Connected socket.
    max_pdu : int
        Largest P-DATA-TF PDU length we advertised (PS3.8 D.1); longer ones are
        a protocol violation and end the association.
    max_other : int
        Largest length accepted for any other PDU type (A-ASSOCIATE-RQ carries
        presentation contexts, so it is bounded separately).
    """

    def __init__(self, sock: socket.socket, max_pdu: int, max_other: int = 1 << 20) -> None:
        self._sock = sock
        self._max_pdu = max_pdu
        self._max_other = max_other
        self._buf = bytearray(max(max_pdu, 65536) + 6)
        self._view = memoryview(self._buf)

    def _recv_into(self, view: memoryview) -> None:
        got, want = 0, len(view)
        while got < want:
            n = self._sock.recv_into(view[got:], want - got)
            if n == 0:
                raise ConnectionError("peer closed the connection")
            got += n

    def read(self) -> tuple[int, memoryview]:
        """Return ``(pdu_type, whole_pdu)``; the view is valid until the next call.

        Raises
        ------
        ConnectionError
            The peer closed the connection.
        PduError
            Unknown PDU type or a length over the bounds, raised before any
            buffer is sized for the claimed length.
        """
        self._recv_into(self._view[:6])
        pdu_type, length = _PDU_HEADER.unpack_from(self._buf, 0)
        if pdu_type not in (ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT):
            raise PduError(f"unrecognised PDU type 0x{pdu_type:02X}", ABORT_UNRECOGNIZED_PDU)
        limit = self._max_pdu if pdu_type == P_DATA_TF else self._max_other
        if length > limit:
            raise PduError(
                f"PDU type 0x{pdu_type:02X} of {length} bytes exceeds the limit of {limit}", ABORT_INVALID_PARAMETER
            )
        if length + 6 > len(self._buf):
            self._buf = bytearray(length + 6)
            self._buf[:6] = _PDU_HEADER.pack(pdu_type, length)
            self._view = memoryview(self._buf)
        self._recv_into(self._view[6 : 6 + length])
        return pdu_type, self._view[: 6 + length]


def iter_pdvs(pdu: memoryview) -> list[tuple[int, int, memoryview]]:
    """Split a P-DATA-TF PDU into ``(context_id, control_header, fragment)`` items (PS3.8 9.3.5.1).

    Raises
    ------
    PduError
        A PDV item runs past the end of the PDU or is shorter than its header.
    """
    out = []
    pos, end = 6, len(pdu)
    while pos < end:
        if pos + 6 > end:
            raise PduError("truncated presentation data value item", ABORT_INVALID_PARAMETER)
        length, context_id, control = _PDV_HEADER.unpack_from(pdu, pos)
        if length < 2 or pos + 4 + length > end:
            raise PduError("presentation data value item length is invalid", ABORT_INVALID_PARAMETER)
        out.append((context_id, control, pdu[pos + 6 : pos + 4 + length]))
        pos += 4 + length
    return out


@dataclass
class Command:
    """A decoded DIMSE command set: raw element values by tag."""

    elements: dict[int, bytes] = field(default_factory=dict)

    def uint16(self, tag: int) -> int | None:
        """Return a US element's value, or None when absent."""
        raw = self.elements.get(tag)
        return _U16.unpack_from(raw)[0] if raw is not None and len(raw) >= 2 else None

    def text(self, tag: int) -> str | None:
        """Return a UI/AE/LO element's value without padding, or None when absent."""
        raw = self.elements.get(tag)
        return raw.decode("ascii", "replace").rstrip("\x00 ") if raw is not None else None

    @property
    def command_field(self) -> int | None:
        """The DIMSE Command Field (0000,0100)."""
        return self.uint16(TAG_COMMAND_FIELD)

    @property
    def has_dataset(self) -> bool:
        """True unless Command Data Set Type (0000,0800) is 0x0101 (PS3.7 E.1)."""
        return self.uint16(TAG_DATASET_TYPE) not in (None, NO_DATASET)


def decode_command(data: bytes | bytearray) -> Command:
    """Decode an Implicit VR Little Endian command set.

    Raises
    ------
    AssociationError
        The command set is malformed.
    """
    cmd = Command()
    pos, end = 0, len(data)
    while pos < end:
        if pos + 8 > end:
            raise AssociationError("truncated command set element")
        group, elem, length = _ELEM.unpack_from(data, pos)
        pos += 8
        if group != 0 or pos + length > end:
            raise AssociationError("command set element outside group 0000 or past the end")
        cmd.elements[elem] = bytes(data[pos : pos + length])
        pos += length
    return cmd


def _pad(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def _uid_element(element: int, uid: str) -> bytes:
    value = _pad(uid.encode("ascii", "replace"), b"\x00")
    return _ELEM.pack(0, element, len(value)) + value


def encode_response(
    command_field: int,
    message_id: int,
    status: int,
    sop_class_uid: str | None = None,
    sop_instance_uid: str | None = None,
    error_comment: str | None = None,
) -> bytes:
    """Build a response command set with no dataset (PS3.7 9.3.1.2, 9.3.5.2).

    Parameters
    ----------
    command_field : int
        The request's command field; the response sets bit 15 (0x8000).
    message_id : int
        Message ID of the request being responded to.
    status : int
        PS3.7 Annex C status.
    sop_class_uid, sop_instance_uid : str, optional
        Affected SOP Class / Instance UID echoed from the request.
    error_comment : str, optional
        Error Comment (0000,0902), at most 64 characters, never PHI.
    """
    # Elements in ascending tag order (PS3.5 7.1): 0002, 0100, 0120, 0800, 0900, [0902], 1000.
    body = _uid_element(0x0002, sop_class_uid) if sop_class_uid else b""
    body += _FIXED_RESPONSE.pack(0, 0x0100, 2, command_field | 0x8000, 0, 0x0120, 2, message_id,
                                 0, 0x0800, 2, NO_DATASET, 0, 0x0900, 2, status)
    if error_comment:
        comment = _pad(error_comment[:64].encode("ascii", "replace"), b" ")
        body += _ELEM.pack(0, 0x0902, len(comment)) + comment
    if sop_instance_uid:
        body += _uid_element(0x1000, sop_instance_uid)
    return _GROUP_LENGTH.pack(0, 0, 4, len(body)) + body


@dataclass
class SubOperations:
    """Sub-operation counts of a C-GET or C-MOVE (PS3.7 9.1.3.1, 9.1.4.1)."""

    remaining: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0


def _us(element: int, value: int) -> bytes:
    return _ELEM.pack(0, element, 2) + _U16.pack(value)


def _text_element(element: int, text: str, limit: int) -> bytes:
    value = _pad(text[:limit].encode("ascii", "replace"), b" ")
    return _ELEM.pack(0, element, len(value)) + value


def _command(elements: dict[int, bytes]) -> bytes:
    # Elements in ascending tag order (PS3.5 7.1), after the group length.
    body = b"".join(elements[tag] for tag in sorted(elements))
    return _GROUP_LENGTH.pack(0, 0, 4, len(body)) + body


def encode_qr_response(
    command_field: int,
    message_id: int,
    status: int,
    sop_class_uid: str,
    *,
    has_dataset: bool = False,
    counts: SubOperations | None = None,
    final: bool = False,
    error_comment: str | None = None,
) -> bytes:
    """Build a C-FIND, C-GET or C-MOVE response command set (PS3.7 9.3.2.2, 9.3.3.2, 9.3.4.2).

    Parameters
    ----------
    command_field : int
        The request's command field; the response sets bit 15.
    message_id : int
        Message ID of the request being responded to.
    status : int
        PS3.4 C.4 status (0xFF00 pending, 0x0000, 0xB000, 0xFE00, 0xA702 ...).
    sop_class_uid : str
        Affected SOP Class UID (the Q/R information model).
    has_dataset : bool
        True when an identifier follows (a match, or a Failed SOP Instance UID List).
    counts : SubOperations, optional
        C-GET/C-MOVE sub-operation counts; Remaining is left out of a final
        response other than Cancel (PS3.7 C.4.2.1.3).
    final : bool
        True for the last response of the operation.
    error_comment : str, optional
        Error Comment (0000,0902), at most 64 characters, never PHI.
    """
    elements = {
        0x0002: _uid_element(0x0002, sop_class_uid),
        0x0100: _us(0x0100, command_field | 0x8000),
        0x0120: _us(0x0120, message_id),
        0x0800: _us(0x0800, DATASET_PRESENT if has_dataset else NO_DATASET),
        0x0900: _us(0x0900, status),
    }
    if error_comment:
        elements[0x0902] = _text_element(0x0902, error_comment, 64)
    if counts is not None:
        if not final or status == 0xFE00:
            elements[0x1020] = _us(0x1020, counts.remaining)
        elements[0x1021] = _us(0x1021, counts.completed)
        elements[0x1022] = _us(0x1022, counts.failed)
        elements[0x1023] = _us(0x1023, counts.warning)
    return _command(elements)


def encode_store_rq(
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    move_originator: tuple[str, int] | None = None,
) -> bytes:
    """Build a C-STORE-RQ command set, medium priority (PS3.7 9.3.1.1).

    Parameters
    ----------
    message_id : int
        Our Message ID for this sub-operation.
    sop_class_uid, sop_instance_uid : str
        Affected SOP Class / Instance UID of the dataset that follows.
    move_originator : (str, int), optional
        AE title and Message ID of the C-MOVE this sub-operation serves.
    """
    elements = {
        0x0002: _uid_element(0x0002, sop_class_uid),
        0x0100: _us(0x0100, C_STORE_RQ),
        0x0110: _us(0x0110, message_id),
        0x0700: _us(0x0700, 0x0000),
        0x0800: _us(0x0800, DATASET_PRESENT),
        0x1000: _uid_element(0x1000, sop_instance_uid),
    }
    if move_originator is not None:
        elements[0x1030] = _text_element(0x1030, move_originator[0], 16)
        elements[0x1031] = _us(0x1031, move_originator[1])
    return _command(elements)


def p_data_pdu(context_id: int, control: int, payload: bytes | memoryview) -> bytes:
    """Wrap one fragment in a single-PDV P-DATA-TF PDU (PS3.8 9.3.5)."""
    pdv = _PDV_HEADER.pack(len(payload) + 2, context_id, control) + payload
    return _PDU_HEADER.pack(P_DATA_TF, len(pdv)) + pdv


def release_rp() -> bytes:
    """Return an A-RELEASE-RP PDU (PS3.8 9.3.7)."""
    return _PDU_HEADER.pack(RELEASE_RP, 4) + b"\x00" * 4


def abort_pdu(source: int = ABORT_SOURCE_PROVIDER, reason: int = ABORT_REASON_NOT_SPECIFIED) -> bytes:
    """Return an A-ABORT PDU (PS3.8 9.3.8); source 2 = service provider, reasons in Table 9-26."""
    return _PDU_HEADER.pack(ABORT, 4) + bytes([0, 0, source, reason])
