"""Clicked points -> the point-map channels of a ``[guidance]`` model (DeepGrow, DExtr3D).

Clara AIAA's ``/v1/dextr3d`` takes ``{"points": [[x, y, z], ...]}`` (at least six extreme
points) and ``/v1/deepgrow`` ``{"foreground": [[x, y, z], ...], "background": [...]}``, each
point a voxel index of the uploaded image in its own ``x, y, z`` (``i, j, k``) order
(https://docs.nvidia.com/clara/clara-train-sdk/aiaa/server_apis.html; the reference client
``py_client/client_api.py`` of NVIDIA/ai-assisted-annotation-client). The model sees each
kind of point as a map of the volume's shape with a Gaussian of ``sigma`` voxels (peak 1)
around each point, as MONAI's ``AddGuidanceSignal`` builds DeepGrow's inputs.

DExtr3D's points also bound the object: the mask is kept inside their bounding box grown by
``pad`` mm, as DExtr3D crops its input to that box (the reference client's ``pad=20``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dicom_node.errors import DicomNodeError

#: Most points one request may carry (each costs a bounded box of work, but a list of millions would not).
MAX_POINTS = 1024
#: Extreme points DExtr3D needs (two per axis), as the reference client checks (MIN_POINTS_FOR_SEGMENTATION).
MIN_EXTREME_POINTS = 6


class PointsError(DicomNodeError):
    """The points of a request are malformed or outside the image; the message names the field."""


def parse_points(value: Any, name: str, ndim: int = 3, allow_empty: bool = True) -> np.ndarray:
    """A JSON list of ``[x, y, z]`` voxel indices -> an ``(n, ndim)`` float array.

    AIAA clients also send a list serialised as a JSON string (the C++ client writes
    ``{"points": "[[...]]"}``); that form is read too.

    Raises
    ------
    PointsError
        Not a list of ``ndim`` numbers each, too many points, or (``allow_empty`` false) none.
    """
    import json

    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise PointsError(f"{name} must be a list of [x, y, z] points") from exc
    if value is None:
        value = []
    if not isinstance(value, list) or len(value) > MAX_POINTS:
        raise PointsError(f"{name} must be a list of at most {MAX_POINTS} [x, y, z] points")
    out = np.zeros((len(value), ndim), dtype=np.float64)
    for n, point in enumerate(value):
        if (not isinstance(point, list) or len(point) != ndim
                or any(isinstance(v, bool) or not isinstance(v, int | float) for v in point)):
            raise PointsError(f"{name}[{n}] must be a list of {ndim} numbers (voxel indices x, y, z), got {point!r}")
        out[n] = point
    if not allow_empty and not len(out):
        raise PointsError(f"{name} must hold at least one point")
    if not np.isfinite(out).all():
        raise PointsError(f"{name} holds a non-finite coordinate")
    return out


def check_inside(points: np.ndarray, shape: Sequence[int], name: str) -> None:
    """Refuse a point outside the image (``points`` in the image's own ``x, y, z`` index order).

    Raises
    ------
    PointsError
        Naming the first point outside and the image's size.
    """
    for n, point in enumerate(points):
        if any(v < -0.5 or v > size - 0.5 for v, size in zip(point, shape, strict=True)):
            size = " x ".join(str(s) for s in shape)
            raise PointsError(f"{name}[{n}] = {point.astype(int).tolist()} lies outside the image ({size} voxels)")


def point_map(shape: tuple[int, int, int], points: np.ndarray, sigma: float) -> np.ndarray:
    """A float32 ``shape`` map: the maximum over ``points`` (``(n, 3)`` grid indices) of a unit-peak Gaussian.

    Each Gaussian is evaluated only within 3 sigma of its point, so the cost is bounded per point.
    """
    out = np.zeros(shape, dtype=np.float32)
    reach = int(np.ceil(3 * sigma))
    for point in np.asarray(points, dtype=np.float64).reshape(-1, 3):
        centre = np.rint(point).astype(int)
        lo = np.maximum(centre - reach, 0)
        hi = np.minimum(centre + reach + 1, shape)
        if np.any(hi <= lo):
            continue
        axes = [np.arange(lo[a], hi[a], dtype=np.float64) - point[a] for a in range(3)]
        d2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
        box = out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        np.maximum(box, np.exp(-d2 / (2 * sigma * sigma)).astype(np.float32), out=box)
    return out


def guidance_maps(shape: tuple[int, int, int], channels: Sequence[str], points: dict[str, np.ndarray],
                  sigma: float) -> np.ndarray:
    """The ``(len(channels), *shape)`` guidance input: one :func:`point_map` per channel, in the spec's order."""
    empty = np.zeros((0, 3))
    return np.stack([point_map(shape, points.get(name, empty), sigma) for name in channels])


def box_mask(shape: tuple[int, int, int], points: np.ndarray, pad_voxels: Sequence[float]) -> np.ndarray:
    """Boolean ``shape`` mask of the points' bounding box grown by ``pad_voxels`` per axis (DExtr3D's crop)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    lo = np.maximum(np.floor(pts.min(axis=0) - np.asarray(pad_voxels)), 0).astype(int)
    hi = np.minimum(np.ceil(pts.max(axis=0) + np.asarray(pad_voxels)) + 1, shape).astype(int)
    out = np.zeros(shape, dtype=bool)
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return out


def extreme_points(mask: np.ndarray) -> list[list[int]]:
    """The six extreme points of a ``(x, y, z)``-ordered mask (min and max along each axis), as AIAA's
    segmentation answers them for a DExtr3D follow-up; empty for an empty mask."""
    idx = np.argwhere(mask)
    if not len(idx):
        return []
    out = []
    for axis in range(mask.ndim):
        for pick in (idx[:, axis].argmin(), idx[:, axis].argmax()):
            out.append([int(v) for v in idx[pick]])
    return out
