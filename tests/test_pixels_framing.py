"""pixels/framing.py: the element framing walk run before an instance is acknowledged."""

from __future__ import annotations

import struct

import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from dicom_node.errors import UnreadableDatasetError
from dicom_node.pixels.framing import (
    EXTENDED_OFFSET_TABLE,
    Framing,
    PixelHeader,
    check_offset_tables,
    walk_bytes,
    walk_file,
)
from dicom_node.pixels.inflate import deflate

LIMIT = 64 * 1024 * 1024
ROWS = 0x00280010


def image(rows: int = 4, columns: int = 4, pixels: bytes | None = None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Modality = "CT"
    ref = Dataset()
    ref.ReferencedSOPInstanceUID = "1.2.3.5"
    ref.ReferencedSOPClassUID = "1.2.3.6"
    ds.ReferencedImageSequence = Sequence([ref, ref])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels if pixels is not None else bytes(2 * rows * columns)
    ds["PixelData"].VR = "OW"
    return ds


def encode(ds: Dataset, implicit: bool = False, little: bool = True) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = little
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    """One Explicit VR Little Endian element, framed by hand (so it can be wrong on purpose)."""
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def header(group: int, elem: int, vr: bytes, length: int) -> bytes:
    return struct.pack("<HH2sHI", group, elem, vr, 0, length)


def item(length: int, tag: tuple[int, int] = (0xFFFE, 0xE000)) -> bytes:
    return struct.pack("<HHI", *tag, length)


ITEM_END = item(0, (0xFFFE, 0xE00D))
SEQ_END = item(0, (0xFFFE, 0xE0DD))
UNDEFINED = 0xFFFFFFFF


def refused(data: bytes, syntax: str = ExplicitVRLittleEndian) -> str:
    with pytest.raises(UnreadableDatasetError) as info:
        walk_bytes(data, syntax, max_inflated=LIMIT)
    return str(info.value)


@pytest.mark.parametrize(("syntax", "implicit", "little"), [
    (ExplicitVRLittleEndian, False, True),
    (ImplicitVRLittleEndian, True, True),
    (ExplicitVRBigEndian, False, False),
])
def test_valid_native_dataset_walks_and_reports_pixel_data(syntax: str, implicit: bool, little: bool) -> None:
    data = encode(image(), implicit, little)
    found = walk_bytes(data, syntax, max_inflated=LIMIT, capture={ROWS, 0x00080018})
    assert found.size == len(data)
    assert found.pixels is not None and found.pixels.length == 32
    assert data[found.pixels.offset - (8 if implicit else 12):found.pixels.offset][:4] == (
        struct.pack("<HH" if little else ">HH", 0x7FE0, 0x0010))
    assert found.text(0x00080018) == "1.2.3.4"
    assert found.dataset().Rows == 4
    assert found.fragments is None


def test_deflated_dataset_is_walked_through_the_bounded_inflater() -> None:
    data = encode(image(64, 64))
    found = walk_bytes(deflate(data), DeflatedExplicitVRLittleEndian, max_inflated=LIMIT)
    assert found.size == len(data) and found.pixels is not None and found.pixels.length == 64 * 64 * 2
    with pytest.raises(UnreadableDatasetError, match="beyond the limit"):
        walk_bytes(deflate(data), DeflatedExplicitVRLittleEndian, max_inflated=4096)


def test_pixel_header_is_seen_before_the_deflated_value_is_inflated() -> None:
    """A callback refusing the declared length stops the walk before the rest is inflated (the bound is not hit)."""
    head = encode(image(64, 64, pixels=b""))[:-12]  # without its empty Pixel Data element
    big = 32 * 1024 * 1024
    stream = deflate(head + header(0x7FE0, 0x0010, b"OW", big) + bytes(big))
    seen: list[PixelHeader] = []

    def refuse(pixels: PixelHeader) -> None:
        seen.append(pixels)
        raise UnreadableDatasetError("declared length refused")

    with pytest.raises(UnreadableDatasetError, match="declared length refused"):
        walk_bytes(stream, DeflatedExplicitVRLittleEndian, max_inflated=4 * 1024 * 1024, capture={ROWS},
                   on_pixel_data=refuse)
    assert seen[0].length == big and seen[0].dataset().Rows == 64


def test_undefined_length_sequences_and_items() -> None:
    inner = element(0x0008, 0x1150, b"UI", b"1.2\x00") + element(0x0008, 0x1155, b"UI", b"1.3\x00")
    seq = header(0x0008, 0x1140, b"SQ", UNDEFINED) + item(UNDEFINED) + inner + ITEM_END + item(len(inner)) + inner + SEQ_END
    data = element(0x0008, 0x0016, b"UI", b"1.2\x00") + seq + element(0x0010, 0x0010, b"PN", b"AB")
    assert walk_bytes(data, ExplicitVRLittleEndian, max_inflated=LIMIT).elements == 7
    assert "Item Delimitation" in refused(element(0x0008, 0x0016, b"UI", b"1.2\x00")
                                          + header(0x0008, 0x1140, b"SQ", UNDEFINED) + item(UNDEFINED) + inner + SEQ_END)
    assert "truncated" in refused(header(0x0008, 0x1140, b"SQ", UNDEFINED) + item(len(inner)) + inner)


def test_undefined_length_un_is_walked_as_implicit_vr() -> None:
    inner = struct.pack("<HHI", 0x0008, 0x1150, 4) + b"1.2\x00"
    data = header(0x0009, 0x1010, b"UN", UNDEFINED) + item(UNDEFINED) + inner + ITEM_END + SEQ_END
    assert walk_bytes(data, ExplicitVRLittleEndian, max_inflated=LIMIT).elements == 2


def test_implicit_vr_defined_length_sequence_is_walked_inside() -> None:
    ds = image()
    data = encode(ds, implicit=True)
    broken = bytearray(data)
    # The first item's first element (0008,1150) gets a length past the item end.
    at = data.index(struct.pack("<HH", 0x0008, 0x1150))
    broken[at + 4:at + 8] = struct.pack("<I", 200)
    assert "overruns its item" in refused(bytes(broken), ImplicitVRLittleEndian)


def test_encapsulated_pixel_data_counts_fragments_and_keeps_the_offset_table() -> None:
    frames = [b"\x01" * 10, b"\x02" * 6]
    ds = image(4, 4)
    ds.NumberOfFrames = 2
    ds.PixelData = encapsulate(frames, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    found = walk_bytes(encode(ds), RLELossless, max_inflated=LIMIT)
    assert found.pixels is not None and found.pixels.length is None
    assert found.fragments == 2 and found.fragment_lengths == [10, 6]
    assert struct.unpack("<2I", found.offset_table) == (0, 18)
    check_offset_tables(found, 2)
    with pytest.raises(UnreadableDatasetError, match="2 entries for 3 frames"):
        check_offset_tables(found, 3)


def test_offset_tables_that_do_not_point_at_fragments_are_refused() -> None:
    found = Framing(fragments=2, fragment_lengths=[10, 6], offset_table=struct.pack("<2I", 0, 12))
    with pytest.raises(UnreadableDatasetError, match="is not at a fragment"):
        check_offset_tables(found, 2)
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import BaseTag

    eot = RawDataElement(BaseTag(EXTENDED_OFFSET_TABLE), "OV", 16, struct.pack("<2Q", 0, 18), 0, False, True)
    ok = Framing(fragments=2, fragment_lengths=[10, 6], values={EXTENDED_OFFSET_TABLE: eot})
    check_offset_tables(ok, 2)
    both = Framing(fragments=2, fragment_lengths=[10, 6], offset_table=struct.pack("<2I", 0, 18),
                   values={EXTENDED_OFFSET_TABLE: eot})
    with pytest.raises(UnreadableDatasetError, match="both a Basic and an Extended"):
        check_offset_tables(both, 2)


BASE = element(0x0008, 0x0016, b"UI", b"1.2\x00")
ENCAPS = header(0x7FE0, 0x0010, b"OB", UNDEFINED)
CASES: dict[str, tuple[bytes, str]] = {
    "unknown VR": (BASE + element(0x0010, 0x0010, b"ZZ", b"AB"), "unknown VR b'ZZ' at byte 12 (0010,0010)"),
    "tags descending": (element(0x0010, 0x0010, b"PN", b"AB") + BASE, "tag out of order (after (0010,0010)"),
    "duplicate tag": (BASE + BASE, "tag out of order"),
    "length past the end": (BASE + header(0x7FE0, 0x0010, b"OW", 1000) + bytes(10), "length 1000 > 10 bytes left"),
    "cut element header": (BASE + b"\x10\x00\x10", "truncated element header (3 of 8 bytes) at byte 12"),
    "stray item tag": (BASE + item(0), "item or delimiter tag"),
    "undefined length on a string": (BASE + header(0x0010, 0x1000, b"UT", UNDEFINED), "undefined length on VR UT"),
    "item without sequence delimiter": (BASE + header(0x0008, 0x1140, b"SQ", UNDEFINED) + item(0), "truncated"),
    "non-item in a sequence": (BASE + header(0x0008, 0x1140, b"SQ", UNDEFINED) + BASE, "not an item in sequence"),
    "item longer than its sequence": (BASE + header(0x0008, 0x1140, b"SQ", 8) + item(4) + bytes(4), "overruns sequence"),
    "no offset table item": (BASE + ENCAPS + SEQ_END, "no Basic Offset Table"),
    "fragment cut short": (BASE + ENCAPS + item(0) + item(100) + bytes(20), "length 100 > 20 bytes left"),
    "no sequence delimiter after fragments": (BASE + ENCAPS + item(0) + item(2) + b"ab", "fragment item header"),
    "non-item among fragments": (BASE + ENCAPS + item(0) + BASE, "not a fragment item"),
    "offset table not a multiple of 4": (BASE + ENCAPS + item(2) + b"ab" + SEQ_END, "length 2 not 4n"),
    "delimiter with a length": (BASE + ENCAPS + item(0) + item(4, (0xFFFE, 0xE0DD)), "length not 0"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_framing_error_is_refused_with_offset_and_reason(case: str) -> None:
    data, reason = CASES[case]
    message = refused(data)
    assert reason in message
    assert message.startswith("framing: ") and len(message) < 100


def test_truncated_dataset_with_garbage_names_offset_and_tag() -> None:
    data = encode(image(64, 64))
    cut = data[:len(data) // 3] + b"\xff" * 4096
    message = refused(cut)
    assert message.endswith("(7FE0,0010)") and "bytes left" in message
    message = refused(encode(image(64, 64), implicit=True)[:len(data) // 3] + b"\xff" * 4096, ImplicitVRLittleEndian)
    assert "byte" in message


def test_nesting_is_bounded() -> None:
    data = b""
    for _ in range(100):
        data = header(0x0008, 0x1140, b"SQ", UNDEFINED) + item(UNDEFINED) + data
    assert "nested over 64 deep" in refused(data)


def test_walk_file_maps_the_file_and_starts_at_the_offset(tmp_path) -> None:
    data = encode(image(64, 64))
    path = tmp_path / "x.dcm"
    path.write_bytes(b"META" * 10 + data)
    found = walk_file(path, 40, ExplicitVRLittleEndian, max_inflated=LIMIT, capture={ROWS})
    assert found.size == len(data) and found.dataset().Rows == 64
    path.write_bytes(b"META" * 10 + data[:-1])
    with pytest.raises(UnreadableDatasetError, match="bytes left"):
        walk_file(path, 40, ExplicitVRLittleEndian, max_inflated=LIMIT)
    compressed = tmp_path / "z.dcm"
    stream = deflate(data)
    compressed.write_bytes(b"META" * 10 + stream[:len(stream) // 2])
    with pytest.raises(UnreadableDatasetError, match="at inflated byte"):  # the stream stops mid-dataset
        walk_file(compressed, 40, DeflatedExplicitVRLittleEndian, max_inflated=LIMIT)


def test_pixel_data_at_depth_is_not_the_top_level_pixel_data() -> None:
    icon = Dataset()
    icon.Rows = 1
    icon.PixelData = b"\x00\x00"
    icon["PixelData"].VR = "OW"
    ds = image()
    ds.IconImageSequence = Sequence([icon])
    found = walk_bytes(encode(ds), ExplicitVRLittleEndian, max_inflated=LIMIT)
    assert found.pixels is not None and found.pixels.length == 32
    assert found.pixels.offset == len(encode(ds)) - 32


@pytest.mark.parametrize(("uid", "problem"), [
    ("1.2.840.10008.1.2", None), ("0", None), ("1.0.3", None), ("1.02.3", "leading zero in a component"),
    ("01.2", "leading zero in a component"), ("1..2", "not digits separated by dots"), ("1.2.", "not digits separated by dots"),
    ("1.2a", "not digits separated by dots"), ("", "missing"), ("1." * 32 + "1", "longer than 64 characters (65)"),
])
def test_the_uid_validator_and_its_reason_agree(uid: str, problem: str | None) -> None:
    """PS3.5 9.1: the one UID check of incoming instances; its reason names what is wrong."""
    from dicom_node.validators import is_uid, uid_problem

    assert uid_problem(uid) == problem
    assert is_uid(uid) is (problem is None)
