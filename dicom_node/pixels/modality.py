"""Stored values -> modality values (HU for CT), written in place into float32 output.

Applies the Modality LUT stage of the grayscale pipeline (PS3.3 C.11.1 and
C.7.6.16.2.9 for enhanced objects: Rescale Slope/Intercept, or the Modality LUT
Sequence) and inverts MONOCHROME1 so that larger values are always brighter
(PS3.3 C.7.6.3.1.2). Each frame is converted into its slot of a preallocated
output array, so no full-size temporary is made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.pixels.geometry import functional_group


@dataclass(frozen=True)
class ModalityTransform:
    """Linear or LUT transform of one frame, plus MONOCHROME1 inversion."""

    slope: float = 1.0
    intercept: float = 0.0
    lut_source: Dataset | None = None
    invert_range: tuple[float, float] | None = None


def _stored_range(ds: Dataset) -> tuple[int, int]:
    """Range of possible stored values from Bits Stored and Pixel Representation (PS3.3 C.7.6.3.1)."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0):
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def modality_transform(ds: Dataset, frame: int | None = None) -> ModalityTransform:
    """Return the Modality LUT stage for ``ds`` (or one frame of an enhanced object).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The instance header.
    frame : int, optional
        0-based frame of an enhanced multi-frame object, whose Pixel Value
        Transformation macro (PS3.3 C.7.6.16.2.9) may be per-frame.

    Returns
    -------
    ModalityTransform
    """
    src: Dataset = ds
    if frame is not None:
        item = functional_group(ds, frame, "PixelValueTransformationSequence")
        src = item if item is not None else ds
    lut = ds if "ModalityLUTSequence" in ds else None
    slope = float(src.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(src.get("RescaleIntercept", 0.0) or 0.0)
    invert = None
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        lo, hi = _stored_range(ds)
        if lut is not None:
            data = np.asarray(lut.ModalityLUTSequence[0].LUTData)
            invert = (float(data.min()), float(data.max()))
        else:
            a, b = lo * slope + intercept, hi * slope + intercept
            invert = (min(a, b), max(a, b))
    return ModalityTransform(slope, intercept, lut, invert)


def apply_into(stored: np.ndarray, transform: ModalityTransform, out: np.ndarray) -> None:
    """Write modality values of one frame into ``out`` (float32, same shape), in place.

    Parameters
    ----------
    stored : numpy.ndarray
        Stored values of one frame.
    transform : ModalityTransform
        From :func:`modality_transform`.
    out : numpy.ndarray
        Destination slice of the volume.
    """
    if transform.lut_source is not None:
        from pydicom.pixels import apply_modality_lut

        out[...] = apply_modality_lut(stored, transform.lut_source)
    else:
        np.multiply(stored, np.float32(transform.slope), out=out, casting="unsafe")
        if transform.intercept:
            out += np.float32(transform.intercept)
    if transform.invert_range is not None:
        lo, hi = transform.invert_range
        np.subtract(np.float32(lo + hi), out, out=out)
