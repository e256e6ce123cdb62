"""Frames of a stored instance by number (PS3.18 10.4.1.1.4): read only the frames asked for.

Native Pixel Data (Explicit/Implicit VR Little Endian) is sliced by offset arithmetic
from the deferred element's file position; encapsulated Pixel Data is read frame by
frame with pydicom's fragment generators from that position (:func:`pydicom.encaps.get_frame`),
so a frame of a 512-slice CT costs one frame's bytes and, the first time, a header parse: the
layout found is kept per file (path, modification time and size; the spool never rewrites a file
under its name), as a viewer asks for every frame of a series one request at a time.
Offers, in order: the frame as stored (``image/jls``, ``image/jp2``... for encapsulated
syntaxes, then ``application/octet-stream`` in the stored syntax) and the native frame
(``application/octet-stream``, Explicit VR Little Endian, decoded when stored compressed).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array
from pydicom.tag import Tag

from dicom_node.archive.retrieve import BadRequest, Located
from dicom_node.dicomweb.accept import Offer
from dicom_node.errors import PixelError
from dicom_node.pixels.syntaxes import EXPLICIT_VR_LE, IMPLICIT_VR_LE

OCTET = "application/octet-stream"
#: The media type of a compressed frame (PS3.18 Table 8.7.3-3); syntaxes not listed go as octet-stream.
FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
_SLICEABLE = frozenset({EXPLICIT_VR_LE, IMPLICIT_VR_LE})
#: Layouts kept (a few hundred bytes each): a 512-slice series several times over.
LAYOUT_CACHE_ENTRIES = 4096


@dataclass(frozen=True)
class PixelLayout:
    """Where an instance's Pixel Data is and how its frames are laid out."""

    path: Path
    syntax: str
    encapsulated: bool
    frames: int
    frame_bytes: int
    value_offset: int
    value_length: int

    def check(self, numbers: list[int]) -> None:
        """Raise :class:`BadRequest` naming the first frame number outside 1..frames."""
        for n in numbers:
            if not 1 <= n <= self.frames:
                raise BadRequest(f"frame {n} is out of range: the instance has {self.frames} frame(s), numbered from 1")


_layouts: OrderedDict[tuple[str, int, int], PixelLayout] = OrderedDict()
_layouts_lock = threading.Lock()


def layout(item: Located) -> PixelLayout:
    """Where the instance's Pixel Data is (read from its header once per file version); it stays on disk.

    Raises
    ------
    BadRequest
        The instance has no Pixel Data (an SR, for example).
    PixelError
        The file cannot be read.
    """
    try:
        st = item.path.stat()
    except OSError as exc:
        raise PixelError(f"cannot read a stored instance: {exc}") from exc
    key = (str(item.path), st.st_mtime_ns, st.st_size)
    with _layouts_lock:
        found = _layouts.get(key)
        if found is not None:
            _layouts.move_to_end(key)
            return found
    found = _read_layout(item.path)
    with _layouts_lock:
        _layouts[key] = found
        while len(_layouts) > LAYOUT_CACHE_ENTRIES:
            _layouts.popitem(last=False)
    return found


def _read_layout(path: Path) -> PixelLayout:
    try:
        ds: Dataset = pydicom.dcmread(path, defer_size=256)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise PixelError(f"cannot read a stored instance: {exc}") from exc
    raw = ds._dict.get(Tag(0x7FE00010))  # the deferred raw element carries the value's file position
    if raw is None or "Rows" not in ds:
        raise BadRequest("the instance has no Pixel Data, so no frames")
    syntax = str(ds.file_meta.TransferSyntaxUID)
    frames = int(ds.get("NumberOfFrames") or 1)
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples, bits = int(ds.get("SamplesPerPixel", 1)), int(ds.BitsAllocated)
    if isinstance(raw, RawDataElement) and raw.value is None:
        offset, length = int(raw.value_tell), int(raw.length)
    else:  # a small image whose Pixel Data was under the defer size
        value = ds.PixelData
        offset, length = -1, len(value)
    frame_bits = rows * cols * samples * bits
    # A frame of 1-bit pixels (SEG) may end mid-byte: then it is not sliced but decoded (-1).
    return PixelLayout(path, syntax, bool(ds.file_meta.TransferSyntaxUID.is_encapsulated), frames,
                       frame_bits // 8 if frame_bits % 8 == 0 else -1, offset, length)


def offers(lay: PixelLayout) -> list[Offer]:
    """The representations of a frame this node can answer, most preferred first."""
    if not lay.encapsulated:
        return [Offer(OCTET, EXPLICIT_VR_LE, True)]
    out = []
    media = FRAME_MEDIA_TYPES.get(lay.syntax)
    if media:
        out.append(Offer(media, lay.syntax, True))
    out += [Offer(OCTET, lay.syntax, True), Offer(OCTET, EXPLICIT_VR_LE, True)]
    return out


def _native_frame(lay: PixelLayout, number: int) -> bytes:
    if lay.syntax in _SLICEABLE and lay.value_offset >= 0 and lay.frame_bytes > 0:
        start = (number - 1) * lay.frame_bytes
        if start + lay.frame_bytes <= lay.value_length:
            with open(lay.path, "rb") as fh:
                fh.seek(lay.value_offset + start)
                return fh.read(lay.frame_bytes)
    return _decoded_frame(lay, number)


def _decoded_frame(lay: PixelLayout, number: int) -> bytes:
    try:
        arr = pixel_array(str(lay.path), index=number - 1, raw=True)
    except Exception as exc:  # decoders raise ValueError/RuntimeError/...: wrapped at the boundary
        raise PixelError(f"decoding frame {number} failed: {exc}") from exc
    return np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"), copy=False)).tobytes()


def _stored_frame(lay: PixelLayout, number: int) -> bytes:
    try:
        with open(lay.path, "rb") as fh:
            fh.seek(lay.value_offset)
            return get_frame(fh, number - 1, number_of_frames=lay.frames)
    except (ValueError, OSError) as exc:
        raise PixelError(f"reading frame {number}'s fragments failed: {exc}") from exc


def frame_bytes(lay: PixelLayout, number: int, offer: Offer) -> bytes:
    """One frame's bytes as ``offer`` says: as stored (compressed) or native Explicit VR Little Endian."""
    if lay.encapsulated and offer.transfer_syntax == lay.syntax:
        return _stored_frame(lay, number)
    if lay.encapsulated:
        return _decoded_frame(lay, number)
    return _native_frame(lay, number)


def native_value(lay: PixelLayout) -> bytes:
    """The whole native Pixel Data value in Explicit VR Little Endian (a bulk data request for it).

    Raises
    ------
    BadRequest
        When the Pixel Data is encapsulated (served frame by frame instead).
    """
    if lay.encapsulated:
        raise BadRequest("encapsulated Pixel Data is served per frame")
    if lay.syntax in _SLICEABLE and lay.value_offset >= 0:
        with open(lay.path, "rb") as fh:
            fh.seek(lay.value_offset)
            return fh.read(lay.value_length)
    return b"".join(_decoded_frame(lay, n) for n in range(1, lay.frames + 1))


def parse_frame_list(text: str) -> list[int]:
    """``"1,3,5"`` -> [1, 3, 5]; raises :class:`BadRequest` for anything but positive integers."""
    try:
        numbers = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise BadRequest(f"frame list {text!r} is not comma-separated frame numbers") from None
    if not numbers:
        raise BadRequest("the frame list is empty")
    return numbers
