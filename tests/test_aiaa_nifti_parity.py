"""A NIfTI segmentation through Clara AIAA's ``/v1/segmentation`` matches the DICOM path's SEG (issue 17).

The same CT volume, with a non-identity in-plane direction (rotated 3 degrees about the patient's
z axis, still axial for ct-body's contract), goes in twice: as DICOM over C-STORE (routed to
ct-body, written as a DICOM SEG and delivered to a real pynetdicom SCP), and as a NIfTI file
(written here with nibabel alone, as dcm2niix would: i = column, j = row, k = slice, RAS affine)
to ``POST /v1/segmentation?model=ct-body&output=image``
(https://docs.nvidia.com/clara/clara-train-sdk/aiaa/server_apis.html). The NIfTI mask, read
back with nibabel on the NIfTI's own grid, must agree with the SEG's frames placed by their
referenced source instances: Dice >= 0.999 (the issue's bar), and the NIfTI mask's affine is
the input's; the two masks are in fact equal voxel for voxel.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pytest

from dicom_node.pixels.volume import load_series
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import wait_for
from tests.receiver import RecordingSCP
from tests.scu import send_all

ENGINES = Path(__file__).resolve().parents[1] / "engines"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
F = np.diag([-1.0, -1.0, 1.0, 1.0])
P = np.eye(4)[[2, 1, 0, 3]]


@pytest.fixture
def receiver() -> Iterator[RecordingSCP]:
    r = RecordingSCP().start()
    yield r
    r.stop()


def rotated_series(tmp_path: Path, degrees: float) -> list[Any]:
    """An axial synthetic CT series rotated in plane; returned as datasets (also written under ``tmp_path``)."""
    a = np.deg2rad(degrees)
    row_cos, col_cos = np.array([np.cos(a), np.sin(a), 0.0]), np.array([-np.sin(a), np.cos(a), 0.0])
    out = []
    for n, ds in enumerate(ct_datasets(SeriesSpec(slices=8, rows=64, columns=64, seed="aiaa-parity", thickness=2.0))):
        ds.ImageOrientationPatient = [f"{v:.10f}" for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.array([-30.0, -40.0, 10.0]) + n * 2.0 * np.array([0, 0, 1.0])]
        ds.save_as(tmp_path / f"{n:02d}.dcm", enforce_file_format=True)
        out.append(ds)
    return out


def seg_mask(seg: Any, uids: list[str], shape: tuple[int, int, int]) -> np.ndarray:
    """The SEG's frames placed on the series' slices by each frame's referenced source SOP Instance UID."""
    frames = seg.pixel_array.reshape((-1,) + shape[1:])
    out = np.zeros(shape, dtype=bool)
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        out[uids.index(source)] |= frames[f] > 0
    return out


def test_nifti_segmentation_matches_the_dicom_paths_seg(start_node: Any, receiver: RecordingSCP, tmp_path: Path) -> None:
    rule = {"name": "ct", "models": ["ct-body"], "destinations": ["pacs"], "match": {"modality": "CT"}}
    node = start_node(routing={"rules": [rule]}, inference={"models_dir": str(ENGINES), "backends": ["onnxruntime"]},
                      delivery={"destinations": [{"kind": "dimse", "name": "pacs", "ae_title": "RESULTS_SCP",
                                                  "host": "127.0.0.1", "port": receiver.port}]})
    datasets = rotated_series(tmp_path, 3.0)
    volume = load_series(sorted(tmp_path.glob("*.dcm")), workers=0)

    # The DICOM path: C-STORE -> job -> SEG delivered to the receiver.
    assert send_all(node.scp.port, datasets) == [0] * len(datasets)
    assert wait_for(lambda: any(str(d.SOPClassUID) == SEG_CLASS for d in receiver.datasets()), timeout=90)
    seg = next(d for d in receiver.datasets() if str(d.SOPClassUID) == SEG_CLASS)
    from_seg = seg_mask(seg, volume.sop_instance_uids, volume.array.shape)

    # The AIAA path: the same volume as NIfTI, written with nibabel alone.
    affine = F @ volume.affine @ P
    image = nib.Nifti1Image(np.rint(volume.array).astype(np.int16).transpose(2, 1, 0).copy(), affine)
    reply = httpx.post(f"http://127.0.0.1:{node.api.port}/v1/segmentation?model=ct-body&output=image",
                       data={"params": "{}"}, files={"image": ("ct.nii.gz", gzip.compress(image.to_bytes()),
                                                              "application/x-gzip")}, timeout=120)
    assert reply.status_code == 200, reply.text
    out = nib.Nifti1Image.from_bytes(gzip.decompress(reply.content))
    np.testing.assert_allclose(out.affine, affine, atol=1e-5)
    from_nifti = np.asarray(out.dataobj).transpose(2, 1, 0) > 0

    assert from_seg.any() and from_seg.shape == from_nifti.shape
    dice = 2 * np.logical_and(from_seg, from_nifti).sum() / (from_seg.sum() + from_nifti.sum())
    assert dice >= 0.999, dice
    np.testing.assert_array_equal(from_nifti, from_seg)  # and in fact voxel for voxel
