"""A NumPy-only reader of native (uncompressed) Pixel Data: the reference decoded values are compared with.

Independent of pydicom's pixel backends, so the conformance check
(:mod:`dicom_node.pixels.conformance`) and the generator of its compressed
test files (:mod:`dicom_node.pixels.generated`) both take their reference
values from here rather than from the decoder under test.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.pixels.decode import transfer_syntax_of
from dicom_node.pixels.syntaxes import EXPLICIT_VR_BE

__all__ = ["mask_bits", "raw_reference", "unpack_bits"]


def unpack_bits(raw: bytes, count: int) -> np.ndarray:
    """Unpack 1-bit Pixel Data, least significant bit first (PS3.5 8.1.1)."""
    return np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[:count]


def raw_reference(ds: Dataset) -> np.ndarray:
    """Read native (uncompressed) Pixel Data with NumPy alone (PS3.5 8.1, PS3.3 C.7.6.3).

    Independent of pydicom's pixel backends: handles bit depths 1-64, both
    byte orders, planar configuration, signedness and YBR_FULL(_422) -> RGB.
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    spp = int(ds.get("SamplesPerPixel", 1))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    alloc = int(ds.BitsAllocated)
    signed = bool(ds.get("PixelRepresentation", 0))
    pi = str(ds.get("PhotometricInterpretation", "")).strip()
    raw = bytes(ds.PixelData)
    if alloc == 1:
        # Declared once for every branch: the array's rank depends on frames and samples.
        arr: np.ndarray = unpack_bits(raw, frames * rows * cols).reshape(frames, rows, cols)
        return arr[0] if frames == 1 else arr
    big = transfer_syntax_of(ds) == EXPLICIT_VR_BE
    dtype = np.dtype(f"{'>' if big else '<'}{'i' if signed else 'u'}{alloc // 8}")
    if pi == "YBR_FULL_422":
        n = frames * rows * cols * 2
        ybr = np.frombuffer(raw, dtype, count=n).reshape(frames, rows, cols // 2, 4)
        arr = np.empty((frames, rows, cols, 3), dtype)
        arr[..., 0] = ybr[..., :2].reshape(frames, rows, cols)
        arr[..., 1] = np.repeat(ybr[..., 2], 2, axis=-1)
        arr[..., 2] = np.repeat(ybr[..., 3], 2, axis=-1)
    else:
        arr = np.frombuffer(raw, dtype, count=frames * rows * cols * spp)
        if spp > 1 and int(ds.get("PlanarConfiguration", 0)):
            arr = arr.reshape(frames, spp, rows, cols).transpose(0, 2, 3, 1)
        arr = arr.reshape(frames, rows, cols, spp) if spp > 1 else arr.reshape(frames, rows, cols)
        arr = mask_bits(arr, int(ds.get("BitsStored", alloc)), signed)
    if pi.startswith("YBR_FULL"):
        from pydicom.pixels import convert_color_space

        arr = convert_color_space(arr, "YBR_FULL", "RGB")
    arr = arr.astype(dtype.newbyteorder("="))
    return arr[0] if frames == 1 else arr


def mask_bits(arr: np.ndarray, stored: int, signed: bool) -> np.ndarray:
    """Drop bits above Bits Stored and sign-extend (PS3.5 8.1.1)."""
    bits = arr.dtype.itemsize * 8
    if stored >= bits:
        return arr
    shift = bits - stored
    if signed:
        return (arr.astype(arr.dtype.newbyteorder("=")) << shift) >> shift
    return arr & ((1 << stored) - 1)
