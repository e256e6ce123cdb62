"""Clara AIAA polygon utilities, served verbatim (issue 17): ``/v1/mask2polygon`` and ``/v1/fixpolygon``.

Documented at https://docs.nvidia.com/clara/clara-train-sdk/aiaa/server_apis.html; the shapes
are those of the reference clients (NVIDIA/ai-assisted-annotation-client ``py_client/client_api.py``
``mask2polygon`` / ``fixpolygon``, ``cpp-client/src/client.cpp``)::

    POST /v1/mask2polygon   multipart: params={"more_points": 10} ; image=@mask.nii.gz
        -> [[], [[[x, y], ...], ...], ...]   one list of polygons per slice along z

    POST /v1/fixpolygon     multipart: params={"poly": ..., "poly_index": 0, "vertex_index": 14,
                            "vertex_offset": [8, 5], "propagate_neighbor": 1}
                            (3D: "dimension": 3, "slice_index", "propagate_neighbor_3d") ; image=@image
        -> output=everything (default): multipart/form-data, params = the updated polygons and
           image = the polygons drawn as a mask on the image's grid; output=json: the polygons

Parameter spellings of every client are read: ``poly_index`` / ``polygon_index`` /
``polygonIndex``, ``vertex_index`` / ``vertexIndex``, ``vertex_offset`` / ``vertexOffset``,
``slice_index`` / ``sliceIndex``, ``propagate_neighbor`` / ``neighbor``; the C++ client's
``prev_poly`` is the polygon set before the edit, used when ``poly`` is absent. The geometry is
:mod:`dicom_node.annotation.polygons` (scikit-image contours and polygon filling).
"""

from __future__ import annotations

import io
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from dicom_node.annotation.polygons import PolygonError, draw, fix_polygon, mask_to_polygons, parse_polygons
from dicom_node.api.aiaa_images import Output, answer, read_form
from dicom_node.api.auth import Principal, require
from dicom_node.api.deps import ConfigDep
from dicom_node.api.errors import ApiError
from dicom_node.api.inputs import InputRejected, decode_image, sniff
from dicom_node.api.schemas import error_responses
from dicom_node.config import NodeConfig
from dicom_node.errors import DicomNodeError, PixelDataError
from dicom_node.pixels.nifti import NiftiVolume, is_nifti, read_nifti, to_bytes

router = APIRouter(tags=["clara-aiaa"])

Submitter = Annotated[Principal, Depends(require("submit"))]
OutputQuery = Annotated[Output, Query(description="json: the polygons; everything (default): multipart/form-data "
                                                  "with params (the polygons) and the mask; image: the mask")]

def _body(required: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": [required], "properties": {
            "params": {"type": "string", "description": "JSON object (see the route's description)"},
            "image": {"type": "string", "format": "binary", "description": "NIfTI (.nii, .nii.gz) or a PNG/JPEG/TIFF/BMP"},
        }}}}}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Polygons (JSON), or polygons and a mask (multipart/form-data)",
          "content": {"application/json": {}, "multipart/form-data": {}, "application/octet-stream": {}}},
    **error_responses(400, 401, 403, 413, 415),
}


def _grid(data: bytes, config: NodeConfig) -> tuple[np.ndarray, NiftiVolume | None]:
    """The image as an ``(x, y, z)`` array in its own index order (NIfTI ``i, j, k``; an image's column, row)."""
    try:
        if is_nifti(data):
            vol = read_nifti(data, config.pixels.max_volume_bytes or 2 * 1024**3, config.api.max_pixels)
            return np.asarray(vol.image.dataobj).reshape(vol.image.shape[:3]), vol
        if sniff(data) in ("png", "jpeg", "tiff", "bmp"):
            return decode_image(data, config.api.max_pixels).array[0].T[:, :, None], None
    except PixelDataError as exc:
        raise ApiError(413, "too_many_pixels", f"image: {exc}") from exc
    except InputRejected as exc:
        raise ApiError(413 if exc.code == "too_many_pixels" else 400, exc.code, f"image: {exc.description}") from exc
    except DicomNodeError as exc:
        raise ApiError(400, "undecodable", f"image: {exc}") from exc
    raise ApiError(415, "unsupported_media_type", "image: expected a NIfTI file (.nii, .nii.gz) or a PNG, JPEG, "
                   "TIFF or BMP image (detected from the content)")


def _mask_file(mask: np.ndarray, nifti: NiftiVolume | None) -> bytes:
    """The ``(x, y, z)`` uint8 mask as the input's kind: NIfTI on the input's header, else a PNG (0 / 255)."""
    if nifti is not None:
        image = type(nifti.image)(mask, nifti.image.affine, nifti.image.header.copy())
        image.set_data_dtype(np.uint8)
        image.header.set_slope_inter(1.0, 0.0)
        return to_bytes(image)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((mask[:, :, 0].T * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _int(params: dict[str, Any], names: tuple[str, ...], default: int | None = None) -> int:
    for name in names:
        if name in params:
            value = params[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
                raise ApiError(400, "invalid_params", f"{name} must be an integer, got {value!r}")
            return int(value)
    if default is None:
        raise ApiError(400, "invalid_params", f"params needs {names[0]}")
    return default


@router.post("/v1/mask2polygon", openapi_extra=_body("image"), responses=_RESPONSES, summary="Clara AIAA: a mask's outlines as polygons, slice by slice")
async def mask2polygon(request: Request, config: ConfigDep, _caller: Submitter) -> Response:
    """``params={"more_points": N}`` (vertex spacing along the outline, default 10); image: a mask (NIfTI or PNG)."""
    params, data = await read_form(request, config.api.max_multipart_parts)
    if not data:
        raise ApiError(400, "image_required", "send the mask as the multipart file field image")
    more = _int(params, ("more_points",), 10)
    if not 1 <= more <= 1000:
        raise ApiError(400, "invalid_params", "more_points must be in 1..1000")
    grid, _ = await run_in_threadpool(_grid, data, config)
    return JSONResponse(await run_in_threadpool(mask_to_polygons, grid, more))


def _edit(params: dict[str, Any], shape: tuple[int, int, int] | None) -> tuple[list[Any], int]:
    """Apply the fixpolygon edit of ``params``; returns the new per-slice polygons and the dimension."""
    poly = params.get("poly", params.get("prev_poly"))
    if poly is None:
        raise ApiError(400, "invalid_params", "params needs poly (the polygons before the edit)")
    offset = params.get("vertex_offset", params.get("vertexOffset"))
    if (not isinstance(offset, list) or len(offset) != 2
            or any(isinstance(v, bool) or not isinstance(v, int | float) for v in offset)):
        raise ApiError(400, "invalid_params", "vertex_offset must be [dx, dy]")
    slice_keys = ("slice_index", "sliceIndex")
    dimension = _int(params, ("dimension",), 3 if any(k in params for k in slice_keys) else 2)
    if dimension not in (2, 3):
        raise ApiError(400, "invalid_params", "dimension must be 2 or 3")
    try:
        polygons = parse_polygons(poly, dimension)
        fixed = fix_polygon(
            polygons, _int(params, slice_keys, 0) if dimension == 3 else 0,
            _int(params, ("poly_index", "polygon_index", "polygonIndex")),
            _int(params, ("vertex_index", "vertexIndex")), (float(offset[0]), float(offset[1])),
            _int(params, ("propagate_neighbor", "neighbor"), 0), _int(params, ("propagate_neighbor_3d",), 0))
    except PolygonError as exc:
        raise ApiError(400, "invalid_params", str(exc)) from exc
    if shape is not None and dimension == 3 and len(fixed) > shape[2]:
        raise ApiError(400, "invalid_params", f"poly has {len(fixed)} slices, the image {shape[2]}")
    return fixed, dimension


@router.post("/v1/fixpolygon", openapi_extra=_body("params"), responses=_RESPONSES,
             summary="Clara AIAA: move one polygon vertex and its neighbours (2D and 3D)")
async def fixpolygon(request: Request, config: ConfigDep, _caller: Submitter, output: OutputQuery = "everything") -> Response:
    """Edit one vertex (``poly``, ``poly_index``, ``vertex_index``, ``vertex_offset``, ``propagate_neighbor``;
    3D adds ``slice_index`` and ``propagate_neighbor_3d``); answers the polygons and their mask on the image."""
    params, data = await read_form(request, config.api.max_multipart_parts)
    grid, nifti = await run_in_threadpool(_grid, data, config) if data else (None, None)
    fixed, dimension = _edit(params, None if grid is None else grid.shape)
    result = fixed[0] if dimension == 2 else fixed
    mask = None
    if grid is not None:
        drawn = await run_in_threadpool(draw, fixed, grid.shape)
        mask = await run_in_threadpool(_mask_file, drawn, nifti)
    return answer(output, result, mask)
