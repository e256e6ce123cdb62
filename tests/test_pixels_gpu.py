"""GPU decode selection, and the nvImageCodec path where a GPU is present."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from dicom_node.pixels.decode import decode_instance
from dicom_node.pixels.gpu import decode_frames_gpu, probe_gpu, select_decoder

J2K, HTJ2K, JPEG = "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.50"


def yes() -> tuple[bool, str]:
    return True, "probe: device 0"


def no() -> tuple[bool, str]:
    return False, "probe: no device"


def test_gpu_chosen_only_when_every_syntax_has_a_gpu_decoder_and_a_device_answers() -> None:
    assert select_decoder([J2K, HTJ2K, JPEG], probe=yes).path == "gpu"
    sel = select_decoder([J2K, "1.2.840.10008.1.2.5"], probe=yes)
    assert (sel.path, sel.reason) == ("cpu", "RLE Lossless has no GPU decoder")
    assert select_decoder([J2K], probe=no) .reason == "probe: no device"
    assert select_decoder([J2K], mode="cpu", probe=yes).path == "cpu"
    assert select_decoder(["1.2.3.4"], probe=yes).path == "cpu"


def test_probe_reports_a_reason_here() -> None:
    ok, reason = probe_gpu()
    if importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.nvimgcodec") is None:
        assert not ok and "nvidia-nvimgcodec is not installed" in reason
    else:
        assert isinstance(ok, bool) and reason


@pytest.mark.gpu
def test_gpu_decode_is_bit_exact_for_lossless_j2k() -> None:
    ok, reason = probe_gpu()
    if not ok:
        pytest.skip(f"no GPU decode here: {reason}")
    ds = dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    (gpu,) = decode_frames_gpu([frame], signed=[True])
    np.testing.assert_array_equal(gpu, decode_instance(ds))
