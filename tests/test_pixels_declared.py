"""Declared pixel geometry against the Pixel Data (dicom_node.pixels.declared), before any allocation."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate

from dicom_node.errors import DecodeError, PixelDataError
from dicom_node.pixels.declared import (
    DeclaredGeometry,
    check_budget,
    check_dataset,
    check_declared,
    count_fragments,
    format_bytes,
)

UID = "1.2.3.4.5"


def _ds(rows: int = 64, cols: int = 64, bits: int = 16, frames: int | None = None, samples: int = 1,
        photometric: str = "MONOCHROME2", data: bytes | None = None) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = UID
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    ds.PixelRepresentation = 0
    if frames is not None:
        ds.NumberOfFrames = frames
    if data is not None:
        ds.PixelData = data
    return ds


def test_native_of_the_right_length_passes() -> None:
    check_dataset(_ds(data=bytes(64 * 64 * 2)), encapsulated=False)
    check_dataset(_ds(bits=8, rows=3, cols=3, data=bytes(10)), encapsulated=False)  # 9 bytes padded to 10
    check_dataset(_ds(bits=1, rows=3, cols=5, frames=2, data=bytes(4)), encapsulated=False)  # 30 bits packed
    check_dataset(_ds(samples=3, photometric="RGB", bits=8, data=bytes(64 * 64 * 3)), encapsulated=False)


def test_huge_declaration_over_small_data_names_the_product() -> None:
    with pytest.raises(PixelDataError) as info:
        check_dataset(_ds(rows=65535, cols=65535, data=bytes(8192)), encapsulated=False)
    assert str(info.value) == (f"instance {UID}: PixelData is 8192 bytes; Rows 65535 x Columns 65535 x 1 frame"
                               " x 1 sample x 2 bytes needs 8589672450")
    assert isinstance(info.value, DecodeError)  # callers that catch DecodeError keep working


def test_16_bit_data_labelled_8_bit_is_refused() -> None:
    with pytest.raises(PixelDataError, match="PixelData is 8192 bytes; .* x 1 byte needs 4096"):
        check_dataset(_ds(bits=8, data=bytes(64 * 64 * 2)), encapsulated=False)


def test_deflate_bomb_length_is_refused_without_reading_it() -> None:
    g = DeclaredGeometry.from_dataset(_ds())
    with pytest.raises(PixelDataError, match="is 1610612736 bytes"):
        check_declared(g, native_length=1536 * 1024**2, fragments=None)


def test_truncated_native_is_refused() -> None:
    with pytest.raises(PixelDataError, match="PixelData is 8130 bytes"):
        check_dataset(_ds(data=bytes(8130)), encapsulated=False)


def test_padding_short_of_a_frame_is_accepted_a_frame_more_is_not() -> None:
    g = DeclaredGeometry.from_dataset(_ds())
    check_declared(g, native_length=8192 + 128, fragments=None)  # as pydicom's MR_small_padded.dcm
    with pytest.raises(PixelDataError):
        check_declared(g, native_length=8192 * 2, fragments=None)


@pytest.mark.parametrize(("change", "reason"), [
    ({"BitsAllocated": 12}, "BitsAllocated 12 is not one of"),
    ({"BitsStored": 17}, "BitsStored 17 is not within 1..BitsAllocated 16"),
    ({"HighBit": 15, "BitsStored": 12}, "HighBit 15 is not BitsStored 12 - 1"),
    ({"Rows": 0}, "Rows 0 x Columns 64 is not an image size"),
    ({"NumberOfFrames": 0}, "NumberOfFrames 0 is not a frame count"),
    ({"SamplesPerPixel": 3}, "SamplesPerPixel 3 does not fit PhotometricInterpretation MONOCHROME2"),
    ({"PhotometricInterpretation": "PURPLE"}, "'PURPLE' is not a defined term"),
])
def test_impossible_declarations_are_named(change: dict[str, object], reason: str) -> None:
    ds = _ds(data=bytes(8192))
    for key, value in change.items():
        setattr(ds, key, value)
    with pytest.raises(PixelDataError, match=reason):
        check_dataset(ds, encapsulated=False)


def test_missing_attribute_is_named() -> None:
    ds = _ds(data=bytes(8192))
    del ds.Rows
    with pytest.raises(PixelDataError, match=f"instance {UID}: Rows is missing"):
        DeclaredGeometry.from_dataset(ds)


def test_encapsulated_fragments_against_frames() -> None:
    check_dataset(_ds(frames=2, data=encapsulate([b"\xff\xd8" * 8, b"\xff\xd8" * 8])), encapsulated=True)
    with pytest.raises(PixelDataError, match="has 1 fragment for 3 frames"):
        check_dataset(_ds(frames=3, data=encapsulate([b"\xff\xd8" * 8])), encapsulated=True)
    with pytest.raises(PixelDataError, match="broken item framing"):
        check_dataset(_ds(data=b"not an item at all"), encapsulated=True)


def test_count_fragments_and_truncated_items() -> None:
    assert count_fragments(encapsulate([b"ab" * 4, b"cd" * 4, b"ef" * 2])) == 3
    assert count_fragments(encapsulate([b"ab" * 4], has_bot=False)) == 1
    with pytest.raises(ValueError):
        count_fragments(b"\xfe\xff\x00\xe0\x00")


def test_float_pixel_data_needs_no_bits_stored() -> None:
    ds = Dataset()
    ds.SOPInstanceUID = UID
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.FloatPixelData = bytes(4 * 4 * 4)
    g = check_dataset(ds, encapsulated=False)
    assert (g.keyword, g.bits_allocated, g.decoded_bytes) == ("FloatPixelData", 32, 64)


def test_budget() -> None:
    check_budget(4 * 1024**3, 4 * 1024**3, what="volume", key="pixels.max_volume_bytes")
    check_budget(10**15, 0, what="volume", key="pixels.max_volume_bytes")  # 0: no budget
    with pytest.raises(PixelDataError, match=r"^volume of 2048 slices is 8\.0 GiB, over pixels\.max_volume_bytes 4\.0 GiB$"):
        check_budget(8 * 1024**3, 4 * 1024**3, what="volume of 2048 slices", key="pixels.max_volume_bytes")
    assert format_bytes(8192) == "8.0 KiB"
    assert format_bytes(12) == "12 bytes"
