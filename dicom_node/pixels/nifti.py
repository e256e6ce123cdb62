"""NIfTI images (``.nii``, ``.nii.gz``) to and from the node's volume representation, with nibabel.

The node's volumes (:class:`dicom_node.pixels.volume.Volume`) are ``(slices, rows, cols)``
arrays with a 4x4 affine from that voxel index to DICOM patient coordinates, LPS mm
(PS3.3 C.7.6.2.1.1). A NIfTI image is an ``(i, j, k)`` array whose sform/qform affine maps
the index to RAS+ mm (NIfTI-1 header, https://nifti.nimh.nih.gov/nifti-1/documentation/nifti1fields;
nibabel's coordinate systems: https://nipy.org/nibabel/coordinate_systems.html). The two
differ by the sign of x and y, and the index order is reversed (ITK and dcm2niix write
``i`` = column, ``j`` = row, ``k`` = slice)::

    LPS(s, r, c) = F @ RAS(i=c, j=r, k=s)        F = diag(-1, -1, 1, 1)

A NIfTI input is first reoriented (:func:`nibabel.orientations.ornt_transform`, a pure
permutation and flips, so no voxel is resampled) to the axis codes ``L, P, S`` for
``(i, j, k)``: columns run to the patient's left, rows to posterior, slices to superior,
the order an axial DICOM series of Image Orientation ``1\\0\\0\\0\\1\\0`` has, so a NIfTI
made from such a series (dcm2niix, ITK) yields the same array as the DICOM path. A mask is
written back in the input's own voxel order with the input's own affine and header, so
orientation and spacing are preserved exactly.

Bounds: the header (the first 540 inflated bytes) is read first; an image over ``max_voxels`` or
``max_bytes`` is refused before its data are inflated, and a gzip stream is never inflated past
the size its header declares, so a small upload cannot expand to gigabytes.
"""

from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from dicom_node.errors import DecodeError, PixelDataError

if TYPE_CHECKING:
    import nibabel as nib


def _nib() -> ModuleType:
    """nibabel, imported on first use: it adds about 32 MiB to the node's resident memory at start,
    and a node that never sees a NIfTI should not pay it (a 1 GiB C-STORE is held to 128 MiB RSS)."""
    import nibabel
    import nibabel.filebasedimages
    import nibabel.orientations
    import nibabel.spatialimages
    import nibabel.wrapstruct

    return nibabel


def _header_errors() -> tuple[type[BaseException], ...]:
    """nibabel's exceptions for a header or file it cannot read."""
    nib_ = _nib()
    return (nib_.filebasedimages.ImageFileError, nib_.wrapstruct.WrapStructError, nib_.spatialimages.HeaderDataError)

#: RAS <-> LPS: negate x and y.
FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])
#: (i, j, k, 1) <-> (s, r, c, 1) = (k, j, i, 1); its own inverse.
REVERSE_IJK = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
#: Axis codes of (i, j, k) that give a standard axial DICOM series' (col, row, slice) order.
CANONICAL = np.array([[0.0, -1.0], [1.0, -1.0], [2.0, 1.0]])  # nibabel axcodes2ornt(("L", "P", "S"))
_GZIP_MAGIC = b"\x1f\x8b"


def is_nifti(data: bytes) -> bool:
    """True when ``data`` looks like a NIfTI-1/-2 single file (``.nii``), gzipped or not."""
    if data.startswith(_GZIP_MAGIC):
        return True  # decided by read_nifti: a gzip stream is only ever a NIfTI here
    return (len(data) >= 348 and data[344:348] == b"n+1\x00") or (len(data) >= 540 and data[4:8] == b"n+2\x00")


def ras_to_lps(affine_ijk_ras: np.ndarray) -> np.ndarray:
    """The ``(s, r, c) -> LPS`` affine of a NIfTI ``(i, j, k) -> RAS`` affine (index order reversed)."""
    return FLIP_XY @ np.asarray(affine_ijk_ras, dtype=np.float64) @ REVERSE_IJK


def lps_to_ras(affine_src_lps: np.ndarray) -> np.ndarray:
    """The NIfTI ``(i, j, k) -> RAS`` affine of a volume's ``(s, r, c) -> LPS`` affine."""
    return FLIP_XY @ np.asarray(affine_src_lps, dtype=np.float64) @ REVERSE_IJK


def _inflate(data: bytes, limit: int) -> bytes:
    """Gunzip at most ``limit`` bytes (multi-member streams included): what lies beyond is never inflated."""
    out = bytearray()
    rest = data
    while rest and len(out) < limit:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(rest, limit - len(out))
        except zlib.error as exc:
            raise DecodeError(f"the gzip stream is corrupt: {exc}") from exc
        if len(out) >= limit:
            break
        if not inflater.eof:
            raise DecodeError("the gzip stream is truncated")
        rest = inflater.unused_data
        if rest and not rest.startswith(_GZIP_MAGIC):
            break  # trailing garbage after the last member, as gzip(1) tolerates
    return bytes(out)


def _head(data: bytes) -> bytes:
    """The first 540 inflated bytes of a gzip stream (room for a NIfTI-2 header), inflating no more."""
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, 540)
    except zlib.error as exc:
        raise DecodeError(f"the gzip stream is corrupt: {exc}") from exc


def _declared_size(kind: type[nib.Nifti1Image], head: bytes, max_voxels: int) -> int:
    """Bytes the header declares (data offset + voxels x item size), after checking its voxel count."""
    nib_ = _nib()
    header_class = nib_.Nifti1Header if kind is nib_.Nifti1Image else nib_.Nifti2Header
    size = 348 if kind is nib_.Nifti1Image else 540
    unreadable: tuple[type[BaseException], ...] = (*_header_errors(), ValueError, EOFError, OSError)
    try:
        header = header_class.from_fileobj(io.BytesIO(head[:size]))
        shape = tuple(int(n) for n in header.get_data_shape())
        itemsize = int(header.get_data_dtype().itemsize)
        offset = int(header.get_data_offset())
    except unreadable as exc:
        raise DecodeError(f"the NIfTI header cannot be read: {exc}") from exc
    voxels = int(np.prod(shape, dtype=np.int64)) if shape else 0
    if voxels > max_voxels:
        raise PixelDataError(f"the NIfTI image has {voxels} voxels, more than api.max_pixels = {max_voxels}")
    return max(offset, size) + voxels * itemsize


@dataclass
class NiftiVolume:
    """A NIfTI image as the node's volume plus what writing a mask back needs.

    Attributes
    ----------
    array : numpy.ndarray
        ``(slices, rows, cols)`` float32 values (scl_slope/scl_inter applied), in ``L, P, S`` order.
    affine : numpy.ndarray
        ``(s, r, c) -> LPS`` mm, as :attr:`dicom_node.pixels.volume.Volume.affine`.
    spacing : tuple of float
        ``(slice, row, col)`` spacing in mm.
    image : nibabel.Nifti1Image or nibabel.Nifti2Image
        The image as read (its header and affine are reused for masks).
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    image: nib.Nifti1Image

    @property
    def to_canonical(self) -> np.ndarray:
        """The nibabel orientation transform from the file's ``(i, j, k)`` to ``L, P, S``."""
        ornt = _nib().orientations
        return np.asarray(ornt.ornt_transform(ornt.io_orientation(self.image.affine), CANONICAL))

    def points_to_grid(self, points: np.ndarray) -> np.ndarray:
        """File voxel indices ``(n, 3)`` as ``(i, j, k)`` -> indices ``(n, 3)`` as ``(s, r, c)`` of :attr:`array`."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        shape = self.image.shape[:3]
        out = np.empty_like(pts)
        for axis, (target, flip) in enumerate(self.to_canonical):
            value = pts[:, axis]
            out[:, int(target)] = (shape[axis] - 1 - value) if flip < 0 else value
        return out[:, ::-1]

    def to_file_order(self, grid: np.ndarray) -> np.ndarray:
        """An ``(s, r, c)`` array on :attr:`array`'s grid in the file's own ``(i, j, k)`` voxel order."""
        ornt = _nib().orientations
        back = ornt.ornt_transform(CANONICAL, ornt.io_orientation(self.image.affine))
        return np.ascontiguousarray(ornt.apply_orientation(np.asarray(grid).transpose(2, 1, 0), back))

    def mask_image(self, mask: np.ndarray) -> bytes:
        """A ``(slices, rows, cols)`` mask on :attr:`array`'s grid as ``.nii.gz`` in the input's own voxel order,
        affine and header (uint8, no scaling)."""
        data = self.to_file_order(mask).astype(np.uint8)
        header = self.image.header.copy()
        header.set_data_dtype(np.uint8)
        header.set_slope_inter(1.0, 0.0)
        out = type(self.image)(data, self.image.affine, header)
        out.header.set_sform(self.image.affine, int(self.image.header["sform_code"]) or 1)
        out.header.set_qform(self.image.affine, int(self.image.header["qform_code"]) or 1)
        return to_bytes(out)


def to_bytes(image: nib.Nifti1Image) -> bytes:
    """``image`` as gzip-compressed single-file NIfTI bytes (``.nii.gz``), deterministic (mtime 0)."""
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def read_nifti(data: bytes, max_bytes: int, max_voxels: int) -> NiftiVolume:
    """Read a ``.nii`` / ``.nii.gz`` upload into the node's volume representation.

    Parameters
    ----------
    data : bytes
        The file as uploaded.
    max_bytes : int
        Bound for the inflated file (``pixels.max_volume_bytes``).
    max_voxels : int
        Bound for the voxel count, checked on the header before the data are read (``api.max_pixels``).

    Raises
    ------
    DecodeError
        Not a readable NIfTI-1/-2 image, or not 3D (a 4th dimension must be 1).
    PixelDataError
        Over one of the bounds.
    """
    gzipped = data.startswith(_GZIP_MAGIC)
    head = _head(data) if gzipped else data[:540]
    # The magic decides the format (NIfTI-1: "n+1" at byte 344, NIfTI-2: "n+2" at byte 4), so nibabel
    # only ever parses a header of the kind it claims to be.
    if len(head) >= 348 and head[344:348] == b"n+1\x00":
        kind: type[nib.Nifti1Image] = _nib().Nifti1Image
    elif len(head) >= 540 and head[4:8] == b"n+2\x00":
        kind = _nib().Nifti2Image
    else:
        raise DecodeError("not a NIfTI-1 or NIfTI-2 image (expected a single-file .nii or .nii.gz)")
    # The header says how many bytes the image has: a gzip stream is inflated to that much and no
    # further, and an image over the voxel bound is refused before its data are inflated at all.
    needed = _declared_size(kind, head, max_voxels)
    if needed > max_bytes:
        raise PixelDataError(f"the NIfTI image needs {needed} bytes, more than pixels.max_volume_bytes = {max_bytes}")
    raw = _inflate(data, needed) if gzipped else data
    unreadable: tuple[type[BaseException], ...] = (*_header_errors(), ValueError, EOFError, OSError)
    try:
        image = kind.from_bytes(raw)
    except unreadable as exc:
        raise DecodeError(f"the NIfTI header cannot be read: {exc}") from exc
    shape = tuple(int(n) for n in image.shape)
    if len(shape) < 2 or len(shape) > 4 or (len(shape) == 4 and shape[3] != 1) or 0 in shape:
        raise DecodeError(f"the NIfTI image has shape {shape}; a 2D or 3D image (a 4th dimension of 1) is expected")
    voxels = int(np.prod(shape))
    if voxels > max_voxels:
        raise PixelDataError(f"the NIfTI image has {voxels} voxels, more than api.max_pixels = {max_voxels}")
    if len(shape) != 3:
        image = type(image)(np.asarray(image.dataobj).reshape(shape[:2] + (1,) if len(shape) == 2 else shape[:3]),
                            image.affine, image.header)
    try:
        values = np.asarray(image.dataobj, dtype=np.float32)  # applies scl_slope / scl_inter
    except (ValueError, OSError, EOFError) as exc:
        raise DecodeError(f"the NIfTI image data cannot be read: {exc}") from exc
    if not np.isfinite(np.linalg.det(image.affine[:3, :3])) or abs(np.linalg.det(image.affine[:3, :3])) < 1e-12:
        raise DecodeError("the NIfTI image's affine is singular (no usable sform or qform)")
    ornt = _nib().orientations
    transform = ornt.ornt_transform(ornt.io_orientation(image.affine), CANONICAL)
    canonical = ornt.apply_orientation(values, transform)
    affine_ras = image.affine @ ornt.inv_ornt_aff(transform, values.shape)
    array = np.ascontiguousarray(canonical.transpose(2, 1, 0), dtype=np.float32)
    lps = ras_to_lps(affine_ras)
    spacing = tuple(float(np.linalg.norm(lps[:3, axis])) for axis in range(3))
    return NiftiVolume(array, lps, (spacing[0], spacing[1], spacing[2]), image)


def volume_image(mask: np.ndarray, affine_lps: np.ndarray, dtype: type[np.generic] = np.uint8) -> bytes:
    """A ``(slices, rows, cols)`` array on a DICOM volume's grid as ``.nii.gz`` (``dtype``, ``i`` = column,
    ``j`` = row, ``k`` = slice, sform and qform from the LPS affine), as ITK and dcm2niix order a series."""
    ijk = np.ascontiguousarray(np.asarray(mask).transpose(2, 1, 0)).astype(dtype)
    affine = lps_to_ras(affine_lps)
    image = _nib().Nifti1Image(ijk, affine)
    image.header.set_sform(affine, 1)
    image.header.set_qform(affine, 1)
    image.header.set_xyzt_units("mm")
    return to_bytes(image)
