"""Decode the pixel data of one instance through pydicom's pixel backends.

Reading is bounded: a Deflated Explicit VR Little Endian file (PS3.5 A.5) is
inflated incrementally (:mod:`dicom_node.pixels.inflate`) and refused once the inflated size passes a limit, so a
zip bomb cannot exhaust memory (pydicom itself inflates the whole stream at once).
The declared geometry is checked against the Pixel Data before a codec runs
(:mod:`dicom_node.pixels.declared`). Every codec failure is wrapped in
:class:`~dicom_node.errors.DecodeError` naming the instance and the transfer syntax, and an unknown or uninstalled syntax raises
:class:`~dicom_node.errors.UnsupportedTransferSyntaxError`, so one bad instance
never takes the caller down.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_node.errors import DecodeError, PixelDataError, PixelError
from dicom_node.pixels.declared import check_dataset
from dicom_node.pixels.inflate import DEFAULT_MAX_INFLATED_BYTES, BoundedInflater
from dicom_node.pixels.syntaxes import require_decoder, syntax_info

log = logging.getLogger(__name__)

Source = str | os.PathLike[str] | Dataset

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class _Rewindable:
    """A forward-only inflated stream with ``tell`` and short backward seeks, for pydicom's reader.

    pydicom parses from a file object: it asks ``tell`` at every element and
    seeks back a few bytes (tag peeks, ``stop_when`` rewinds, delimiter searches).
    The last ``window`` bytes read are kept for those seeks, so a dataset is
    parsed while it is inflated: memory holds each value once, never the whole
    inflated body next to its parsed copy.
    """

    def __init__(self, source: BoundedInflater, window: int = 1 << 20) -> None:
        self._source = source
        self._window = window
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self._pos = 0

    def tell(self) -> int:
        """Current stream offset."""
        return self._pos

    def _fill(self, end: int) -> None:
        while self._base + len(self._buf) < end:
            chunk = self._source.next_chunk()
            if not chunk:
                return
            self._buf += chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        """Seek within the kept window, or forward (a forward seek inflates and drops what it skips)."""
        target = offset if whence == 0 else self._pos + offset
        if whence not in (0, 1) or target < self._base:
            raise OSError(f"cannot seek to {target} in an inflated stream (kept from {self._base})")
        while self._base + len(self._buf) < target:
            chunk = self._source.next_chunk()
            if not chunk:
                break
            self._buf += chunk
            self._trim(min(target, self._base + len(self._buf)))
        self._pos = target
        return target

    def _trim(self, keep_from: int) -> None:
        drop = keep_from - self._window - self._base
        if drop > self._window:  # drop in large steps: deleting from a bytearray's front moves the rest
            del self._buf[:drop]
            self._base += drop

    def read(self, size: int = -1) -> bytes:
        """Read ``size`` bytes (all when negative); fewer at the end of the stream."""
        if size < 0:
            self._fill(1 << 62)
            size = max(0, self._base + len(self._buf) - self._pos)
        start = self._pos - self._base
        end = self._pos + size
        if size <= self._window or len(self._buf) - start >= size:
            self._fill(end)
            out = bytes(self._buf[start:start + size])
        else:
            # A large value (Pixel Data): gathered in inflater-sized pieces, not grown in the window.
            parts = [bytes(self._buf[start:])]
            have = self._base + len(self._buf)
            self._buf, self._base = bytearray(), have
            while have < end:
                chunk = self._source.next_chunk()
                if not chunk:
                    break
                take = min(len(chunk), end - have)
                parts.append(chunk[:take] if take < len(chunk) else chunk)
                if take < len(chunk):
                    self._buf, self._base = bytearray(chunk[take:]), end
                have += take
                if self._base < have:
                    self._base = have
            out = b"".join(parts)
        self._pos += len(out)
        self._trim(self._pos)
        return out


#: Top-level pixel elements: header reads stop at the first of them.
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})


def _read_deflated(fp: BinaryIO, name: str, limit: int, stop_before_pixels: bool) -> FileDataset:
    """Read a Deflated Explicit VR Little Endian file, parsing while inflating (PS3.5 A.5).

    The body is never held inflated in one piece. A header read stops at the
    pixel element and keeps it as a deferred element (its length, no value),
    so :func:`dicom_node.pixels.declared.check_dataset` can compare it with the
    declaration. A full read checks the declaration first and inflates the
    pixel value only when it agrees: 1.5 GiB of zeros declared as 64x64 is
    refused after reading the header.
    """
    # pydicom exposes no public hook for the body of a deflated file, so the
    # file meta is read with its reader and the body is parsed from our stream.
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.filereader import read_dataset as read_body

    fp.seek(0)
    preamble = read_preamble(fp, True)
    meta = _read_file_meta_info(fp)
    stream = _Rewindable(BoundedInflater(fp, limit))
    found: list[RawDataElement] = []

    def at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
        if int(tag) in _PIXEL_TAGS:
            found.append(RawDataElement(tag, vr, length, None, stream.tell(), False, True))
            return True
        return False

    try:
        ds = read_body(stream, is_implicit_VR=False, is_little_endian=True, stop_when=at_pixels)  # type: ignore[arg-type]
        if found:
            ds[found[0].tag] = found[0]  # deferred: length known, value not read
        out = FileDataset(name, ds, preamble=preamble, file_meta=meta, is_implicit_VR=False, is_little_endian=True)
        if stop_before_pixels or not found:
            return out
        check_dataset(out, encapsulated=False)  # Deflated is a native syntax (PS3.5 A.5)
        rest = read_body(stream, is_implicit_VR=False, is_little_endian=True)  # type: ignore[arg-type]
    except DecodeError as exc:
        raise DecodeError(f"{name}: {exc}") if not isinstance(exc, PixelDataError) else exc from exc
    for elem in rest.elements():
        out[elem.tag] = elem
    return out


def read_dataset(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
    stop_before_pixels: bool = False,
) -> Dataset:
    """Read a DICOM file (PS3.10) with bounded inflation of deflated datasets.

    Parameters
    ----------
    source : path or binary file
        The Part 10 file.
    max_inflated_bytes : int
        Largest inflated size accepted for Deflated Explicit VR Little Endian.
    stop_before_pixels : bool
        Header-only read: for a path, values over 4 KiB (Pixel Data) are
        deferred, not loaded, so their presence can still be checked.

    Returns
    -------
    pydicom.dataset.Dataset
        The dataset with its file meta.

    Raises
    ------
    DecodeError
        When the file is not DICOM, is truncated, or inflates past the limit.
    """
    # File name only: folder names in spools and exports often carry patient names.
    name = Path(source).name if isinstance(source, (str, os.PathLike)) else "<stream>"
    try:
        fp: BinaryIO = open(source, "rb") if isinstance(source, (str, os.PathLike)) else source
    except OSError as exc:
        raise DecodeError(f"{name}: cannot open: {exc}") from exc
    try:
        from pydicom.filereader import _read_file_meta_info, read_preamble

        fp.seek(0)
        read_preamble(fp, True)
        meta = _read_file_meta_info(fp)
        if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            return _read_deflated(fp, name, max_inflated_bytes, stop_before_pixels)
        if stop_before_pixels and isinstance(source, (str, os.PathLike)):
            # Deferred rather than stopped: Pixel Data stays visible as present (contracts require it)
            # but its value is only read from the file if someone asks for it.
            return dcmread(os.fspath(source), force=True, defer_size=4096)
        fp.seek(0)
        return dcmread(fp, force=True, stop_before_pixels=stop_before_pixels)
    except PixelError:
        raise
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DecodeError(f"{name}: not a readable DICOM file: {exc}") from exc
    finally:
        if isinstance(source, (str, os.PathLike)):
            fp.close()


def _as_dataset(source: Source, max_inflated_bytes: int) -> Dataset:
    if isinstance(source, Dataset):
        return source
    return read_dataset(source, max_inflated_bytes=max_inflated_bytes)


def transfer_syntax_of(ds: Dataset) -> str:
    """Return the dataset's Transfer Syntax UID, or Implicit VR LE when the file meta lacks one.

    PS3.10 7.1 requires (0002,0010); files without a meta group were written
    before Part 10 and are Implicit VR Little Endian by default (PS3.5 A.1).
    """
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(uid) if uid else str(ImplicitVRLittleEndian)


def describe(ds: Dataset) -> str:
    """Return a PHI-free label for logs and errors: the SOP Instance UID."""
    return f"instance {ds.get('SOPInstanceUID', '<no SOPInstanceUID>')}"


def _check_decodable(ds: Dataset) -> str:
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise DecodeError(f"{describe(ds)}: no Pixel Data (7FE0,0010)")
    uid = transfer_syntax_of(ds)
    require_decoder(uid)
    # Before the codec allocates from the declaration: 65535x65535 over 8 KiB is refused here.
    check_dataset(ds, encapsulated=syntax_info(uid).encapsulated)
    if ds.file_meta.get("TransferSyntaxUID") is None:
        ds.file_meta.TransferSyntaxUID = UID(uid)
    return uid


def decode_instance(source: Source, *, max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES) -> np.ndarray:
    """Decode every frame of one instance to stored values.

    Colour data in YBR photometric interpretations is converted to RGB, as
    pydicom does by default; monochrome data are the stored values before the
    Modality LUT (PS3.3 C.7.6.3.1, C.11.1).

    Parameters
    ----------
    source : path or pydicom.dataset.Dataset
        A Part 10 file or an already-read dataset.
    max_inflated_bytes : int
        Bound for Deflated Explicit VR Little Endian (PS3.5 A.5).

    Returns
    -------
    numpy.ndarray
        ``(rows, cols[, samples])`` for one frame; ``(frames, rows, cols[, samples])``
        for multi-frame instances (PS3.3 C.7.6.6).

    Raises
    ------
    UnsupportedTransferSyntaxError
        Unknown syntax, or no installed plugin for it (names the missing dependency).
    DecodeError
        Corrupt stream, codec failure, or an instance without pixel data.
    """
    ds = _as_dataset(source, max_inflated_bytes)
    uid = _check_decodable(ds)
    from pydicom.pixels import pixel_array

    try:
        arr = pixel_array(ds)
    except PixelError:
        raise
    except Exception as exc:  # codecs raise anything from ValueError to RuntimeError; wrapped, not swallowed
        raise DecodeError(f"{describe(ds)}: {syntax_info(uid).label} decode failed: {exc}") from exc
    # Big Endian data come back in file byte order; callers get native order.
    return arr.astype(arr.dtype.newbyteorder("="), copy=False) if arr.dtype.byteorder == ">" else arr


def iter_frames(source: Source, *, max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES) -> Iterator[np.ndarray]:
    """Yield the frames of one instance one at a time, stored values (PS3.3 C.7.6.6).

    Unlike :func:`decode_instance` only one frame is held at a time, which keeps
    peak memory near the caller's output array for large enhanced multi-frame objects.

    Raises
    ------
    UnsupportedTransferSyntaxError, DecodeError
        As :func:`decode_instance`.
    """
    ds = _as_dataset(source, max_inflated_bytes)
    uid = _check_decodable(ds)
    from pydicom.pixels import iter_pixels

    frames = iter_pixels(ds)
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except PixelError:
            raise
        except Exception as exc:  # wrapped at the codec boundary
            raise DecodeError(f"{describe(ds)}: {syntax_info(uid).label} decode failed: {exc}") from exc
        yield frame

