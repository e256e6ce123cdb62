"""Streaming ``multipart/related`` parser for STOW-RS (PS3.18 10.5, RFC 2387).

Each ``application/dicom`` part is a PS3.10 file. Its File Meta Information is
read from the first bytes of the part; from then on the part is written
straight into a spool temporary file laid out as the C-STORE receiver lays it
out (our own File Meta, see :func:`dicom_node.scp.filemeta.file_meta`, then the
dataset at ``data_offset``), so the body is never held in memory beyond one
chunk and every part can go through :meth:`dicom_node.ingest.Ingestor.store`.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from dicom_node.errors import InsufficientSpaceError, StorageError
from dicom_node.scp.filemeta import file_meta
from dicom_node.spool import Spool

log = logging.getLogger(__name__)

# PS3.4 / PS3.18 failure reasons used in FailedSOPSequence (0008,1197).
OUT_OF_RESOURCES = 0xA700
MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000

_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UT", b"UN", b"UC", b"UR", b"SV", b"UV"}
_META_LIMIT = 1 << 20
_HEADER_LIMIT = 16 * 1024
_META_KEYS = {0x0002: "sop_class_uid", 0x0003: "sop_instance_uid", 0x0010: "transfer_syntax"}


class MultipartError(Exception):
    """The body is not a well-formed multipart/related message, or exceeds a limit (``status``)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


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


def boundary_of(content_type: str) -> str:
    """The boundary of a ``multipart/related; type="application/dicom"`` Content-Type.

    Raises
    ------
    MultipartError
        Another media type (status 415) or no boundary (400).
    """
    main, _, params = content_type.partition(";")
    values = {k.strip().lower(): v.strip().strip('"') for k, _, v in
              (p.partition("=") for p in re.split(r";(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", params)) if k.strip()}
    if main.strip().lower() != "multipart/related":
        raise MultipartError("STOW-RS takes multipart/related; type=\"application/dicom\"", 415)
    if values.get("type", "application/dicom").lower() != "application/dicom":
        raise MultipartError(f"multipart/related type {values['type']!r} is not supported; use application/dicom", 415)
    boundary = values.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise MultipartError("multipart/related without a usable boundary")
    return boundary


class MultipartReader:
    """Incremental splitter of a multipart body into :class:`PartWriter` s.

    Feed body chunks in order; completed parts collect in :attr:`completed`
    (take them with :meth:`take`). Limits: ``max_parts`` parts, 16 KiB of headers
    per part, 64 KiB of preamble.
    """

    def __init__(self, boundary: str, spool: Spool, max_parts: int, max_dataset_bytes: int,
                 source_ae: str = "STOW-RS") -> None:
        self.delim = b"--" + boundary.encode("latin-1")
        self.spool = spool
        #: Kept as Source Application Entity Title (0002,0016) of every stored part.
        self.source_ae = source_ae
        self.max_parts = max_parts
        self.max_dataset = max_dataset_bytes
        self.buf = bytearray()
        self.state = "preamble"
        self.parts = 0
        self.current: PartWriter | None = None
        self.completed: list[Part] = []

    def take(self) -> list[Part]:
        """Return and forget the parts completed so far."""
        done, self.completed = self.completed, []
        return done

    def feed(self, chunk: bytes) -> None:
        """Consume a chunk of the body."""
        self.buf += chunk
        while self._step():
            pass

    def _step(self) -> bool:
        if self.state == "preamble":
            return self._preamble()
        if self.state == "delimiter":
            return self._after_delimiter()
        if self.state == "headers":
            return self._headers()
        if self.state == "body":
            return self._body()
        self.buf.clear()  # epilogue after the close delimiter is ignored (RFC 2046 5.1.1)
        return False

    def _preamble(self) -> bool:
        at = self.buf.find(self.delim)
        if at < 0:
            if len(self.buf) > 65536:
                raise MultipartError("no multipart boundary in the first 64 KiB")
            return False
        del self.buf[:at + len(self.delim)]
        self.state = "delimiter"
        return True

    def _after_delimiter(self) -> bool:
        if len(self.buf) < 2:
            return False
        if self.buf[:2] == b"--":
            self.state = "epilogue"
            return True
        end = self.buf.find(b"\r\n")
        if end < 0:
            if len(self.buf) > 1024:
                raise MultipartError("malformed multipart delimiter line")
            return False
        del self.buf[:end + 2]
        self.state = "headers"
        return True

    def _headers(self) -> bool:
        if self.buf[:2] == b"\r\n":
            raw, consumed = b"", 2
        else:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _HEADER_LIMIT:
                    raise MultipartError("part headers larger than 16 KiB")
                return False
            raw, consumed = bytes(self.buf[:end]), end + 4
        del self.buf[:consumed]
        self.parts += 1
        if self.parts > self.max_parts:
            raise MultipartError(f"more than {self.max_parts} parts", 413)
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in raw.decode("latin-1").split("\r\n")) if k.strip()}
        self.current = PartWriter(self.spool, self.max_dataset, headers.get("content-type", ""), self.source_ae)
        self.state = "body"
        return True

    def _body(self) -> bool:
        assert self.current is not None
        marker = b"\r\n" + self.delim
        at = self.buf.find(marker)
        if at < 0:
            keep = len(marker) - 1
            if len(self.buf) > keep:
                self.current.feed(bytes(self.buf[:-keep]))
                del self.buf[:-keep]
            return False
        self.current.feed(bytes(self.buf[:at]))
        del self.buf[:at + len(marker)]
        self.completed.append(self.current.finish())
        self.current = None
        self.state = "delimiter"
        return True

    def close(self) -> None:
        """The body ended: it must have ended with the close delimiter."""
        if self.state != "epilogue":
            self.abort()
            raise MultipartError("multipart body ended before its close delimiter")

    def abort(self) -> None:
        """Discard every staged temporary file not yet taken."""
        if self.current is not None:
            self.current.discard()
            self.current = None
        for part in self.take():
            if part.temp is not None:
                self.spool.discard(part.fd, part.temp)
