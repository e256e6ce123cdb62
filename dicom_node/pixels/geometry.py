"""Slice geometry: positions along the normal, spacing, affine, and the checks on them.

Positions come from Image Position (Patient) and Image Orientation (Patient)
(PS3.3 C.7.6.2.1.1) or, for enhanced multi-frame objects, from the Plane
Position / Plane Orientation / Pixel Measures functional groups (PS3.3
C.7.6.16.2.3-C.7.6.16.2.4). Slices are ordered by their distance along the
slice normal, never by Instance Number, which modalities number in either direction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset


@dataclass(frozen=True)
class SliceGeometry:
    """Where one 2-D frame sits in patient space (LPS, mm)."""

    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    rows: int
    columns: int

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal: row cosine x column cosine (PS3.3 C.7.6.2.1.1)."""
        assert self.orientation is not None
        o = np.asarray(self.orientation, dtype=np.float64)
        n = np.cross(o[:3], o[3:])
        norm = float(np.linalg.norm(n))
        return n / norm if norm else n


@dataclass(frozen=True)
class GeometryProblem:
    """One geometry rule a set of slices breaks."""

    rule: str
    keyword: str
    detail: str
    found: object = None


def _floats(value: object, n: int) -> tuple[float, ...] | None:
    if not isinstance(value, Iterable):
        return None  # a missing element or a single number is not a vector
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _first_item(ds: Dataset | None, keyword: str) -> Dataset | None:
    seq = ds.get(keyword) if ds is not None else None
    return seq[0] if seq else None


def functional_group(ds: Dataset, frame: int, keyword: str) -> Dataset | None:
    """Return a functional group macro item for ``frame`` (0-based), per-frame before shared.

    PS3.3 C.7.6.16: a macro sits either in the Shared Functional Groups
    Sequence or in each item of the Per-Frame Functional Groups Sequence.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame):
        item = _first_item(per_frame[frame], keyword)
        if item is not None:
            return item
    return _first_item(_first_item(ds, "SharedFunctionalGroupsSequence"), keyword)


def slice_geometry(ds: Dataset) -> SliceGeometry:
    """Return the geometry of a single-frame image from its Image Plane Module (PS3.3 C.7.6.2)."""
    return SliceGeometry(
        position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
    )


def frame_geometries(ds: Dataset) -> list[SliceGeometry]:
    """Return one geometry per frame of an enhanced multi-frame image (PS3.3 C.7.6.16.2)."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    out = []
    for f in range(n):
        pos = functional_group(ds, f, "PlanePositionSequence")
        ori = functional_group(ds, f, "PlaneOrientationSequence")
        meas = functional_group(ds, f, "PixelMeasuresSequence")
        out.append(
            SliceGeometry(
                position=_floats(pos.get("ImagePositionPatient"), 3) if pos else None,  # type: ignore[arg-type]
                orientation=_floats(ori.get("ImageOrientationPatient"), 6) if ori else None,
                pixel_spacing=_floats(meas.get("PixelSpacing"), 2) if meas else None,  # type: ignore[arg-type]
                rows=int(ds.get("Rows", 0) or 0),
                columns=int(ds.get("Columns", 0) or 0),
            )
        )
    return out


def is_enhanced(ds: Dataset) -> bool:
    """True for a multi-frame object carrying per-frame functional groups (PS3.3 C.7.6.16)."""
    return "PerFrameFunctionalGroupsSequence" in ds


def slice_distances(geoms: Sequence[SliceGeometry]) -> np.ndarray:
    """Distance of each slice along the first slice's normal (mm)."""
    normal = geoms[0].normal
    return np.array([float(np.dot(np.asarray(g.position), normal)) for g in geoms])


def check_geometry(geoms: Sequence[SliceGeometry], *, spacing_tolerance: float = 0.01) -> list[GeometryProblem]:
    """Check that frames form one regular volume.

    Rules: every frame has position and orientation; orientation is the same
    for all (within 1e-4 per cosine); rows/columns/pixel spacing are the same;
    no two slices share a position; slice spacing is uniform within
    ``spacing_tolerance`` (relative), and a gap of a whole step or more is
    reported as missing slices.

    Parameters
    ----------
    geoms : sequence of SliceGeometry
        One entry per frame, any order.
    spacing_tolerance : float
        Allowed relative deviation of each step from the median step.

    Returns
    -------
    list of GeometryProblem
        Empty when the slices form a regular volume.
    """
    problems: list[GeometryProblem] = []
    if not geoms:
        return [GeometryProblem("min-slices", "", "no slices")]
    if any(g.position is None for g in geoms):
        problems.append(GeometryProblem("required", "ImagePositionPatient", "missing on some slices"))
    if any(g.orientation is None for g in geoms):
        problems.append(GeometryProblem("required", "ImageOrientationPatient", "missing on some slices"))
    sizes = sorted({(g.rows, g.columns) for g in geoms})
    if len(sizes) > 1:
        problems.append(GeometryProblem("mixed-sizes", "Rows", "slices differ in Rows/Columns", [list(s) for s in sizes]))
    spacings = sorted({g.pixel_spacing for g in geoms if g.pixel_spacing is not None})
    if len(spacings) > 1:
        problems.append(GeometryProblem("mixed-pixel-spacing", "PixelSpacing", "slices differ in PixelSpacing", [list(s) for s in spacings]))
    if problems:
        return problems
    first = np.asarray(geoms[0].orientation)
    if any(np.max(np.abs(np.asarray(g.orientation) - first)) > 1e-4 for g in geoms):
        return [GeometryProblem("consistent-orientation", "ImageOrientationPatient", "orientation differs between slices")]
    return problems + _check_steps(np.sort(slice_distances(geoms)), spacing_tolerance)


def _check_steps(dist: np.ndarray, tolerance: float) -> list[GeometryProblem]:
    """Check sorted slice distances for duplicates, gaps and non-uniform steps."""
    if len(dist) < 2:
        return []
    steps = np.diff(dist)
    problems = []
    dup = int(np.sum(steps < 1e-3))
    if dup:
        problems.append(GeometryProblem("duplicate-position", "ImagePositionPatient", f"{dup} slice(s) share a position with another", dup))
    real = steps[steps >= 1e-3]
    if real.size == 0:
        return problems
    step = float(np.median(real))
    gaps = real[real > step * 1.5]
    if gaps.size:
        missing = int(np.sum(np.round(gaps / step) - 1))
        problems.append(GeometryProblem("missing-slices", "ImagePositionPatient", f"gap(s) along the normal: about {missing} slice(s) missing", [round(float(g), 3) for g in gaps]))
    off = real[(np.abs(real - step) > tolerance * step) & (real <= step * 1.5)]
    if off.size:
        problems.append(GeometryProblem("uniform-spacing", "ImagePositionPatient", f"slice spacing varies beyond {tolerance:.1%} of {step:.4g} mm", [round(float(x), 4) for x in off[:10]]))
    return problems


def affine_and_spacing(geoms: Sequence[SliceGeometry]) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Return the 4x4 voxel (slice, row, col) -> LPS affine and the (slice, row, col) spacing.

    ``geoms`` must already be sorted along the normal. Pixel Spacing is (row
    spacing, column spacing) (PS3.3 10.7.1.3): moving down one row follows the
    column cosine by ``PixelSpacing[0]``; one column right follows the row cosine
    by ``PixelSpacing[1]``.
    """
    g0 = geoms[0]
    o = np.asarray(g0.orientation, dtype=np.float64)
    row_cos, col_cos = o[:3], o[3:]
    dr, dc = g0.pixel_spacing or (1.0, 1.0)
    origin = np.asarray(g0.position, dtype=np.float64)
    if len(geoms) > 1:
        step = (np.asarray(geoms[-1].position) - origin) / (len(geoms) - 1)
    else:
        step = g0.normal
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = col_cos * dr
    affine[:3, 2] = row_cos * dc
    affine[:3, 3] = origin
    return affine, (float(np.linalg.norm(step)), float(dr), float(dc))
