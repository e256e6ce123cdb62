"""The node's one ``multipart/related`` reader and writer (PS3.18 8.6, 8.7; RFC 2387, RFC 2046 5.1).

Reading streams: body chunks go into python-multipart's parser
(:class:`python_multipart.multipart.MultipartParser`) as they arrive, and each
part's bytes go straight to a sink the caller opens from the part's headers, so
a body is never held in memory beyond one chunk. This module adds what the
DICOMweb services need on top of that parser: a preamble before the first
delimiter (RFC 2046 allows one; bounded to 64 KiB), a bound on the number of
parts (413) and on each part's headers (16 KiB), and a body that must end with
the close delimiter. Every failure is a :class:`MultipartError` carrying the
HTTP status to answer.

Writing produces PS3.18 8.6 messages: a ``--boundary`` line per part, the
part's ``Content-Type`` (``application/dicom; transfer-syntax=...``) and
``Content-Length``, and the close delimiter; :func:`related_content_type`
gives the message's own ``Content-Type`` with its ``type`` parameter.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Generic, Protocol, TypeVar

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from dicom_node.errors import DicomNodeError

__all__ = [
    "MultipartError", "MultipartReader", "PartSink", "boundary_of", "media_type", "new_boundary", "part_head",
    "related_content_type", "split", "write_related",
]

#: Longest preamble before the first delimiter.
MAX_PREAMBLE = 64 * 1024
#: Largest header block of one part.
MAX_HEADER_BYTES = 16 * 1024
#: Longest boundary accepted (RFC 2046 allows 70 characters; some servers send longer ones).
MAX_BOUNDARY = 200
#: Most header lines in one part (python-multipart's bound; ours is on the total size).
_MAX_HEADER_LINES = 64
#: Splits parameters at semicolons outside quoted strings.
_PARAMS = re.compile(r";(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)")

T_co = TypeVar("T_co", covariant=True)
T = TypeVar("T")


class MultipartError(DicomNodeError):
    """The body is not a well-formed multipart message, or exceeds a limit.

    Attributes
    ----------
    status : int
        The HTTP status to answer: 400 malformed, 413 too many parts or too
        large, 415 not the expected media type.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def media_type(content_type: str) -> tuple[str, dict[str, str]]:
    """Split a ``Content-Type`` value into its lower-case media type and parameters (names lower-cased, quotes removed)."""
    main, _, params = content_type.partition(";")
    values = {k.strip().lower(): v.strip().strip('"') for k, _, v in
              (p.partition("=") for p in _PARAMS.split(params)) if k.strip()}
    return main.strip().lower(), values


def boundary_of(content_type: str, part_type: str = "application/dicom") -> str:
    """The boundary of a ``multipart/related; type="<part_type>"`` Content-Type (PS3.18 8.6.1.2).

    A missing ``type`` parameter is taken as ``part_type``.

    Raises
    ------
    MultipartError
        Another media type or part type (status 415), or no usable boundary (400).
    """
    main, values = media_type(content_type)
    if main != "multipart/related":
        raise MultipartError(f"STOW-RS takes multipart/related; type=\"{part_type}\"", 415)
    if values.get("type", part_type).lower() != part_type:
        raise MultipartError(f"multipart/related type {values['type']!r} is not supported; use {part_type}", 415)
    boundary = values.get("boundary", "")
    if not boundary or len(boundary) > MAX_BOUNDARY:
        raise MultipartError("multipart/related without a usable boundary")
    return boundary


class PartSink(Protocol[T_co]):
    """Where one part's body goes: :meth:`feed` in order, then :meth:`finish` once it is complete."""

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the part's body."""

    def finish(self) -> T_co:
        """The part is complete; return what the reader collects for it."""


class MultipartReader(Generic[T]):
    """Streaming reader of a multipart body: one sink per part, opened from the part's headers.

    Parameters
    ----------
    boundary : str
        The boundary parameter of the message's Content-Type.
    open_part : callable
        ``open_part(headers)`` with the part's headers (names lower-cased) returns its sink.
    max_parts : int
        More parts than this is an error (413).

    Raises
    ------
    MultipartError
        An empty boundary or one longer than 200 characters (400).

    Feed body chunks in order with :meth:`feed`; the results of completed parts
    (each sink's :meth:`PartSink.finish`) collect until taken with :meth:`take`.
    :meth:`close` checks that the body ended with the close delimiter. The sink
    of a part still open (after an error, or a body cut short) is :attr:`current`.
    """

    def __init__(self, boundary: str, open_part: Callable[[Mapping[str, str]], PartSink[T]], max_parts: int) -> None:
        if not boundary or len(boundary) > MAX_BOUNDARY:
            raise MultipartError("multipart/related without a usable boundary")
        self._delimiter = b"--" + boundary.encode("latin-1")
        self._open_part = open_part
        self.max_parts = max_parts
        self.parts = 0
        self.current: PartSink[T] | None = None
        self._completed: list[T] = []
        self._preamble: bytearray | None = bytearray()
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._header_bytes = 0
        self._ended = False
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }, max_header_count=_MAX_HEADER_LINES, max_header_size=MAX_HEADER_BYTES)

    # -- feeding --------------------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        """Consume the next chunk of the body.

        Raises
        ------
        MultipartError
            Malformed (400), or a limit passed (413, or 400 for headers and preamble).
        """
        if self._preamble is not None:
            # python-multipart expects the first delimiter at the start; skip a preamble ourselves.
            self._preamble += chunk
            at = self._preamble.find(self._delimiter)
            if at < 0:
                if len(self._preamble) > MAX_PREAMBLE:
                    raise MultipartError("no multipart boundary in the first 64 KiB")
                return
            chunk, self._preamble = bytes(self._preamble[at:]), None
        if self._ended:
            return  # the epilogue after the close delimiter is ignored (RFC 2046 5.1.1)
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise MultipartError(f"malformed multipart body: {exc}") from exc

    def take(self) -> list[T]:
        """Return and forget the results of the parts completed so far."""
        done, self._completed = self._completed, []
        return done

    def close(self) -> None:
        """The body ended.

        Raises
        ------
        MultipartError
            When it ended before the close delimiter (400; the message says "ended before").
        """
        if not self._ended:
            raise MultipartError("multipart body ended before its close delimiter")

    # -- parser callbacks -----------------------------------------------------------------------------------

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.max_parts:
            raise MultipartError(f"more than {self.max_parts} parts", 413)
        self._headers, self._header_bytes = {}, 0

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._value += data[start:end]

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            raise MultipartError("part headers larger than 16 KiB")

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").strip().lower()] = self._value.decode("latin-1").strip()
        self._field, self._value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        self.current = self._open_part(self._headers)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.current is not None and end > start:
            self.current.feed(data[start:end])

    def _part_end(self) -> None:
        if self.current is not None:
            self._completed.append(self.current.finish())
            self.current = None

    def _end(self) -> None:
        self._ended = True


class _Bytes:
    """A sink keeping one part in memory, with its headers."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers = dict(headers)
        self.body = bytearray()

    def feed(self, data: bytes) -> None:
        self.body += data

    def finish(self) -> tuple[dict[str, str], bytes]:
        return self.headers, bytes(self.body)


def split(body: bytes, boundary: str, max_parts: int) -> list[tuple[dict[str, str], bytes]]:
    """Split a whole multipart body held in memory into ``(headers, payload)`` pairs.

    Raises
    ------
    MultipartError
        As :class:`MultipartReader`, including a body without its close delimiter.
    """
    reader: MultipartReader[tuple[dict[str, str], bytes]] = MultipartReader(boundary, _Bytes, max_parts)
    reader.feed(body)
    reader.close()
    return reader.take()


# -- writing ----------------------------------------------------------------------------------------------------

def new_boundary() -> str:
    """A fresh boundary: 32 hex digits, which cannot occur at a line start in a PS3.10 part by chance."""
    return uuid.uuid4().hex


def related_content_type(boundary: str, part_type: str = "application/dicom") -> str:
    """The ``Content-Type`` of a multipart/related message whose root parts are ``part_type`` (PS3.18 8.6.1.2)."""
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def part_head(boundary: str, content_type: str, length: int | None = None) -> bytes:
    """The delimiter line and headers that open one part (PS3.18 8.6.1.3)."""
    head = f"--{boundary}\r\nContent-Type: {content_type}\r\n"
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    return (head + "\r\n").encode("ascii")


def form_data_head(boundary: str, name: str, content_type: str, filename: str | None = None) -> bytes:
    """The delimiter line and headers that open one ``multipart/form-data`` part (RFC 7578 4.2).

    ``name`` and ``filename`` are the node's own fixed names (never a caller's), so they need no escaping.
    """
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {content_type}\r\n\r\n".encode("ascii")


def write_related(parts: Iterable[tuple[str, int | None, Iterable[bytes]]], boundary: str) -> Iterator[bytes]:
    """Stream a multipart/related body.

    Parameters
    ----------
    parts : iterable of (content type, length or None, chunks)
        Each part's Content-Type (e.g. ``application/dicom; transfer-syntax=1.2.840.10008.1.2.1``),
        its length when known, and its body as chunks (read lazily, so files stream).
    boundary : str
        From :func:`new_boundary`.

    Yields
    ------
    bytes
        The message, part by part, then the close delimiter.
    """
    for content_type, length, chunks in parts:
        yield part_head(boundary, content_type, length)
        yield from chunks
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")
