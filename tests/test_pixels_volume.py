"""Series -> Volume: ordering along the normal, HU, affine, UIDs, enhanced multi-frame, memory."""

from __future__ import annotations

import copy
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_node.errors import GeometryError
from dicom_node.pixels.volume import load_series
from dicom_node.synthetic import SeriesSpec, ct_datasets


def write_series(out: Path, spec: SeriesSpec, edit: Callable[[int, Dataset], None] | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(ct_datasets(spec)):
        if edit:
            edit(i, ds)
        path = out / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def stored(ds_index: int, spec: SeriesSpec) -> np.ndarray:
    return next(d for i, d in enumerate(ct_datasets(spec)) if i == ds_index).pixel_array


def test_sorted_by_position_not_instance_number(tmp_path: Path) -> None:
    spec = SeriesSpec(slices=8, rows=32, columns=32, seed="volume-order")

    def reverse_numbers(i: int, ds: Dataset) -> None:
        ds.InstanceNumber = 100 - i  # numbering runs against the positions
        ds.ImagePositionPatient = [10.0, -5.0, 50.0 - 2.5 * i]

    paths = write_series(tmp_path, spec, reverse_numbers)
    vol = load_series(list(reversed(paths[::2])) + paths[1::2], workers=0)
    # Ascending along the normal (+z): the last written slice (lowest z) comes first.
    assert vol.sop_instance_uids[0] == str(next(d for i, d in enumerate(ct_datasets(spec)) if i == 7).SOPInstanceUID)
    assert vol.spacing == pytest.approx((2.5, 1.0, 1.0))
    # HU = stored - 1024 (RescaleIntercept, PS3.3 C.11.1.1.2).
    np.testing.assert_array_equal(vol.array[0], stored(7, spec).astype(np.float32) - 1024)
    # The affine maps voxel (k, 0, 0) to the slice's Image Position (Patient).
    assert vol.affine @ np.array([0, 0, 0, 1]) == pytest.approx([10.0, -5.0, 50.0 - 2.5 * 7, 1])
    assert vol.affine @ np.array([7, 3, 2, 1]) == pytest.approx([12.0, -2.0, 50.0, 1])
    assert vol.source_frames == [1] * 8 and vol.modality == "CT" and vol.window == (40.0, 400.0)


def test_workers_match_in_process(tmp_path: Path) -> None:
    import pydicom

    paths = write_series(tmp_path, SeriesSpec(slices=20, rows=64, columns=64))
    native = load_series(paths, workers=2)
    assert native.decoder == "cpu: in-process", "native pixel data needs no codec process"
    for path in paths:  # compressed data goes to the codec worker processes
        ds = pydicom.dcmread(path)
        ds.compress("1.2.840.10008.1.2.5", generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)
    a = load_series(paths, workers=0)
    b = load_series(paths, workers=2)
    assert b.decoder.startswith("cpu: 2 worker") and np.array_equal(a.array, b.array)
    assert np.array_equal(a.array, native.array)
    assert a.sop_instance_uids == b.sop_instance_uids


def test_duplicate_positions_and_mixed_sizes_are_refused(tmp_path: Path) -> None:
    spec = SeriesSpec(slices=4, rows=16, columns=16)
    dup = write_series(tmp_path / "dup", spec, lambda i, ds: setattr(ds, "ImagePositionPatient", [0, 0, 0 if i < 2 else i]))
    with pytest.raises(GeometryError, match="duplicate-position"):
        load_series(dup, workers=0)

    def shrink(i: int, ds: Dataset) -> None:
        if i == 3:
            ds.Rows, ds.Columns = 8, 8
            ds.PixelData = np.zeros((8, 8), np.uint16).tobytes()

    with pytest.raises(GeometryError, match="mixed-sizes"):
        load_series(write_series(tmp_path / "mixed", spec, shrink), workers=0)


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    spec = SeriesSpec(slices=2, rows=16, columns=16, seed="volume-m1")
    m1 = write_series(tmp_path, spec, lambda i, ds: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"))
    vol = load_series(m1, workers=0)
    # 12-bit stored range 0..4095 -> HU -1024..3071, inverted around its middle.
    expected = (-1024 + 3071) - (stored(0, spec).astype(np.float32) - 1024)
    np.testing.assert_array_equal(vol.array[0], expected)


def test_window_and_voi(tmp_path: Path) -> None:
    vol = load_series(write_series(tmp_path, SeriesSpec(slices=2, rows=16, columns=16)), workers=0)
    w = vol.windowed()
    assert w.min() >= 0 and w.max() <= 1
    # Air (-1000 HU) is below a 40/400 window: black.
    assert w[0, 0, 0] == 0.0 and vol.windowed(center=-1000, width=2)[0, 0, 0] in (0.0, 1.0)


def _enhanced(spec: SeriesSpec, order: list[int]) -> Dataset:
    """An Enhanced CT object (PS3.3 A.38) built from the synthetic slices, frames in ``order``."""
    slices = list(ct_datasets(spec))
    ds = copy.deepcopy(slices[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.NumberOfFrames = len(order)
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept"):
        del ds[kw]
    shared = Dataset()
    ori, meas, pvt = Dataset(), Dataset(), Dataset()
    ori.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    meas.PixelSpacing, meas.SliceThickness = [0.5, 0.5], 1.0
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 1, -1024, "HU"
    shared.PlaneOrientationSequence = Sequence([ori])
    shared.PixelMeasuresSequence = Sequence([meas])
    shared.PixelValueTransformationSequence = Sequence([pvt])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in order:
        item, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = [0.0, 0.0, 3.0 * k]
        item.PlanePositionSequence = Sequence([pos])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = b"".join(slices[k].PixelData for k in order)
    return ds


def test_enhanced_multiframe(tmp_path: Path) -> None:
    spec = SeriesSpec(slices=5, rows=16, columns=16, seed="volume-enhanced")
    path = tmp_path / "enh.dcm"
    _enhanced(spec, [3, 0, 4, 1, 2]).save_as(path, enforce_file_format=True)
    vol = load_series([path], workers=0)
    assert vol.array.shape == (5, 16, 16) and vol.spacing == pytest.approx((3.0, 0.5, 0.5))
    assert vol.source_frames == [2, 4, 5, 1, 3]  # frame numbers in order of position
    assert len(set(vol.sop_instance_uids)) == 1
    for k in range(5):
        np.testing.assert_array_equal(vol.array[k], stored(k, spec).astype(np.float32) - 1024)


def test_peak_memory_near_output_size(tmp_path: Path) -> None:
    # 96 slices of 256x256: a 24 MiB float32 volume. Peak must stay near it (no several-fold copies).
    paths = write_series(tmp_path, SeriesSpec(slices=96, rows=256, columns=256))
    tracemalloc.start()
    try:
        vol = load_series(paths, workers=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out = vol.array.nbytes
    assert out == 96 * 256 * 256 * 4
    assert peak < out * 1.25, f"peak {peak / 2**20:.1f} MiB for a {out / 2**20:.1f} MiB volume"
