"""transcode(): lossless targets round-trip exactly through a written file."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from dicom_node.errors import UnsupportedTransferSyntaxError
from dicom_node.pixels.decode import decode_instance
from dicom_node.pixels.transcode import choose_target, transcode

TARGETS = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80"]
SOURCES = ["CT_small.dcm", "MR_small_bigendian.dcm", "SC_rgb.dcm", "emri_small_jpeg_2k_lossless.dcm", "MR_small_RLE.dcm"]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("target", TARGETS)
def test_round_trip_is_exact(source: str, target: str) -> None:
    ds = dcmread(get_testdata_file(source))
    before = decode_instance(ds)
    out = transcode(ds, [target])
    buf = io.BytesIO()
    out.save_as(buf, enforce_file_format=True)
    back = dcmread(io.BytesIO(buf.getvalue()))
    assert back.file_meta.TransferSyntaxUID == target
    np.testing.assert_array_equal(decode_instance(back), before)


def test_accepted_current_syntax_is_kept_as_is() -> None:
    ds = dcmread(get_testdata_file("MR_small_RLE.dcm"))
    assert transcode(ds, ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1"]) is ds


def test_preference_and_refusal() -> None:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    assert choose_target(ds, ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80"]) == "1.2.840.10008.1.2.4.80"
    # Only a lossy syntax accepted: never introduce loss.
    with pytest.raises(UnsupportedTransferSyntaxError, match="1.2.840.10008.1.2.4.50"):
        transcode(ds, ["1.2.840.10008.1.2.4.50"])


def test_transcoding_keeps_the_sop_instance_uid() -> None:
    """A lossless transcode is the same instance: PACS and the delivery ledger key on its UID."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    from dicom_node.pixels.transcode import transcode

    for name in ("CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm"):
        ds = dcmread(get_testdata_file(name))
        uid = ds.SOPInstanceUID
        for target in ("1.2.840.10008.1.2.5", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"):
            out = transcode(ds, [target])
            assert out.SOPInstanceUID == uid, (name, target)
