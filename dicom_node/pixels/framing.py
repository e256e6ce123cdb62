"""Walk a dataset's element framing before it is acknowledged (PS3.5 7.1-7.5, A.4).

An instance is acknowledged only when every byte of its dataset belongs to a
well-framed element: tags ascend within each dataset (top level and each item),
explicit VRs are known codes, every value length fits in the bytes present (and
in its enclosing item or sequence), undefined-length sequences and items end
with their delimiters, and encapsulated Pixel Data is a Basic Offset Table item,
fragment items and a sequence delimiter. No value is decoded: values are skipped
by offset, so native Pixel Data is never read, let alone copied. The walk runs
on a memory map of the received file (or on bytes already in memory) and, for
Deflated Explicit VR Little Endian, on the stream coming out of the node's one
bounded inflater (:mod:`dicom_node.pixels.inflate`), which it consumes once.

The walk returns a :class:`Framing`: the raw values of the few top-level
attributes the caller asked for (the identifying UIDs, the pixel geometry) and
where Pixel Data sits, so the geometry check and the index record need no second
parse. A callback sees the Pixel Data header before its value is skipped, so a
Deflated dataset whose declared Pixel Data length contradicts its geometry is
refused before the rest of it is inflated.
"""

from __future__ import annotations

import io
import mmap
import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from pydicom.datadict import DicomDictionary
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from dicom_node.errors import DecodeError, UnreadableDatasetError
from dicom_node.pixels.inflate import BoundedInflater
from dicom_node.pixels.syntaxes import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE

__all__ = [
    "EXTENDED_OFFSET_TABLE", "EXTENDED_OFFSET_TABLE_LENGTHS", "PIXEL_DATA", "Framing", "PixelHeader",
    "check_offset_tables", "walk_bytes", "walk_file",
]

PIXEL_DATA = 0x7FE00010
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
#: Nesting deeper than this is refused: no real IOD comes close, and it bounds the recursion.
MAX_DEPTH = 64

#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
#: Explicit VRs with a 2-byte length (PS3.5 Table 7.1-2).
_SHORT_VRS = frozenset({
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL",
    b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
})


@dataclass(frozen=True)
class PixelHeader:
    """The top-level Pixel Data element as its header declares it.

    Attributes
    ----------
    offset : int
        Byte offset of the value within the dataset (of the inflated dataset when Deflated).
    length : int | None
        Value length of native Pixel Data; ``None`` when encapsulated (undefined length).
    vr : str | None
        ``"OB"`` or ``"OW"`` in explicit VR, ``None`` in implicit VR.
    values : dict[int, RawDataElement]
        The captured top-level elements that precede Pixel Data (all of the geometry attributes).
    """

    offset: int
    length: int | None
    vr: str | None
    values: dict[int, RawDataElement]

    def dataset(self) -> Dataset:
        """The captured elements as a pydicom dataset (values convert on access)."""
        return Dataset({BaseTag(tag): elem for tag, elem in self.values.items()})


@dataclass
class Framing:
    """What a successful walk found.

    Attributes
    ----------
    size : int
        Bytes the dataset occupies (inflated bytes when Deflated).
    elements : int
        Elements walked at all levels (items and delimiters not counted).
    values : dict[int, RawDataElement]
        The requested top-level elements that were present, undecoded.
    pixels : PixelHeader | None
        The top-level Pixel Data header, if the dataset has Pixel Data.
    fragments : int | None
        Encapsulated Pixel Data: fragment items after the Basic Offset Table.
    fragment_lengths : list[int]
        Encapsulated Pixel Data: each fragment's length, in order.
    offset_table : bytes
        Encapsulated Pixel Data: the Basic Offset Table item's value (empty when absent).
    """

    size: int = 0
    elements: int = 0
    values: dict[int, RawDataElement] = field(default_factory=dict)
    pixels: PixelHeader | None = None
    fragments: int | None = None
    fragment_lengths: list[int] = field(default_factory=list)
    offset_table: bytes = b""

    def dataset(self) -> Dataset:
        """The captured elements as a pydicom dataset (values convert on access)."""
        return Dataset({BaseTag(tag): elem for tag, elem in self.values.items()})

    def text(self, tag: int) -> str:
        """A captured value as ASCII text without padding (``""`` when absent): UIDs, codes, numbers."""
        elem = self.values.get(tag)
        return bytes(elem.value or b"").decode("ascii", "replace").rstrip("\x00 ") if elem is not None else ""


#: Per byte order (little endian True): tag, 16-bit length, 32-bit length, item header.
_STRUCTS = {
    little: (struct.Struct(o + "HH"), struct.Struct(o + "H"), struct.Struct(o + "I"), struct.Struct(o + "HHI"))
    for little, o in ((True, "<"), (False, ">"))
}


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Walker:
    """One walk over one dataset; positions are absolute offsets into the source.

    ``buf`` holds the bytes from absolute offset ``base``: the whole file (a memory
    map, ``base`` 0) or a window of the inflated stream that slides forward as the
    walk proceeds (values are skipped by discarding inflated output).
    """

    def __init__(self, buf: bytes | bytearray | memoryview | mmap.mmap, start: int, end: int | None,
                 inflater: BoundedInflater | None, capture: Collection[int],
                 on_pixel_data: Callable[[PixelHeader], None] | None) -> None:
        self.buf = buf
        self.base = 0
        self.start = start
        self.end = end
        self.inflater = inflater
        self.capture = capture
        self.on_pixel_data = on_pixel_data
        self.found = Framing()

    # -- the bytes -------------------------------------------------------------------------------------------
    def fail(self, pos: int, tag: int | None, reason: str) -> NoReturn:
        # Reason first: a DIMSE Error Comment keeps only 64 characters (the log keeps all of it).
        where = ("inflated byte " if self.inflater is not None else "byte ") + str(pos - self.start)
        named = f" {_tag_text(tag)}" if tag is not None else ""
        raise UnreadableDatasetError(f"framing: {reason} at {where}{named}")

    def _pull(self) -> bool:
        """Append the next inflated chunk to the window; False at the end of the stream."""
        assert self.inflater is not None and isinstance(self.buf, bytearray)
        try:
            chunk = self.inflater.next_chunk()
        except DecodeError as exc:
            raise UnreadableDatasetError(str(exc)) from exc
        if not chunk:
            self.end = self.base + len(self.buf)
            return False
        self.buf += chunk
        return True

    def ensure(self, pos: int, n: int, tag: int | None, what: str) -> int:
        """Index into ``buf`` of ``pos``, with ``n`` bytes available there; fails as truncated otherwise."""
        if pos + n <= self.base + len(self.buf):
            return pos - self.base
        if self.inflater is not None:
            assert isinstance(self.buf, bytearray)
            del self.buf[:pos - self.base]  # the walk never goes back: drop what it has passed
            self.base = pos
            while len(self.buf) < n:
                if not self._pull():
                    break
            if len(self.buf) >= n:
                return 0
        present = self.base + len(self.buf) - pos
        self.fail(pos, tag, f"truncated {what} ({max(present, 0)} of {n} bytes)")

    def has_more(self, pos: int) -> bool:
        """True while bytes remain at or after ``pos`` (the top level of a dataset)."""
        if pos < self.base + len(self.buf):
            return True
        if self.inflater is None or self.end is not None:
            return False
        self.ensure(pos, 0, None, "")
        return self._pull()

    def skip(self, pos: int, length: int, tag: int) -> int:
        """Position after a value of ``length`` bytes at ``pos``, which must all be present."""
        stop = pos + length
        if stop <= self.base + len(self.buf):
            return stop
        if self.inflater is None:
            self.fail(pos, tag, f"length {length} > {self.base + len(self.buf) - pos} bytes left")
        assert isinstance(self.buf, bytearray)
        self.base += len(self.buf)
        self.buf.clear()
        while self.base + len(self.buf) < stop:
            # Discard whole chunks the value covers; keep only what follows it.
            self.base += len(self.buf)
            self.buf.clear()
            if not self._pull():
                self.fail(pos, tag, f"length {length} > {self.base - pos} bytes left")
        return stop

    def present(self, pos: int, length: int, tag: int) -> None:
        """Fail unless a value about to be walked into fits in the file (the inflated stream is checked as read)."""
        if self.inflater is None and self.end is not None and pos + length > self.end:
            self.fail(pos, tag, f"length {length} > {self.end - pos} bytes left")

    # -- the structure ---------------------------------------------------------------------------------------
    def dataset(self, pos: int, stop: int | None, delimited: bool, depth: int, explicit: bool, little: bool) -> int:
        """Walk the elements of one dataset from ``pos``; returns the position after it.

        ``stop`` is the end of a defined-length item (or of the whole source);
        ``delimited`` means an undefined-length item, ended by an Item Delimitation Item.
        """
        tag_fmt, u16, u32, _ = _STRUCTS[little]
        last = -1
        while True:
            if stop is not None:
                if pos >= stop:
                    if delimited:
                        self.fail(pos, None, "item has no Item Delimitation Item")
                    return pos
            elif not delimited and not self.has_more(pos):
                return pos
            i = self.ensure(pos, 8, None, "element header")
            group, elem = tag_fmt.unpack_from(self.buf, i)
            tag = group << 16 | elem
            if group == 0xFFFE:
                if tag == _ITEM_END and delimited:
                    if u32.unpack_from(self.buf, i + 4)[0] != 0:
                        self.fail(pos, tag, "Item Delimitation Item length not 0")
                    return pos + 8
                if tag == _SEQUENCE_END and delimited:
                    self.fail(pos, tag, "sequence ends before Item Delimitation Item")
                self.fail(pos, tag, "item or delimiter tag in a dataset")
            if tag <= last:
                self.fail(pos, tag, f"tag out of order (after {_tag_text(last)})")
            last = tag
            vr: bytes | None = None
            if explicit:
                vr = bytes(self.buf[i + 4:i + 6])
                if vr in _SHORT_VRS:
                    length = u16.unpack_from(self.buf, i + 6)[0]
                    value = pos + 8
                elif vr in _LONG_VRS:
                    i = self.ensure(pos, 12, tag, "element header")
                    length = u32.unpack_from(self.buf, i + 8)[0]
                    value = pos + 12
                else:
                    self.fail(pos, tag, f"unknown VR {vr!r}")
            else:
                length = u32.unpack_from(self.buf, i + 4)[0]
                value = pos + 8
            if stop is not None and value > stop:
                self.fail(pos, tag, "element header overruns its item")
            self.found.elements += 1
            if length == _UNDEFINED:
                pos = self.undefined(value, tag, vr, depth, explicit, little)
                continue
            if stop is not None and value + length > stop:
                where = f"> {stop - value} bytes left" if depth == 0 else "overruns its item"
                self.fail(pos, tag, f"length {length} {where}")
            if depth == 0 and (tag == PIXEL_DATA or tag in self.capture):
                self.top_level(value, length, tag, vr, explicit, little)
            if vr == b"SQ" or (vr is None and length and DicomDictionary.get(tag, ("",))[0] == "SQ"):
                self.present(value, length, tag)
                pos = self.sequence(value, value + length, depth + 1, explicit, little, tag)
            else:
                pos = self.skip(value, length, tag)

    def top_level(self, value: int, length: int | None, tag: int, vr: bytes | None, explicit: bool,
                  little: bool) -> None:
        """Note a top-level value the caller asked for, and Pixel Data (told to the callback first)."""
        if tag == PIXEL_DATA:
            header = PixelHeader(value - self.start, length, vr.decode() if vr else None, dict(self.found.values))
            self.found.pixels = header
            if self.on_pixel_data is not None:
                self.on_pixel_data(header)
        if length is not None and tag in self.capture:
            i = self.ensure(value, length, tag, "value")
            self.found.values[tag] = RawDataElement(BaseTag(tag), vr.decode() if vr else None, length,
                                                    bytes(self.buf[i:i + length]), value - self.start,
                                                    not explicit, little)

    def undefined(self, value: int, tag: int, vr: bytes | None, depth: int, explicit: bool, little: bool) -> int:
        """Walk an undefined-length value at ``value``; returns the position after its delimiter."""
        if tag == PIXEL_DATA and vr in (None, b"OB", b"OW", b"UN"):
            if depth == 0:
                self.top_level(value, None, tag, vr, explicit, little)
            return self.fragments(value, depth == 0, little)
        if vr is None or vr == b"SQ":
            return self.sequence(value, None, depth + 1, explicit, little, tag)
        if vr == b"UN":
            # PS3.5 6.2.2: an undefined-length UN is a sequence encoded in Implicit VR Little Endian.
            return self.sequence(value, None, depth + 1, False, True, tag)
        self.fail(value - 12, tag, f"undefined length on VR {vr.decode('ascii', 'replace')}")

    def sequence(self, pos: int, stop: int | None, depth: int, explicit: bool, little: bool, owner: int) -> int:
        """Walk the items of a sequence (defined length up to ``stop``, or up to its delimiter)."""
        if depth > MAX_DEPTH:
            self.fail(pos, owner, f"sequences nested over {MAX_DEPTH} deep")
        head = _STRUCTS[little][3]
        while True:
            if stop is not None and pos >= stop:
                return pos
            i = self.ensure(pos, 8, owner, "item header")
            group, elem, length = head.unpack_from(self.buf, i)
            tag = group << 16 | elem
            if tag == _SEQUENCE_END and stop is None:
                if length != 0:
                    self.fail(pos, tag, "Sequence Delimitation Item length not 0")
                return pos + 8
            if tag != _ITEM:
                self.fail(pos, tag, f"not an item in sequence {_tag_text(owner)}")
            if length == _UNDEFINED:
                pos = self.dataset(pos + 8, None, True, depth, explicit, little)
            else:
                if stop is not None and pos + 8 + length > stop:
                    self.fail(pos, tag, f"item length {length} overruns sequence {_tag_text(owner)}")
                self.present(pos + 8, length, tag)
                pos = self.dataset(pos + 8, pos + 8 + length, False, depth, explicit, little)

    def fragments(self, pos: int, top: bool, little: bool) -> int:
        """Walk encapsulated Pixel Data: offset table item, fragment items, delimiter (PS3.5 A.4)."""
        head = _STRUCTS[little][3]
        count = 0
        while True:
            i = self.ensure(pos, 8, PIXEL_DATA, "fragment item header")
            group, elem, length = head.unpack_from(self.buf, i)
            tag = group << 16 | elem
            if tag == _SEQUENCE_END:
                if length != 0:
                    self.fail(pos, tag, "Sequence Delimitation Item length not 0")
                if count == 0:
                    self.fail(pos, PIXEL_DATA, "no Basic Offset Table item")
                if top:
                    self.found.fragments = count - 1
                return pos + 8
            if tag != _ITEM or length == _UNDEFINED:
                self.fail(pos, tag, "not a fragment item in Pixel Data")
            if count == 0:
                if length % 4:
                    self.fail(pos, tag, f"Basic Offset Table length {length} not 4n")
                if top and length:
                    j = self.ensure(pos + 8, length, tag, "offset table")
                    self.found.offset_table = bytes(self.buf[j:j + length])
            elif top:
                self.found.fragment_lengths.append(length)
            count += 1
            pos = self.skip(pos + 8, length, tag)


EXTENDED_OFFSET_TABLE = 0x7FE00001
EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00002


def check_offset_tables(found: Framing, frames: int) -> None:
    """Check the Basic and Extended Offset Tables of encapsulated Pixel Data against its fragments (PS3.5 A.4).

    Each table, when present, has one entry per frame, starts at 0, ascends, and
    points at the item tag of a fragment (offsets count from the first fragment
    item). An Extended Offset Table requires an empty Basic Offset Table.

    Parameters
    ----------
    found : Framing
        A walk that captured (7FE0,0001) and (7FE0,0002) when present.
    frames : int
        Number of Frames declared (1 when absent).

    Raises
    ------
    UnreadableDatasetError
        Naming the table and what is wrong.
    """
    starts: set[int] = set()
    at = 0
    for length in found.fragment_lengths:
        starts.add(at)
        at += 8 + length
    tables = []
    if found.offset_table:
        tables.append(("Basic Offset Table", struct.unpack(f"<{len(found.offset_table) // 4}I", found.offset_table)))
    extended = found.values.get(EXTENDED_OFFSET_TABLE)
    if extended is not None:
        if found.offset_table:
            raise UnreadableDatasetError("both a Basic and an Extended Offset Table (PS3.5 A.4)")
        raw = bytes(extended.value or b"")
        if len(raw) % 8:
            raise UnreadableDatasetError(f"Extended Offset Table length {len(raw)} is not 8n")
        tables.append(("Extended Offset Table", struct.unpack(f"<{len(raw) // 8}Q", raw)))
        lengths = found.values.get(EXTENDED_OFFSET_TABLE_LENGTHS)
        if lengths is not None and len(bytes(lengths.value or b"")) != len(raw):
            raise UnreadableDatasetError("Extended Offset Table Lengths and Table differ in entries")
    for name, offsets in tables:
        if len(offsets) != frames:
            raise UnreadableDatasetError(f"{name} has {len(offsets)} entries for {frames} frames")
        if offsets[0] != 0 or any(b <= a for a, b in zip(offsets, offsets[1:], strict=False)):
            raise UnreadableDatasetError(f"{name} does not start at 0 and ascend")
        stray = next((o for o in offsets if o not in starts), None)
        if stray is not None:
            raise UnreadableDatasetError(f"{name} entry {stray} is not at a fragment")


def _syntax(transfer_syntax: str) -> tuple[bool, bool]:
    """(explicit, little) for a transfer syntax; every other syntax is Explicit VR Little Endian."""
    if transfer_syntax == IMPLICIT_VR_LE:
        return False, True
    return True, transfer_syntax != EXPLICIT_VR_BE


def _finish(walker: _Walker, explicit: bool, little: bool) -> Framing:
    end = walker.dataset(walker.start, walker.end, False, 0, explicit, little)
    walker.found.size = end - walker.start
    return walker.found


def walk_bytes(data: bytes | bytearray | memoryview, transfer_syntax: str, *, max_inflated: int,
               capture: Collection[int] = (), on_pixel_data: Callable[[PixelHeader], None] | None = None) -> Framing:
    """Walk a dataset (no file meta) held in memory; see :func:`walk_file`."""
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LE:
        inflater = BoundedInflater(io.BytesIO(data), max_inflated)
        return _finish(_Walker(bytearray(), 0, None, inflater, capture, on_pixel_data), True, True)
    explicit, little = _syntax(transfer_syntax)
    return _finish(_Walker(data, 0, len(data), None, capture, on_pixel_data), explicit, little)


def walk_file(path: Path, data_offset: int, transfer_syntax: str, *, max_inflated: int,
              capture: Collection[int] = (),
              on_pixel_data: Callable[[PixelHeader], None] | None = None) -> Framing:
    """Walk the framing of the dataset stored in ``path`` from ``data_offset`` to its end.

    Parameters
    ----------
    path : pathlib.Path
        The received file (Part 10 header followed by the dataset).
    data_offset : int
        Where the dataset starts in the file.
    transfer_syntax : str
        The dataset's transfer syntax UID.
    max_inflated : int
        Bound on the inflated size of a Deflated dataset.
    capture : Collection[int]
        Top-level tags whose raw values to return (small attributes only).
    on_pixel_data : callable, optional
        Called with the top-level :class:`PixelHeader` before its value is skipped; may raise.

    Returns
    -------
    Framing
        The captured values and where Pixel Data sits.

    Raises
    ------
    UnreadableDatasetError
        The framing is broken (the message names the byte offset and the tag), or a Deflated
        dataset is corrupt or inflates beyond ``max_inflated``.
    """
    with open(path, "rb") as raw:
        if transfer_syntax == DEFLATED_EXPLICIT_VR_LE:
            raw.seek(data_offset)
            walker = _Walker(bytearray(), 0, None, BoundedInflater(raw, max_inflated), capture, on_pixel_data)
            return _finish(walker, True, True)
        size = raw.seek(0, 2)
        if size <= data_offset:
            return Framing()
        explicit, little = _syntax(transfer_syntax)
        # A read-only map: values are skipped by offset, so pages of Pixel Data are never touched.
        with mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return _finish(_Walker(view, data_offset, size, None, capture, on_pixel_data), explicit, little)
