"""File Meta Information for received datasets (PS3.10 7.1), encoded by hand.

It is written once per received instance on the C-STORE hot path, and its six
elements have fixed VRs, so a direct Explicit VR Little Endian encoding is both
simple and an order of magnitude faster than building a pydicom dataset.
"""

from __future__ import annotations

import struct

from dicom_node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

_PREAMBLE = b"\x00" * 128 + b"DICM"


def _element(element: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    if vr in (b"OB", b"UN"):
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _ascii(text: str, limit: int) -> bytes:
    return text.encode("ascii", "replace")[:limit]


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae: str) -> bytes:
    """Return preamble, prefix and File Meta Information group 0002.

    Parameters
    ----------
    sop_class_uid, sop_instance_uid : str
        From the C-STORE request (checked against the dataset afterwards).
    transfer_syntax_uid : str
        Of the presentation context the dataset arrived on.
    source_ae : str
        Calling AE title, kept as Source Application Entity Title (0002,0016).
    """
    body = b"".join(
        [
            _element(0x0001, b"OB", b"\x00\x01", b"\x00"),
            _element(0x0002, b"UI", _ascii(sop_class_uid, 64), b"\x00"),
            _element(0x0003, b"UI", _ascii(sop_instance_uid, 64), b"\x00"),
            _element(0x0010, b"UI", _ascii(transfer_syntax_uid, 64), b"\x00"),
            _element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode(), b"\x00"),
            _element(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode(), b" "),
            _element(0x0016, b"AE", _ascii(source_ae, 16), b" "),
        ]
    )
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return _PREAMBLE + group_length + body
