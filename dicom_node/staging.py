"""Stage PS3.10 files arriving in a multipart body (STOW-RS, WADO-RS, uploads) into the spool.

Each ``application/dicom`` part is a PS3.10 file. Its File Meta Information is
read from the first bytes of the part; from then on the part is written
straight into a spool temporary file laid out as the C-STORE receiver lays it
out (our own File Meta, see :func:`dicom_node.scp.filemeta.file_meta`, then the
dataset at ``data_offset``), so the body is never held in memory beyond one
chunk and every part can go through :meth:`dicom_node.ingest.Ingestor.store`.
The multipart syntax itself is read by :mod:`dicom_node.dicomweb.multipart`.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dicom_node.dicomweb.multipart import MultipartError, MultipartReader
from dicom_node.errors import InsufficientSpaceError, StorageError
from dicom_node.scp.filemeta import file_meta
from dicom_node.spool import Spool

__all__ = [
    "CANNOT_UNDERSTAND", "MISMATCH", "OUT_OF_RESOURCES", "Part", "Part10Reader", "PartWriter", "parse_meta",
]

log = logging.getLogger(__name__)

# PS3.4 / PS3.18 failure reasons used in FailedSOPSequence (0008,1197).
OUT_OF_RESOURCES = 0xA700
MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000

_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UT", b"UN", b"UC", b"UR", b"SV", b"UV"}
_META_LIMIT = 1 << 20
_HEADER_LIMIT = 16 * 1024
_META_KEYS = {0x0002: "sop_class_uid", 0x0003: "sop_instance_uid", 0x0010: "transfer_syntax"}


@dataclass
class Part:
    """One received part: staged in the spool (``temp``) or failed (``failure``)."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    transfer_syntax: str = ""
    fd: int | None = None
    temp: Path | None = None
    data_offset: int = 0
    size: int = 0
    failure: tuple[int, str] | None = None
    buffer: bytearray = field(default_factory=bytearray)


def parse_meta(buf: bytes | bytearray) -> tuple[dict[str, str], int] | None:
    """File Meta values and the dataset offset of a PS3.10 prefix; None while incomplete.

    Raises
    ------
    ValueError
        The prefix is not a PS3.10 file (no preamble/``DICM`` and no group 0002).
    """
    if len(buf) < 132:
        return None
    pos = 132 if buf[128:132] == b"DICM" else 0
    if pos == 0 and buf[:2] != b"\x02\x00":
        raise ValueError("part is not a DICOM PS3.10 file (no File Meta Information)")
    found: dict[str, str] = {}
    while pos + 8 <= len(buf):
        group, element = struct.unpack_from("<HH", buf, pos)
        if group != 0x0002:
            return found, pos
        vr = bytes(buf[pos + 4:pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > len(buf):
                return None
            length, start = struct.unpack_from("<I", buf, pos + 8)[0], pos + 12
        else:
            length, start = struct.unpack_from("<H", buf, pos + 6)[0], pos + 8
        if start + length > len(buf):
            return None
        if element in _META_KEYS:
            found[_META_KEYS[element]] = bytes(buf[start:start + length]).decode("ascii", "replace").rstrip("\x00 ")
        pos = start + length
    return None


class PartWriter:
    """Writes one part into the spool as it arrives (see the module docstring)."""

    def __init__(self, spool: Spool, max_dataset_bytes: int, content_type: str, source_ae: str = "STOW-RS") -> None:
        self.spool = spool
        self.max = max_dataset_bytes
        self.source_ae = source_ae
        self.part = Part()
        if content_type and not content_type.lower().startswith("application/dicom"):
            self.part.failure = (CANNOT_UNDERSTAND, f"part media type {content_type.split(';')[0]!r} is not application/dicom")

    def feed(self, data: bytes) -> None:
        """Add bytes of the part."""
        p = self.part
        if p.failure is not None:
            return
        if p.temp is None:
            p.buffer += data
            self._try_open()
            return
        self._write(data)

    def _try_open(self) -> None:
        p = self.part
        try:
            parsed = parse_meta(p.buffer)
        except ValueError as exc:
            self._fail(CANNOT_UNDERSTAND, str(exc))
            return
        if parsed is None:
            if len(p.buffer) > _META_LIMIT:
                self._fail(CANNOT_UNDERSTAND, "File Meta Information larger than 1 MiB")
            return
        meta, offset = parsed
        p.sop_class_uid, p.sop_instance_uid = meta.get("sop_class_uid", ""), meta.get("sop_instance_uid", "")
        p.transfer_syntax = meta.get("transfer_syntax", "")
        if not (p.sop_class_uid and p.sop_instance_uid and p.transfer_syntax):
            self._fail(CANNOT_UNDERSTAND, "File Meta Information lacks SOP Class, SOP Instance or Transfer Syntax UID")
            return
        try:
            self.spool.check_space()
            p.fd, p.temp = self.spool.new_temp()
        except InsufficientSpaceError:
            self._fail(OUT_OF_RESOURCES, "Out of resources: disk space reserve reached")
            return
        except StorageError:
            self._fail(OUT_OF_RESOURCES, "Out of resources: cannot write")
            return
        header = file_meta(p.sop_class_uid, p.sop_instance_uid, p.transfer_syntax, self.source_ae)
        p.data_offset = len(header)
        rest = bytes(p.buffer[offset:])
        p.buffer = bytearray()
        self._raw_write(header)
        self._write(rest)

    def _write(self, data: bytes) -> None:
        self.part.size += len(data)
        if self.part.size > self.max:
            self._fail(OUT_OF_RESOURCES, "Out of resources: dataset larger than the configured limit")
            return
        self._raw_write(data)

    def _raw_write(self, data: bytes) -> None:
        p = self.part
        view = memoryview(data)
        try:
            while view and p.fd is not None:
                view = view[os.write(p.fd, view):]
        except OSError as exc:
            log.error("write to the spool failed error=%s", exc.strerror)
            self._fail(OUT_OF_RESOURCES, "Out of resources: write failed")

    def _fail(self, status: int, reason: str) -> None:
        self.discard()
        self.part.failure = (status, reason)
        self.part.buffer = bytearray()

    def discard(self) -> None:
        """Remove the temporary file, if any."""
        p = self.part
        if p.temp is not None:
            self.spool.discard(p.fd, p.temp)
            p.fd, p.temp = None, None

    def finish(self) -> Part:
        """The part is complete: return it, staged or failed."""
        p = self.part
        if p.failure is None and p.temp is None:
            self._fail(CANNOT_UNDERSTAND, "part is empty or truncated before its dataset")
        return p


class Part10Reader:
    """A multipart body split into parts staged in the spool (:class:`PartWriter` per part).

    Parameters
    ----------
    boundary : str
        From :func:`dicom_node.dicomweb.multipart.boundary_of`.
    spool : Spool
        Where parts are staged.
    max_parts : int
        More parts is an error (413).
    max_dataset_bytes : int
        A larger part fails with 0xA700 (the others still go through).
    source_ae : str
        Kept as Source Application Entity Title (0002,0016) of every stored part.

    Feed body chunks in order; completed parts are taken with :meth:`take`.
    :meth:`abort` (always, when done) discards whatever was staged and not taken.
    """

    def __init__(self, boundary: str, spool: Spool, max_parts: int, max_dataset_bytes: int,
                 source_ae: str = "STOW-RS") -> None:
        self.spool = spool
        self.source_ae = source_ae
        self.max_dataset = max_dataset_bytes
        self._reader: MultipartReader[Part] = MultipartReader(boundary, self._open, max_parts)

    def _open(self, headers: Mapping[str, str]) -> PartWriter:
        return PartWriter(self.spool, self.max_dataset, headers.get("content-type", ""), self.source_ae)

    def feed(self, chunk: bytes) -> None:
        """Consume a chunk of the body (raises :class:`~dicom_node.dicomweb.multipart.MultipartError`)."""
        self._reader.feed(chunk)

    def take(self) -> list[Part]:
        """Return and forget the parts completed so far."""
        return self._reader.take()

    def close(self) -> None:
        """The body ended: it must have ended with the close delimiter (else discard and raise)."""
        try:
            self._reader.close()
        except MultipartError:
            self.abort()
            raise

    def abort(self) -> None:
        """Discard every staged temporary file not yet taken, and the part still open."""
        current = self._reader.current
        if isinstance(current, PartWriter):
            current.discard()
        self._reader.current = None
        for part in self.take():
            if part.temp is not None:
                self.spool.discard(part.fd, part.temp)
