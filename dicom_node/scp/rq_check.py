"""Structural check of an A-ASSOCIATE-RQ PDU before pynetdicom decodes it (PS3.8 9.3.2, PS3.7 Annex D).

pynetdicom's decoder trusts the lengths it reads: a Maximum Length sub-item of
length 2 raises ``struct.error``, a presentation context item longer than the
bytes present fails an ``assert``, and a non-ASCII AE title or UID is logged at
ERROR with a traceback by ``pynetdicom.utils`` before anything is raised. This
walk checks every length, every fixed-size field and every text field first, so
the decoder only ever sees a PDU it can decode, and a bad one is answered with
the right refusal:

* the fixed header cannot be read (shorter than the 68 bytes of PS3.8 Table
  9-11): :class:`~dicom_node.scp.pdu.PduError`, answered with A-ABORT;
* protocol version without bit 0: A-ASSOCIATE-RJ, ACSE source,
  protocol-version-not-supported (PS3.8 Table 9-21);
* a called or calling AE title that is not an AE value (PS3.5 Table 6.2-1:
  ASCII without control characters or backslash, not all spaces):
  A-ASSOCIATE-RJ, service user, called/calling AE title not recognized;
* any other item or sub-item that is malformed: A-ASSOCIATE-RJ, service user,
  no-reason-given.

Messages name item types and offsets only, never bytes of the PDU.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dicom_node.errors import AssociationError
from dicom_node.scp import pdu as P
from dicom_node.validators import AE_TITLE_RE, is_uid

_HEADER_LENGTH = 74  # PDU header (6) + fixed fields of PS3.8 Table 9-11 (68)
_U16 = struct.Struct(">H")

# A-ASSOCIATE-RJ values (PS3.8 Table 9-21); dicom_node.scp.negotiation uses them from here.
RJ_PERMANENT, RJ_TRANSIENT = 0x01, 0x02
SRC_USER, SRC_ACSE, SRC_PRESENTATION = 0x01, 0x02, 0x03
# Reasons with the service-user source.
REASON_NO_REASON = 0x01
REASON_APP_CONTEXT = 0x02
REASON_CALLING_AE = 0x03
REASON_CALLED_AE = 0x07
# With the ACSE source.
REASON_PROTOCOL_VERSION = 0x02
# With the presentation source.
REASON_LOCAL_LIMIT = 0x02

# Variable items (PS3.8 Table 9-11) and user information sub-items (PS3.7 Annex D.3.3).
_APP_CONTEXT, _PRES_CONTEXT, _USER_INFO = 0x10, 0x20, 0x50
_ABSTRACT, _TRANSFER = 0x30, 0x40
_MAX_LENGTH, _IMPL_UID, _ASYNC, _ROLE, _IMPL_VERSION = 0x51, 0x52, 0x53, 0x54, 0x55
_SOP_EXTENDED, _SOP_COMMON_EXTENDED, _USER_IDENTITY = 0x56, 0x57, 0x58


class MalformedRequest(AssociationError):
    """An A-ASSOCIATE-RQ whose header was read but whose content is refused.

    Parameters
    ----------
    message : str
        What is wrong (item types and offsets, never PDU bytes).
    source, reason : int
        A-ASSOCIATE-RJ result source and reason (PS3.8 Table 9-21); the
        result is always permanent: the same bytes would fail again.
    """

    def __init__(self, message: str, source: int = SRC_USER, reason: int = REASON_NO_REASON) -> None:
        super().__init__(message)
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class _Item:
    kind: int
    offset: int
    value: bytes


def _items(data: bytes, start: int, end: int, where: str) -> list[_Item]:
    """Split ``data[start:end]`` into type/reserved/2-byte-length items; every length must fit."""
    out = []
    pos = start
    while pos < end:
        if pos + 4 > end:
            raise MalformedRequest(f"truncated item header in {where} at offset {pos}")
        kind = data[pos]
        (length,) = _U16.unpack_from(data, pos + 2)
        if pos + 4 + length > end:
            raise MalformedRequest(f"item 0x{kind:02X} in {where} at offset {pos} runs past its container")
        out.append(_Item(kind, pos, data[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return out


def _uid(value: bytes, what: str) -> None:
    """A UID as :func:`dicom_node.validators.is_uid` takes it (one trailing NUL pad allowed, PS3.8 Annex F)."""
    if value.endswith(b"\x00"):
        value = value[:-1]
    # latin-1 maps every byte to one character, so a non-ASCII byte fails the check instead of the decode.
    if not is_uid(value.decode("latin-1")):
        raise MalformedRequest(f"{what} is not a UID")


def _ae_title(value: bytes, what: str, reason: int) -> None:
    """An AE value (PS3.5 Table 6.2-1): ASCII, no control characters or backslash, not all spaces."""
    text = value.decode("latin-1")
    if not AE_TITLE_RE.fullmatch(text) or not text.strip():
        raise MalformedRequest(f"{what} is not a valid AE title", SRC_USER, reason)


def _length_prefixed(value: bytes, pos: int, what: str) -> tuple[bytes, int]:
    """A 2-byte length and that many bytes at ``pos`` of a sub-item's value."""
    if pos + 2 > len(value):
        raise MalformedRequest(f"{what}: truncated length field")
    (length,) = _U16.unpack_from(value, pos)
    if pos + 2 + length > len(value):
        raise MalformedRequest(f"{what}: length runs past the sub-item")
    return value[pos + 2 : pos + 2 + length], pos + 2 + length


def _presentation_context(item: _Item) -> None:
    value = item.value
    if len(value) < 4:
        raise MalformedRequest(f"presentation context item at offset {item.offset} is shorter than 4 bytes")
    context_id = value[0]
    if context_id % 2 == 0:  # odd integers 1-255 (PS3.8 9.3.2.2)
        raise MalformedRequest(f"presentation context ID {context_id} is not odd")
    subs = _items(value, 4, len(value), "a presentation context item")
    abstract = [s for s in subs if s.kind == _ABSTRACT]
    transfer = [s for s in subs if s.kind == _TRANSFER]
    if len(abstract) != 1 or not transfer or len(abstract) + len(transfer) != len(subs):
        raise MalformedRequest(f"presentation context {context_id} needs one abstract and 1+ transfer syntaxes")
    for sub in subs:
        _uid(sub.value, f"syntax UID in presentation context {context_id}")


def _role_selection(value: bytes) -> None:
    uid, pos = _length_prefixed(value, 0, "SCP/SCU role selection")
    _uid(uid, "SCP/SCU role selection SOP class UID")
    if pos + 2 != len(value) or value[pos] > 1 or value[pos + 1] > 1:
        raise MalformedRequest("SCP/SCU role selection roles are not two bytes of 0 or 1")


def _sop_extended(value: bytes) -> None:
    uid, _ = _length_prefixed(value, 0, "SOP class extended negotiation")
    _uid(uid, "SOP class extended negotiation UID")


def _sop_common_extended(value: bytes) -> None:
    what = "SOP class common extended negotiation"
    if len(value) < 2:
        raise MalformedRequest(f"{what}: truncated")
    sop_class, pos = _length_prefixed(value, 0, what)
    service_class, pos = _length_prefixed(value, pos, what)
    related, pos = _length_prefixed(value, pos, what)
    if pos != len(value):
        raise MalformedRequest(f"{what}: trailing bytes")
    _uid(sop_class, f"{what} SOP class UID")
    _uid(service_class, f"{what} service class UID")
    at = 0
    while at < len(related):
        uid, at = _length_prefixed(related, at, f"{what} related class")
        _uid(uid, f"{what} related class UID")


def _user_identity(value: bytes) -> None:
    what = "user identity negotiation"
    if len(value) < 2 or value[0] not in (1, 2, 3, 4, 5):  # PS3.7 Table D.3-14
        raise MalformedRequest(f"{what}: unknown identity type")
    _, pos = _length_prefixed(value, 2, what)
    _, pos = _length_prefixed(value, pos, what)
    if pos != len(value):
        raise MalformedRequest(f"{what}: trailing bytes")


def _user_information(item: _Item) -> None:
    subs = _items(item.value, 0, len(item.value), "the user information item")
    if sum(1 for s in subs if s.kind == _MAX_LENGTH) != 1:
        raise MalformedRequest("user information needs exactly one maximum length sub-item")  # PS3.7 D.1
    for sub in subs:
        if sub.kind in (_MAX_LENGTH, _ASYNC):
            if len(sub.value) != 4:
                raise MalformedRequest(f"sub-item 0x{sub.kind:02X} has length {len(sub.value)}, not 4")
        elif sub.kind == _IMPL_UID:
            _uid(sub.value, "implementation class UID")
        elif sub.kind == _IMPL_VERSION:
            _ae_title(sub.value, "implementation version name", REASON_NO_REASON)
        elif sub.kind == _ROLE:
            _role_selection(sub.value)
        elif sub.kind == _SOP_EXTENDED:
            _sop_extended(sub.value)
        elif sub.kind == _SOP_COMMON_EXTENDED:
            _sop_common_extended(sub.value)
        elif sub.kind == _USER_IDENTITY:
            _user_identity(sub.value)
        else:
            raise MalformedRequest(f"unknown user information sub-item 0x{sub.kind:02X}")


def check_request(data: bytes) -> None:
    """Check a whole A-ASSOCIATE-RQ PDU (header included) before it is decoded.

    Raises
    ------
    PduError
        The fixed header is incomplete or the PDU length disagrees with the
        bytes read: answered with A-ABORT (PS3.8 Table 9-26, invalid PDU parameter value).
    MalformedRequest
        Anything else is wrong: answered with A-ASSOCIATE-RJ (permanent).
    """
    if len(data) < _HEADER_LENGTH:
        raise P.PduError(f"A-ASSOCIATE-RQ of {len(data)} bytes is shorter than its header", P.ABORT_INVALID_PARAMETER)
    (version,) = _U16.unpack_from(data, 6)
    if not version & 0x0001:  # PS3.8 9.3.2: bit 0 is protocol version 1
        raise MalformedRequest("protocol version 1 not offered", SRC_ACSE, REASON_PROTOCOL_VERSION)
    _ae_title(data[10:26], "called AE title", REASON_CALLED_AE)
    _ae_title(data[26:42], "calling AE title", REASON_CALLING_AE)
    items = _items(data, _HEADER_LENGTH, len(data), "the A-ASSOCIATE-RQ")
    kinds = [item.kind for item in items]
    if kinds.count(_APP_CONTEXT) != 1 or kinds.count(_USER_INFO) != 1 or _PRES_CONTEXT not in kinds:
        raise MalformedRequest("needs one application context, 1+ presentation contexts and one user information item")
    for item in items:
        if item.kind == _APP_CONTEXT:
            _uid(item.value, "application context name")
        elif item.kind == _PRES_CONTEXT:
            _presentation_context(item)
        elif item.kind == _USER_INFO:
            _user_information(item)
        else:
            raise MalformedRequest(f"unknown item 0x{item.kind:02X} at offset {item.offset}")
