"""NIfTI <-> the node's volume representation (issue 17), checked against nibabel's own affine.

Sources: the NIfTI-1 header fields (https://nifti.nimh.nih.gov/nifti-1/documentation/nifti1fields),
nibabel's coordinate systems (https://nipy.org/nibabel/coordinate_systems.html: the affine maps
voxel indices to RAS+ mm), and PS3.3 C.7.6.2.1.1 for DICOM's LPS patient coordinates.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicom_node.errors import DecodeError, PixelDataError
from dicom_node.pixels.nifti import is_nifti, read_nifti, volume_image
from dicom_node.pixels.volume import load_series
from dicom_node.synthetic import SeriesSpec, ct_datasets

F = np.diag([-1.0, -1.0, 1.0, 1.0])


def rotation(seed: int) -> np.ndarray:
    """A proper rotation (det +1) drawn from a fixed seed: no axis is aligned with the patient's."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def oblique_series(tmp_path: Path, rot: np.ndarray, spacing: tuple[float, float, float]) -> list[Path]:
    """A synthetic CT series whose row/column cosines and slice normal are ``rot``'s columns (LPS)."""
    row_cos, col_cos, normal = rot[:, 0], rot[:, 1], rot[:, 2]
    origin = np.array([-40.0, 25.0, 130.0])
    paths = []
    for n, ds in enumerate(ct_datasets(SeriesSpec(slices=6, rows=20, columns=24, seed="nifti-oblique"))):
        ds.ImageOrientationPatient = [f"{v:.10f}" for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin + n * spacing[0] * normal]
        ds.PixelSpacing = [f"{spacing[1]}", f"{spacing[2]}"]
        ds.SliceThickness = str(spacing[0])
        path = tmp_path / f"{n:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dicom_lps(ds: Dataset, row: int, col: int) -> np.ndarray:
    """PS3.3 C.7.6.2.1.1 equation: the LPS position of pixel (row, col) of one image, from its header alone."""
    o = np.array([float(v) for v in ds.ImageOrientationPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    return np.array([float(v) for v in ds.ImagePositionPatient]) + o[:3] * dc * col + o[3:] * dr * row


def test_dicom_volume_to_nifti_matches_nibabels_affine(tmp_path: Path) -> None:
    """A series with a non-identity direction: every voxel of the NIfTI nibabel reads sits where DICOM puts it."""
    import pydicom

    paths = oblique_series(tmp_path, rotation(7), (2.5, 0.7, 0.8))
    volume = load_series(paths, workers=0)
    image = nib.Nifti1Image.from_bytes(gzip.decompress(volume_image(volume.array, volume.affine)))
    assert image.shape == (24, 20, 6)  # (i, j, k) = (col, row, slice), as ITK and dcm2niix order a series
    np.testing.assert_allclose(image.header.get_zooms(), (0.8, 0.7, 2.5), rtol=1e-6)
    data = np.asarray(image.dataobj)
    normal = rotation(7)[:, 2]
    ordered = sorted((pydicom.dcmread(p) for p in paths),
                     key=lambda d: float(np.dot([float(v) for v in d.ImagePositionPatient], normal)))
    for s, r, c in [(0, 0, 0), (5, 19, 23), (2, 7, 11), (4, 0, 23)]:
        ras = image.affine @ np.array([c, r, s, 1.0])
        np.testing.assert_allclose((F @ ras)[:3], dicom_lps(ordered[s], r, c), atol=1e-4)
        assert data[c, r, s] == np.uint8(volume.array[s, r, c])
    # The header's sform and qform agree (viewers read either).
    np.testing.assert_allclose(image.get_qform(), image.get_sform(), atol=1e-5)


def test_dicom_derived_nifti_reads_back_as_the_dicom_volume(tmp_path: Path) -> None:
    """NIfTI written from a standard-ish series reads back as the same array and LPS affine (the DICOM path's)."""
    rot = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1.0]])
    volume = load_series(oblique_series(tmp_path, rot, (1.5, 0.9, 0.9)), workers=0)
    as_float = nib.Nifti1Image(volume.array.transpose(2, 1, 0).copy(), F @ volume.affine @ np.eye(4)[[2, 1, 0, 3]])
    back = read_nifti(as_float.to_bytes(), 1 << 30, 1 << 30)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-9)
    np.testing.assert_allclose(back.spacing, volume.spacing, rtol=1e-6)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_orientation_maps_voxels_to_the_same_place(seed: int) -> None:
    """A NIfTI with a random direction and spacing: each voxel of the node's array keeps its value and position."""
    rng = np.random.default_rng(seed)
    rot = rotation(seed)
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 1.3, 2.1])
    affine[:3, 3] = rng.normal(size=3) * 50
    data = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    image = nib.Nifti1Image(data, affine)
    vol = read_nifti(gzip.compress(image.to_bytes()), 1 << 30, 1 << 30)
    assert sorted(vol.array.shape) == [5, 6, 7]
    for s, r, c in np.ndindex(*vol.array.shape):
        ijk = np.argwhere(data == int(vol.array[s, r, c]))[0]
        np.testing.assert_allclose(vol.affine @ [s, r, c, 1], F @ affine @ [*ijk, 1], atol=1e-9)
        np.testing.assert_array_equal(vol.points_to_grid(ijk[None]), [[s, r, c]])
    # Rows run posterior, columns left, slices superior as well as the direction allows (no resampling).
    assert vol.affine[1, 1] > 0 and vol.affine[0, 2] > 0 and vol.affine[2, 0] > 0
    # A mask on the node's grid goes back in the file's own voxel order, affine and spacing.
    mask = (vol.array % 3 == 0).astype(np.uint8)
    out = nib.Nifti1Image.from_bytes(gzip.decompress(vol.mask_image(mask)))
    np.testing.assert_allclose(out.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.dataobj), (data % 3 == 0).astype(np.uint8))
    assert out.get_data_dtype() == np.uint8


def test_refusals_name_the_problem() -> None:
    """Not NIfTI, a 4D series, over the voxel bound, a gzip bomb: each a clear error before any large allocation."""
    with pytest.raises(DecodeError, match="not a NIfTI"):
        read_nifti(b"x" * 400, 1 << 20, 1 << 20)
    four_d = nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.uint8), np.eye(4)).to_bytes()
    with pytest.raises(DecodeError, match="4th dimension"):
        read_nifti(four_d, 1 << 20, 1 << 20)
    big = nib.Nifti1Image(np.zeros((64, 64, 64), np.uint8), np.eye(4)).to_bytes()
    with pytest.raises(PixelDataError, match="api.max_pixels"):
        read_nifti(big, 1 << 30, 1000)
    with pytest.raises(DecodeError, match="not a NIfTI"):  # zeros: no header, nothing past 540 bytes is inflated
        read_nifti(gzip.compress(b"\x00" * (4 << 20)), 1 << 20, 1 << 30)
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 2048))
    header.set_data_dtype(np.float32)
    bomb = gzip.compress(header.binaryblock + b"\x00" * 4 + b"\x00" * (4 << 20))
    with pytest.raises(PixelDataError, match="api.max_pixels"):
        read_nifti(bomb, 1 << 40, 1 << 26)
    with pytest.raises(PixelDataError, match="pixels.max_volume_bytes"):
        read_nifti(bomb, 1 << 20, 1 << 40)
    assert is_nifti(big) and is_nifti(gzip.compress(big)) and not is_nifti(b"\x00" * 400) and not is_nifti(b"")
