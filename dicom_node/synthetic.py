"""Synthetic DICOM series for tests, benchmarks and demos.

Generates CT-like series as real Part 10 files, written with pydicom, so that
DCMTK, pynetdicom and the node all see ordinary DICOM. Patient attributes are
obviously fake.

Every call makes a new series by default (fresh Study, Series and SOP Instance
UIDs under the ``2.25`` UUID arc), because a node keeps the first copy of an
instance it already holds: re-sending a deterministic series would be stored as
duplicates and start nothing. Pass ``seed`` for reproducibility: the same seed
gives identical UIDs and pixels, which tests and benchmarks rely on.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, CTImageStorage, ExplicitVRLittleEndian

#: Root for UIDs of synthetic objects (the "2.25" UUID-derived arc, PS3.5 B.2).
_SYNTH_ROOT = "2.25."


def synthetic_uid(*parts: object) -> UID:
    """Return a deterministic ``2.25`` UID derived from ``parts``.

    Parameters
    ----------
    *parts : object
        Values whose ``str()`` forms are hashed into the UID.

    Returns
    -------
    pydicom.uid.UID
        A UID of at most 64 characters (PS3.5 9.1).
    """
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return UID(_SYNTH_ROOT + str(int.from_bytes(digest[:16], "big")))


@dataclass(frozen=True)
class SeriesSpec:
    """Shape and identity of a synthetic CT series.

    ``seed`` ``None`` (the default) draws a fresh random seed for each
    :func:`ct_datasets` call, so each generated series is new to a receiver;
    a string or integer seed makes UIDs and pixels reproducible.
    """

    slices: int = 16
    rows: int = 64
    columns: int = 64
    seed: str | int | None = None
    spacing: float = 1.0
    thickness: float = 1.0
    modality: str = "CT"


def resolve_seed(seed: str | int | None) -> str:
    """Return ``seed`` as the string all UIDs and pixels derive from; a fresh UUID when ``None``.

    Parameters
    ----------
    seed : str, int or None
        A reproducible seed, or ``None`` for a series never generated before.

    Returns
    -------
    str
        The effective seed (32 hex digits of a random UUID when ``seed`` is ``None``).
    """
    return uuid.uuid4().hex if seed is None else str(seed)


def _ct_slice(spec: SeriesSpec, index: int, rng: np.random.Generator) -> np.ndarray:
    """Return one slice: air background, an elliptic body of soft tissue, two lungs."""
    yy, xx = np.mgrid[0 : spec.rows, 0 : spec.columns]
    cy, cx = spec.rows / 2, spec.columns / 2
    body = ((yy - cy) / (0.42 * spec.rows)) ** 2 + ((xx - cx) / (0.45 * spec.columns)) ** 2 <= 1
    lung_l = ((yy - cy) / (0.25 * spec.rows)) ** 2 + ((xx - 0.68 * spec.columns) / (0.12 * spec.columns)) ** 2 <= 1
    lung_r = ((yy - cy) / (0.25 * spec.rows)) ** 2 + ((xx - 0.32 * spec.columns) / (0.12 * spec.columns)) ** 2 <= 1
    hu = np.full((spec.rows, spec.columns), -1000.0)
    hu[body] = 40.0
    hu[lung_l | lung_r] = -850.0
    hu += rng.normal(0, 10, hu.shape)
    # Stored values with RescaleIntercept -1024, RescaleSlope 1 (PS3.3 C.11.1.1.2).
    return np.clip(hu + 1024, 0, 4095).astype(np.uint16)


def ct_datasets(spec: SeriesSpec) -> Iterator[Dataset]:
    """Yield the datasets of one axial CT series, slice by slice.

    Parameters
    ----------
    spec : SeriesSpec
        Size, seed and spacing of the series. Without a seed, each call yields
        a new series (new UIDs, new noise).

    Yields
    ------
    pydicom.dataset.Dataset
        A CT Image Storage dataset with file meta, Explicit VR Little Endian.
    """
    # Resolved once per call: every slice of this series shares the seed.
    seed = resolve_seed(spec.seed)
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:4], "big"))
    study_uid = synthetic_uid(seed, "study")
    series_uid = synthetic_uid(seed, "series")
    frame_uid = synthetic_uid(seed, "frame")
    base = _ct_slice(spec, 0, rng)
    for index in range(spec.slices):
        ds = Dataset()
        sop_uid = synthetic_uid(seed, "instance", index)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName = "SYNTHETIC^PHANTOM"
        ds.PatientID = "SYNTH-" + seed[:8]
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate = "20260101"
        ds.StudyTime = "120000"
        ds.AccessionNumber = "SYNTH"
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = index + 1
        ds.Modality = spec.modality
        ds.BodyPartExamined = "CHEST"
        ds.SeriesDescription = "Synthetic CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [0.0, 0.0, index * spec.spacing]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [spec.thickness, spec.thickness]
        ds.SliceThickness = spec.thickness
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = spec.rows
        ds.Columns = spec.columns
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        # Vary slices cheaply: shift the noise by the slice index.
        ds.PixelData = np.roll(base, index, axis=1).tobytes()
        yield ds


def write_ct_series(out_dir: Path, spec: SeriesSpec) -> list[Path]:
    """Write a synthetic CT series as Part 10 files and return their paths.

    Parameters
    ----------
    out_dir : pathlib.Path
        Folder to create and fill (``0001.dcm``, ``0002.dcm``, ...); files of
        an earlier call with the same slice count are overwritten.
    spec : SeriesSpec
        Size, seed and spacing of the series; without a seed the series is new.

    Returns
    -------
    list of pathlib.Path
        The written files in slice order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    # A folder must hold one series: slices of an earlier, longer run would
    # otherwise be read as part of this one.
    for stale in out_dir.glob("[0-9][0-9][0-9][0-9].dcm"):
        stale.unlink()
    paths = []
    for ds in ct_datasets(spec):
        path = out_dir / f"{int(ds.InstanceNumber):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
