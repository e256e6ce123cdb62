"""Polygons of a mask, slice by slice, and the single-vertex edit of Clara AIAA's fixpolygon.

Shapes, as the AIAA API and its reference clients exchange them
(https://docs.nvidia.com/clara/clara-train-sdk/aiaa/server_apis.html; NVIDIA/ai-assisted-annotation-client,
``py_client/client_api.py`` ``mask2polygon`` / ``fixpolygon`` and ``cpp-client/src/polygon.cpp``):

- a 2D image's polygons: ``[[[x, y], ...], ...]`` (a list of polygons, each a list of vertices);
- a 3D image's: one such list per slice along ``z`` (``[[], [[[x, y], ...]], ...]``).

``x`` and ``y`` are voxel indices of the image in its own index order (NIfTI ``i``, ``j``; a
PNG's column and row), integers. Contours come from scikit-image's marching squares
(:func:`skimage.measure.find_contours` at level 0.5 on the zero-padded slice, so a mask touching
the border still closes); ``more_points`` is the spacing, in contour points, of the vertices
kept (the AIAA default of 10 gives a vertex about every ten pixels of outline, as in the reference
client's test polygons). Masks are drawn back with :func:`skimage.draw.polygon`.

fixpolygon moves vertex ``vertex_index`` of polygon ``poly_index`` by ``vertex_offset`` and
carries the move to its ``propagate_neighbor`` neighbours on each side along the polygon with a
linear fall-off (a neighbour ``d`` steps away moves ``1 - d / (n + 1)`` of the offset); in 3D
also to the nearest vertex of the ``propagate_neighbor_3d`` slices on each side of
``slice_index``, with the same fall-off by slice distance. The edit is geometric (no model).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dicom_node.errors import DicomNodeError

Vertex = list[int]
Polygons = list[list[Vertex]]

#: Most vertices a fixpolygon request may carry over all its slices.
MAX_VERTICES = 1_000_000
#: Widest propagation neighbourhood accepted (vertices along a polygon, or slices).
MAX_NEIGHBOR = 1000


class PolygonError(DicomNodeError):
    """The polygons or edit parameters of a request are malformed; the message names the field."""


def slice_polygons(mask: np.ndarray, more_points: int) -> Polygons:
    """The polygons of one 2D ``(x, y)`` mask: one per outline (outer and hole boundaries), vertices ``[x, y]``."""
    if not mask.any():
        return []
    step = max(1, int(more_points))
    out: Polygons = []
    # scikit-image (and the SciPy it loads) is imported on first use: most nodes never draw a polygon,
    # and it would add to every node's resident memory at start.
    from skimage.measure import find_contours

    for contour in find_contours(np.pad(mask.astype(np.uint8), 1), 0.5):
        points = contour[:-1] - 1.0  # closed contours repeat their first point; undo the padding
        if len(points) > 3 * step:
            points = points[::step]
        vertices: Polygons = [[]]
        for x, y in np.rint(points).astype(int).tolist():
            if not vertices[0] or vertices[0][-1] != [x, y]:
                vertices[0].append([x, y])
        out.append(vertices[0])
    return out


def mask_to_polygons(mask: np.ndarray, more_points: int) -> list[Polygons]:
    """Per ``z`` slice of an ``(x, y, z)`` mask, its polygons (an empty list for an empty slice)."""
    binary = np.asarray(mask) > 0
    return [slice_polygons(binary[:, :, z], more_points) for z in range(binary.shape[2])]


def draw(polygons: list[Polygons], shape: tuple[int, int, int]) -> np.ndarray:
    """Rasterise per-slice polygons into a uint8 ``(x, y, z)`` mask (1 inside any polygon)."""
    from skimage.draw import polygon as fill_polygon  # on first use, as in the contour tracing above

    out = np.zeros(shape, dtype=np.uint8)
    for z, polys in enumerate(polygons[: shape[2]]):
        for poly in polys:
            if len(poly) >= 3:
                pts = np.asarray(poly, dtype=np.float64)
                xx, yy = fill_polygon(pts[:, 0], pts[:, 1], shape=shape[:2])
                out[xx, yy, z] = 1
            for x, y in poly:  # a vertex is inside its own outline, also for 1- and 2-vertex polygons
                if 0 <= x < shape[0] and 0 <= y < shape[1]:
                    out[x, y, z] = 1
    return out


def parse_polygons(value: Any, dimension: int) -> list[Polygons]:
    """``poly`` of a request -> per-slice polygons (a 2D request is one slice).

    Raises
    ------
    PolygonError
        Not nested lists of ``[x, y]`` integer pairs, or over :data:`MAX_VERTICES`.
    """
    slices = [value] if dimension == 2 else value
    if not isinstance(slices, list):
        raise PolygonError("poly must be a list (2D: polygons; 3D: one list of polygons per slice)")
    count = 0
    for s, polys in enumerate(slices):
        if not isinstance(polys, list):
            raise PolygonError(f"poly[{s}] must be a list of polygons")
        for p, poly in enumerate(polys):
            if not isinstance(poly, list):
                raise PolygonError(f"poly[{s}][{p}] must be a list of [x, y] vertices")
            for vertex in poly:
                if (not isinstance(vertex, list) or len(vertex) != 2
                        or any(isinstance(v, bool) or not isinstance(v, int | float) for v in vertex)):
                    raise PolygonError(f"poly: a vertex of polygon {p} must be [x, y], got {vertex!r}")
            count += len(poly)
    if count > MAX_VERTICES:
        raise PolygonError(f"poly holds {count} vertices, more than {MAX_VERTICES}")
    return [[[[int(round(v)) for v in vertex] for vertex in poly] for poly in polys] for polys in slices]


def _falloff(distance: int, reach: int) -> float:
    return 1.0 - distance / (reach + 1)


def _move(poly: list[Vertex], index: int, offset: tuple[float, float], reach: int, weight: float) -> None:
    """Move vertex ``index`` by ``weight * offset`` and its ``reach`` neighbours each side with the fall-off."""
    n = len(poly)
    done: set[int] = set()
    for d in range(min(reach, n // 2) + 1):
        for k in {(index + d) % n, (index - d) % n}:
            if k in done:
                continue
            done.add(k)
            w = weight * _falloff(d, reach)
            poly[k] = [int(round(poly[k][0] + w * offset[0])), int(round(poly[k][1] + w * offset[1]))]


def _nearest(polys: Polygons, target: Vertex) -> tuple[int, int] | None:
    best: tuple[float, int, int] | None = None
    for p, poly in enumerate(polys):
        for v, vertex in enumerate(poly):
            d = (vertex[0] - target[0]) ** 2 + (vertex[1] - target[1]) ** 2
            if best is None or d < best[0]:
                best = (d, p, v)
    return None if best is None else (best[1], best[2])


def fix_polygon(polygons: list[Polygons], slice_index: int, poly_index: int, vertex_index: int,
                offset: tuple[float, float], neighbor: int, neighbor_3d: int = 0) -> list[Polygons]:
    """Apply one vertex edit (see the module docstring) and return new per-slice polygons.

    Raises
    ------
    PolygonError
        An index outside the polygons, naming it, or a neighbourhood out of range.
    """
    if not 0 <= neighbor <= MAX_NEIGHBOR or not 0 <= neighbor_3d <= MAX_NEIGHBOR:
        raise PolygonError(f"propagate_neighbor must be in 0..{MAX_NEIGHBOR}")
    if not 0 <= slice_index < len(polygons):
        raise PolygonError(f"slice_index {slice_index} is outside the {len(polygons)} slices of poly")
    polys = polygons[slice_index]
    if not 0 <= poly_index < len(polys):
        raise PolygonError(f"poly_index {poly_index} is outside the {len(polys)} polygons of that slice")
    if not 0 <= vertex_index < len(polys[poly_index]):
        raise PolygonError(f"vertex_index {vertex_index} is outside the {len(polys[poly_index])} vertices of that polygon")
    out = [[[list(v) for v in poly] for poly in polys] for polys in polygons]  # fresh lists, even for aliased input
    anchor = list(polys[poly_index][vertex_index])
    _move(out[slice_index][poly_index], vertex_index, offset, neighbor, 1.0)
    for d in range(1, neighbor_3d + 1):
        for z in (slice_index - d, slice_index + d):
            if 0 <= z < len(out):
                found = _nearest(out[z], anchor)
                if found is not None:
                    _move(out[z][found[0]], found[1], offset, neighbor, _falloff(d, neighbor_3d))
    return out
