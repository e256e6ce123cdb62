"""The one check of declared pixel geometry against the Pixel Data, before any pixel allocation.

A dataset declares how big its pixels are (Rows, Columns, Number of Frames,
Samples per Pixel, Bits Allocated: PS3.3 C.7.6.3, C.7.6.6) and carries Pixel
Data whose length (native, PS3.5 8.1.1) or number of fragments (encapsulated,
PS3.5 A.4) must agree with it. A decoder trusts the declaration and allocates
from it: 65535 x 65535 declared over 8 KiB of data asks for gigabytes, and a
native value longer than the declaration is broadcast into the wrong shape.
Checking the declaration first turns both into a named reason, at ingest where
it is cheap and again before decode, and the same numbers give the decoded
size for a pixel budget.

Usage::

    geometry = DeclaredGeometry.from_dataset(ds)        # header only, no pixel access
    check_declared(geometry, native_length=n, fragments=None)
    check_budget(geometry.decoded_bytes, budget, what=..., key="pixels.max_volume_bytes")

Every failure raises :class:`~dicom_node.errors.PixelDataError` whose message is
``"instance <SOP Instance UID>: <what is wrong>"``.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import parse_basic_offsets, parse_fragments

from dicom_node.errors import PixelDataError

__all__ = [
    "PIXEL_KEYWORDS",
    "DeclaredGeometry",
    "check_budget",
    "check_dataset",
    "check_declared",
    "count_fragments",
    "format_bytes",
    "pixel_value_length",
]

#: The three pixel data elements (PS3.3 C.7.6.3): integer, float and double float.
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

#: Bits Allocated values a decoder can hold (PS3.5 8.1.1; 1 is packed bits, 32/64 also float data).
_BITS_ALLOCATED = frozenset({1, 8, 16, 32, 64})

#: Samples per Pixel each Photometric Interpretation requires (PS3.3 C.7.6.3.1.2).
_SAMPLES = {
    "MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1,
    "RGB": 3, "HSV": 3, "YBR_FULL": 3, "YBR_FULL_422": 3, "YBR_PARTIAL_422": 3, "YBR_PARTIAL_420": 3,
    "YBR_ICT": 3, "YBR_RCT": 3, "XYB": 3, "ARGB": 4, "CMYK": 4,
}

#: Rows and Columns are US (PS3.5 6.2): a declaration beyond this is not a valid value.
_MAX_US = 65535


@dataclass(frozen=True)
class DeclaredGeometry:
    """What a dataset declares about its pixels (header values only).

    Attributes
    ----------
    sop_instance_uid : str
        Names the instance in every reason (UIDs are not PHI).
    rows, columns, frames, samples : int
        (0028,0010), (0028,0011), (0028,0008) (1 when absent), (0028,0002).
    bits_allocated, bits_stored, high_bit : int
        (0028,0100), (0028,0101), (0028,0102).
    photometric : str
        (0028,0004).
    keyword : str
        Which pixel element the dataset carries (``PixelData``, ``FloatPixelData``, ...).
    """

    sop_instance_uid: str
    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    high_bit: int
    photometric: str
    keyword: str = "PixelData"

    @classmethod
    def from_dataset(cls, ds: Dataset) -> DeclaredGeometry:
        """Read the declaration from ``ds`` without touching its pixel values.

        Raises
        ------
        PixelDataError
            A required attribute is missing or not an integer.
        """
        uid = str(ds.get("SOPInstanceUID", "") or "<no SOPInstanceUID>")
        keyword = next((k for k in PIXEL_KEYWORDS if k in ds), "PixelData")
        float_bits = {"FloatPixelData": 32, "DoubleFloatPixelData": 64}.get(keyword)
        bits_allocated = _int(ds, uid, "BitsAllocated", float_bits)
        # Float pixel data have no Bits Stored / High Bit (PS3.3 C.7.6.24); every bit is significant.
        bits_stored = _int(ds, uid, "BitsStored", bits_allocated if float_bits else None)
        return cls(
            sop_instance_uid=uid,
            rows=_int(ds, uid, "Rows"),
            columns=_int(ds, uid, "Columns"),
            frames=_int(ds, uid, "NumberOfFrames", 1),
            samples=_int(ds, uid, "SamplesPerPixel"),
            bits_allocated=bits_allocated,
            bits_stored=bits_stored,
            high_bit=_int(ds, uid, "HighBit", bits_stored - 1 if float_bits else None),
            photometric=str(ds.get("PhotometricInterpretation", "") or "").strip(),
            keyword=keyword,
        )

    @property
    def pixels(self) -> int:
        """Samples in all frames: rows x columns x frames x samples per pixel."""
        return self.rows * self.columns * self.frames * self.samples

    @property
    def native_bytes(self) -> int:
        """Length native Pixel Data must have, before the even-length pad (PS3.5 8.1.1, 8.2)."""
        if self.bits_allocated == 1:
            return (self.pixels + 7) // 8
        if self.photometric == "YBR_FULL_422" and self.samples == 3:
            # Native YBR_FULL_422 stores two Cb/Cr samples per pair of pixels (PS3.3 C.7.6.3.1.2).
            return self.rows * self.columns * self.frames * 2 * (self.bits_allocated // 8)
        return self.pixels * (self.bits_allocated // 8)

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the decoded array: 1-bit data unpack to one byte per sample."""
        return self.pixels * max(1, self.bits_allocated // 8)

    def describe(self) -> str:
        """The product spelled out, for reasons: ``Rows 512 x Columns 512 x 1 frame x 1 sample x 2 bytes``."""
        unit = "1 bit" if self.bits_allocated == 1 else f"{self.bits_allocated // 8} byte{'s' * (self.bits_allocated > 8)}"
        return (f"Rows {self.rows} x Columns {self.columns} x {self.frames} frame{'s' * (self.frames != 1)}"
                f" x {self.samples} sample{'s' * (self.samples != 1)} x {unit}")


def _int(ds: Dataset, uid: str, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        if default is not None:
            return default
        raise PixelDataError(f"instance {uid}: {keyword} is missing", f"{keyword} is missing")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise PixelDataError(f"instance {uid}: {keyword} {value!r} is not an integer",
                             f"{keyword} is not an integer") from exc


def _fail(geometry: DeclaredGeometry, reason: str) -> PixelDataError:
    return PixelDataError(f"instance {geometry.sop_instance_uid}: {reason}", reason)


def _check_attributes(g: DeclaredGeometry) -> None:
    if not (1 <= g.rows <= _MAX_US and 1 <= g.columns <= _MAX_US):
        raise _fail(g, f"Rows {g.rows} x Columns {g.columns} is not an image size (1..{_MAX_US} each)")
    if g.frames < 1:
        raise _fail(g, f"NumberOfFrames {g.frames} is not a frame count")
    if g.bits_allocated not in _BITS_ALLOCATED:
        raise _fail(g, f"BitsAllocated {g.bits_allocated} is not one of {sorted(_BITS_ALLOCATED)}")
    if not 1 <= g.bits_stored <= g.bits_allocated:
        raise _fail(g, f"BitsStored {g.bits_stored} is not within 1..BitsAllocated {g.bits_allocated}")
    if g.high_bit != g.bits_stored - 1:
        raise _fail(g, f"HighBit {g.high_bit} is not BitsStored {g.bits_stored} - 1")
    if not g.photometric:
        raise _fail(g, "PhotometricInterpretation is missing")
    expected = _SAMPLES.get(g.photometric)
    if expected is None:
        raise _fail(g, f"PhotometricInterpretation {g.photometric!r} is not a defined term (PS3.3 C.7.6.3.1.2)")
    if g.samples != expected:
        raise _fail(g, f"SamplesPerPixel {g.samples} does not fit PhotometricInterpretation {g.photometric} ({expected})")


def check_declared(geometry: DeclaredGeometry, *, native_length: int | None, fragments: int | None) -> None:
    """Check a declaration is possible and agrees with the Pixel Data.

    Parameters
    ----------
    geometry : DeclaredGeometry
        The declaration.
    native_length : int, optional
        Length of native Pixel Data (its element's value length); ``None`` when encapsulated or unknown.
    fragments : int, optional
        Number of fragments of encapsulated Pixel Data (PS3.5 A.4); ``None`` when native or unknown.

    Raises
    ------
    PixelDataError
        With the instance and what is wrong, e.g. ``PixelData is 8192 bytes; Rows 65535 x Columns 65535
        x 1 frame x 1 sample x 2 bytes needs 8589803520``.
    """
    g = geometry
    _check_attributes(g)
    if native_length is not None:
        need = g.native_bytes
        # An odd length is padded by one byte to keep values even (PS3.5 7.1.1); some writers pad
        # further (pydicom's MR_small_padded.dcm: 128 bytes), which decoders strip. Padding short
        # of one more frame is accepted so; more is a wrong declaration (or a bomb: 1.5 GiB on 64x64).
        if native_length < need or native_length - need >= max(2, g.native_bytes // g.frames):
            raise _fail(g, f"{g.keyword} is {native_length} bytes; {g.describe()} needs {need}")
    if fragments is not None and fragments < g.frames:
        raise _fail(g, f"encapsulated {g.keyword} has {fragments} fragment{'s' * (fragments != 1)} "
                       f"for {g.frames} frame{'s' * (g.frames != 1)} (at least one per frame, PS3.5 A.4)")


def format_bytes(n: int | float) -> str:
    """``4.0 GiB``-style size for reasons and logs."""
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - the loop always returns


def check_budget(nbytes: int, budget: int, *, what: str, key: str) -> None:
    """Refuse a decode whose output would be over ``budget`` bytes.

    Parameters
    ----------
    nbytes : int
        Bytes the decoded output needs.
    budget : int
        The configured budget; 0 means no budget.
    what : str
        Names the output in the reason (``"volume of 2048 slices 1024x1024 float32"``).
    key : str
        The configuration key of the budget, so the operator knows what to raise.

    Raises
    ------
    PixelDataError
        ``"<what> is 8.0 GiB, over pixels.max_volume_bytes 4.0 GiB"``.
    """
    if budget and nbytes > budget:
        reason = f"{what} is {format_bytes(nbytes)}, over {key} {format_bytes(budget)}"
        raise PixelDataError(reason, reason)


def pixel_value_length(ds: Dataset, keyword: str) -> tuple[int | None, bytes | None]:
    """Value length of a pixel element without loading a deferred value, and the value when already loaded.

    Returns ``(None, None)`` for an undefined length (encapsulated) whose value is not loaded.
    """
    elem = ds.get_item(keyword, keep_deferred=True)
    if elem is None:
        return None, None
    value = elem.value
    if isinstance(value, (bytes, bytearray)):
        return len(value), bytes(value) if isinstance(value, bytearray) else value
    if isinstance(elem, RawDataElement) and elem.length != 0xFFFFFFFF:
        return elem.length, None
    if isinstance(elem, DataElement) and value is None:
        return 0, None
    return None, None


def count_fragments(value: bytes) -> int:
    """Number of fragments in an encapsulated value (the Basic Offset Table item excluded, PS3.5 A.4).

    Raises
    ------
    ValueError
        The item framing is broken (a truncated item header too).
    """
    stream = io.BytesIO(value)
    try:
        parse_basic_offsets(stream)  # leaves the stream at the first fragment's item tag
        fragments, _ = parse_fragments(stream)
    except struct.error as exc:  # an item header cut short
        raise ValueError(f"truncated item header: {exc}") from exc
    return fragments


def check_dataset(ds: Dataset, *, encapsulated: bool) -> DeclaredGeometry:
    """Check ``ds``'s declaration against its pixel element; returns the declaration.

    Native values are checked by length (a deferred value is not read). An
    encapsulated value is checked by fragment count when it is loaded; when it
    is deferred only the declaration itself is checked.

    Raises
    ------
    PixelDataError
        As :func:`check_declared`; also for encapsulated data whose item framing is broken.
    """
    geometry = DeclaredGeometry.from_dataset(ds)
    length, value = pixel_value_length(ds, geometry.keyword)
    if not encapsulated:
        check_declared(geometry, native_length=length, fragments=None)
        return geometry
    fragments: int | None = None
    if value is not None:
        try:
            fragments = count_fragments(value)
        except ValueError as exc:
            raise _fail(geometry, f"encapsulated {geometry.keyword} has broken item framing: {exc}") from exc
    check_declared(geometry, native_length=None, fragments=fragments)
    return geometry
