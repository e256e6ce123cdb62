"""Guidance point maps and polygon geometry of the Clara AIAA routes (issue 17), and the demo model's script.

Shapes follow the reference clients (https://github.com/NVIDIA/ai-assisted-annotation-client,
``py_client/client_api.py``, ``cpp-client/src/polygon.cpp``); the point maps MONAI's
``AddGuidanceSignal`` convention (a Gaussian per click, peak 1, one channel per kind).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dicom_node.annotation.guidance import (
    PointsError,
    box_mask,
    check_inside,
    extreme_points,
    guidance_maps,
    parse_points,
    point_map,
)
from dicom_node.annotation.polygons import PolygonError, draw, fix_polygon, mask_to_polygons, parse_polygons

ROOT = Path(__file__).resolve().parents[1]


def test_point_maps_peak_at_the_clicks_and_fall_off() -> None:
    m = point_map((5, 20, 20), np.array([[2, 10, 10]]), sigma=2.0)
    assert m[2, 10, 10] == pytest.approx(1.0) and m.max() == pytest.approx(1.0)
    assert m[2, 10, 12] == pytest.approx(np.exp(-4 / 8), rel=1e-5)
    assert m[2, 0, 0] == 0.0  # beyond 3 sigma nothing is computed
    maps = guidance_maps((5, 20, 20), ["foreground", "background"], {"foreground": np.array([[2, 10, 10]])}, 2.0)
    assert maps.shape == (2, 5, 20, 20) and maps[1].max() == 0.0


def test_points_are_checked_and_named() -> None:
    assert parse_points("[[1, 2, 3]]", "points").tolist() == [[1, 2, 3]]  # the C++ client's string form
    for bad, word in ((["x"], r"points\[0\]"), ([[1, 2]], r"points\[0\]"), ({"a": 1}, "list"), ([[True, 1, 2]], r"points\[0\]")):
        with pytest.raises(PointsError, match=word):
            parse_points(bad, "points")
    with pytest.raises(PointsError, match=r"foreground\[0\] = \[64, 0, 0\] lies outside the image \(64 x 64 x 8"):
        check_inside(np.array([[64, 0, 0]]), (64, 64, 8), "foreground")


def test_box_and_extreme_points() -> None:
    box = box_mask((10, 10, 10), np.array([[2, 3, 4], [5, 6, 7]]), (1, 0, 0))
    assert box.sum() == 6 * 4 * 4 and box[1, 3, 4] and not box[0, 3, 4]
    mask = np.zeros((10, 10, 10), bool)
    mask[2:5, 3:7, 4] = True
    points = extreme_points(mask)
    assert len(points) == 6 and [2, 3, 4] in points and min(p[1] for p in points) == 3


def test_mask_to_polygons_and_back() -> None:
    """Outlines from scikit-image's marching squares, drawn back, cover the mask (a disc, a hole, the border)."""
    xx, yy = np.mgrid[0:64, 0:64]
    disc = (xx - 30) ** 2 + (yy - 34) ** 2 <= 15**2
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[:, :, 1] = disc
    mask[:5, :5, 2] = 1  # touches the image border: the contour must still close
    polys = mask_to_polygons(mask, 1)
    assert polys[0] == [] and len(polys[1]) == 1 and len(polys[2]) == 1
    redrawn = draw(polys, mask.shape)
    inter = np.logical_and(redrawn[:, :, 1], disc).sum()
    assert inter / np.logical_or(redrawn[:, :, 1], disc).sum() > 0.9
    coarse = mask_to_polygons(mask, 10)[1][0]
    assert 8 <= len(coarse) <= 16 and all(isinstance(c, int) for v in coarse for c in v)


def test_fix_polygon_moves_the_vertex_and_its_neighbours() -> None:
    square = [[[0, 0], [10, 0], [20, 0], [30, 0], [40, 0], [50, 0]]]
    fixed = fix_polygon([square], 0, 0, 2, (0, 9), neighbor=2)[0][0]
    assert fixed[2] == [20, 9] and fixed[1] == [10, 6] and fixed[3] == [30, 6]
    assert fixed[0] == [0, 3] and fixed[4] == [40, 3] and fixed[5] == [50, 0]
    slices = [[[[5, 5], [9, 5], [9, 9]]] for _ in range(3)]
    out = fix_polygon(slices, 1, 0, 0, (4, 0), neighbor=0, neighbor_3d=1)
    assert out[1][0][0] == [9, 5] and out[0][0][0] == [7, 5] and out[2][0][0] == [7, 5]
    assert slices[1][0][0] == [5, 5]  # the request's polygons are not changed in place
    with pytest.raises(PolygonError, match="vertex_index 7"):
        fix_polygon([square], 0, 0, 7, (1, 1), 1)
    with pytest.raises(PolygonError, match="poly_index 1"):
        fix_polygon([square], 0, 1, 0, (1, 1), 1)
    with pytest.raises(PolygonError, match=r"vertex of polygon 0 must be \[x, y\]"):
        parse_polygons([[[1, 2, 3]]], 2)


def test_demo_annotation_script_regenerates_the_committed_onnx(tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    subprocess.run([sys.executable, str(ROOT / "engines" / "demo-annotation" / "make_model.py"), str(out)], check=True)
    assert out.read_bytes() == (ROOT / "engines" / "demo-annotation" / "model.onnx").read_bytes()
