"""The node's one bounded inflater for Deflated Explicit VR Little Endian (PS3.5 A.5).

A deflated dataset is a raw DEFLATE stream (RFC 1951, no zlib header) following
the file meta or filling a P-DATA value. A few KiB of it can inflate to
gigabytes, so every inflate in the node (the ingest header reader, the pixel
reader, Query/Retrieve identifiers) goes through :class:`BoundedInflater`:
output is produced in bounded chunks and refused as soon as its total passes a
limit, before the memory is spent. pydicom itself inflates the whole stream at
once, which is why the node does not let it.
"""

from __future__ import annotations

import io
import zlib
from typing import TYPE_CHECKING, BinaryIO

from dicom_node.errors import DecodeError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["DEFAULT_MAX_INFLATED_BYTES", "BoundedInflater", "deflate", "inflate"]

#: Default bound on the inflated size of a deflated dataset (matches ``scp.max_inflated_bytes``).
DEFAULT_MAX_INFLATED_BYTES = 2 * 1024**3

#: Output produced per step: the bound is checked after each step, so a bomb costs at most this much.
_STEP = 1 << 20
#: Compressed bytes read from the source per step (streams read from a file).
_READ = 1 << 16


class BoundedInflater(io.RawIOBase):
    """File-like reader of a raw DEFLATE stream that refuses to produce more than ``limit`` bytes.

    Parameters
    ----------
    fp : BinaryIO
        The compressed stream, positioned at its first byte.
    limit : int
        Largest total inflated size accepted.
    step : int
        Output bytes inflated per step (the granularity of the bound check).
    read_size : int
        Compressed bytes read from ``fp`` per step.

    Raises
    ------
    DecodeError
        From any read: the stream inflates past ``limit``, or it is corrupt.
        A stream that simply ends early yields what it inflated to, as zlib does.
    """

    def __init__(self, fp: BinaryIO, limit: int, *, step: int = _STEP, read_size: int = _READ) -> None:
        super().__init__()
        self._fp = fp
        self._limit = limit
        self._step = step
        self._read_size = read_size
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._produced = 0
        self._pending = b""
        self._pos = 0
        self._done = False

    @property
    def produced(self) -> int:
        """Inflated bytes produced so far (including those not yet read)."""
        return self._produced

    def readable(self) -> bool:
        """Always true: this is a reader."""
        return True

    def next_chunk(self) -> bytes:
        """Inflate and return the next piece of output (at most ``step`` bytes); ``b""`` at the end.

        Raises
        ------
        DecodeError
            When the total passes the limit or the stream is corrupt.
        """
        while not self._done:
            if self._inflater.eof:
                self._done = True
                break
            raw = self._inflater.unconsumed_tail or self._fp.read(self._read_size)
            try:
                if raw:
                    out = self._inflater.decompress(raw, self._step)
                else:
                    # Input ended before the final block: all input was consumed (the tail is
                    # empty), so what flush returns is at most what zlib already buffered.
                    out = self._inflater.flush()
                    self._done = True
            except zlib.error as exc:
                raise DecodeError(f"deflated dataset is corrupt: {exc}") from exc
            self._produced += len(out)
            if self._produced > self._limit:
                raise DecodeError(f"deflated dataset inflates beyond the limit of {self._limit} bytes; refused")
            if out:
                return out
        return b""

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Fill ``buffer`` from the inflated stream; 0 at the end."""
        if self._pos >= len(self._pending):
            self._pending, self._pos = self.next_chunk(), 0
        n = min(memoryview(buffer).nbytes, len(self._pending) - self._pos)
        # A memoryview slice copies once, straight into the caller's buffer.
        memoryview(buffer).cast("B")[:n] = memoryview(self._pending)[self._pos:self._pos + n]
        self._pos += n
        return n

    def read_all(self) -> bytes:
        """Inflate the rest of the stream and return it (what :meth:`readinto` has not handed out)."""
        parts = [self._pending[self._pos:]]
        self._pending, self._pos = b"", 0
        parts.extend(iter(self.next_chunk, b""))
        return b"".join(parts)

    def drain(self) -> int:
        """Inflate the rest, discarding it, and return the total inflated size.

        Used after a header was read from an inflated prefix, so a bomb hiding
        behind a small valid header is still refused.
        """
        self._pending, self._pos = b"", 0
        while self.next_chunk():
            pass
        return self._produced


def inflate(data: bytes, limit: int = DEFAULT_MAX_INFLATED_BYTES) -> bytes:
    """Inflate a whole raw DEFLATE stream held in memory, refusing more than ``limit`` bytes out.

    Parameters
    ----------
    data : bytes
        The compressed stream.
    limit : int
        Largest inflated size accepted.

    Returns
    -------
    bytes
        The inflated bytes.

    Raises
    ------
    DecodeError
        When the output passes ``limit`` or the stream is corrupt.
    """
    # The whole input is at hand: one read, and larger steps (fewer joins) than for a file.
    return BoundedInflater(io.BytesIO(data), limit, step=16 * _STEP, read_size=max(len(data), 1)).read_all()


def deflate(data: bytes) -> bytes:
    """Deflate a dataset's bytes for Deflated Explicit VR Little Endian, padded to even length (PS3.5 A.5)."""
    packer = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = packer.compress(data) + packer.flush()
    return out + b"\x00" * (len(out) % 2)
