"""decode_instance: errors per instance, bounded inflate, frames, byte order."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicom_node.errors import DecodeError, PixelError, UnsupportedTransferSyntaxError
from dicom_node.pixels.decode import decode_instance, iter_frames, read_dataset
from dicom_node.pixels.syntaxes import SYNTAXES, decoder_plugins, require_decoder


def test_every_listed_syntax_has_an_installed_decoder() -> None:
    for info in SYNTAXES:
        require_decoder(info.uid)  # raises naming the missing dependency otherwise
    assert "pylibjpeg" in decoder_plugins("1.2.840.10008.1.2.4.201")


def test_unsupported_syntax_is_a_clear_error() -> None:
    ds = dcmread(get_testdata_file("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    with pytest.raises(UnsupportedTransferSyntaxError, match=r"1\.2\.840\.10008\.1\.2\.4\.100 \(MPEG2"):
        decode_instance(ds)


def test_corrupt_stream_is_a_decode_error_naming_the_instance() -> None:
    ds = dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:40] + b"\x00" * 64])
    with pytest.raises(DecodeError, match=ds.SOPInstanceUID):
        decode_instance(ds)


def test_no_pixel_data() -> None:
    with pytest.raises(DecodeError, match="no Pixel Data"):
        decode_instance(get_testdata_file("rtplan.dcm"))


def test_multiframe_frames_first_and_iter_frames_match() -> None:
    path = get_testdata_file("emri_small_RLE.dcm")
    arr = decode_instance(path)
    assert arr.shape == (10, 64, 64)
    frames = list(iter_frames(path))
    assert len(frames) == 10 and all(np.array_equal(f, arr[i]) for i, f in enumerate(frames))


def test_big_endian_comes_back_in_native_order() -> None:
    be = decode_instance(get_testdata_file("MR_small_bigendian.dcm"))
    le = decode_instance(get_testdata_file("MR_small.dcm"))
    assert be.dtype.byteorder in ("=", "|", "<") and np.array_equal(be, le)
    assert tuple(le[0, 31:34]) == (422, 319, 361)  # pydicom's reference values for MR_small


def _deflated_file(tmp_path: Path, payload: np.ndarray) -> Path:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows, ds.Columns = payload.shape
    ds.PixelData = payload.tobytes()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = tmp_path / "dfl.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_deflated_within_limit_decodes(tmp_path: Path) -> None:
    data = (np.arange(256 * 256, dtype=np.int16) % 1000).reshape(256, 256)
    path = _deflated_file(tmp_path, data)
    assert np.array_equal(decode_instance(path, max_inflated_bytes=16 * 1024**2), data)


def test_deflate_bomb_is_refused_without_inflating_it(tmp_path: Path) -> None:
    # 64 MiB of zeros deflate to ~64 KiB; a 4 MiB limit must stop the inflate early.
    zeros = np.zeros((4096, 8192), dtype=np.int16)
    path = _deflated_file(tmp_path, zeros)
    assert path.stat().st_size < 1024**2
    with pytest.raises(DecodeError, match="beyond the limit of 4194304 bytes"):
        read_dataset(path, max_inflated_bytes=4 * 1024**2)


def test_corrupt_deflate_stream(tmp_path: Path) -> None:
    path = _deflated_file(tmp_path, np.ones((64, 64), dtype=np.int16))
    raw = bytearray(path.read_bytes())
    raw[-200:] = b"\xff" * 200
    path.write_bytes(bytes(raw))
    with pytest.raises(PixelError):
        decode_instance(path)


def test_not_dicom(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"hello")
    with pytest.raises(DecodeError):
        decode_instance(path)


def test_dataset_input_is_not_modified() -> None:
    ds = dcmread(get_testdata_file("MR_small_RLE.dcm"))
    before = copy.deepcopy(ds)
    decode_instance(ds)
    assert ds.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID and ds.PixelData == before.PixelData
