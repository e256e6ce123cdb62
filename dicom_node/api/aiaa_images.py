"""Images and answers of the Clara AIAA API (issue 17): NIfTI, DICOM or a session in; NIfTI and JSON out.

An AIAA request names its image as the multipart field ``image`` (``datapoint`` in the
reference Python client, read too) or as ``session_id`` (a query parameter). The image becomes
the node's volume representation (``(slices, rows, cols)`` values, an ``(s, r, c) -> LPS``
affine), the same one the DICOM path builds (:func:`dicom_node.pixels.volume.load_series`):

- NIfTI (``.nii``, ``.nii.gz``, detected from the content): :func:`dicom_node.pixels.nifti.read_nifti`;
- DICOM Part 10: the model's input contract is checked (:func:`dicom_node.api.inputs.check_contract`)
  and the instance decoded by ``load_series`` (an enhanced multi-frame CT is a whole volume); a
  single projection image without plane geometry goes through :func:`~dicom_node.api.inputs.decode_for_model`;
- a session (``/session/`` or ``/v1/sessions``): its NIfTI image (``SessionService.nifti_file``) or its
  one DICOM series (``SessionService.series_files``).

Points of dextr3d/deepgrow are voxel indices ``[x, y, z]`` in the image's own index order (NIfTI
``i, j, k``; for DICOM ``x`` = column, ``y`` = row, ``z`` = slice in series order, as ITK reads a
series). Masks go back as ``.nii.gz`` on the input's own grid, affine and header.

Answers (``output``, https://docs.nvidia.com/clara/clara-train-sdk/aiaa/server_apis.html):
``image``: the NIfTI mask as ``application/octet-stream``; ``json``: the result JSON;
``everything`` (the default; the reference clients parse it): ``multipart/form-data`` with a
``params`` field (the result JSON) and a file part (the mask).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from dicom_node.api.errors import ApiError
from dicom_node.api.inputs import DecodedInput, InputRejected, check_contract, decode_for_model, sniff
from dicom_node.config import NodeConfig
from dicom_node.dicomweb.multipart import form_data_head, new_boundary
from dicom_node.errors import DicomNodeError, PixelDataError
from dicom_node.pixels.decode import read_dataset
from dicom_node.pixels.nifti import NiftiVolume, is_nifti, read_nifti, volume_image
from dicom_node.pixels.volume import load_series
from dicom_node.sources.sessions import SessionService
from dicom_node.sources.sessions_plan import SessionUnavailable
from inference.spec import ModelSpec

Output = Literal["image", "json", "everything"]
#: The multipart fields an AIAA client may send its image in (the documented ``image``; the
#: reference Python client's ``datapoint``).
IMAGE_FIELDS = ("image", "datapoint")
#: AIAA's status for an expired or unknown session (the reference clients raise SESSION_EXPIRED on it).
SESSION_EXPIRED = 440


@dataclass
class AiaaImage:
    """One input image on the node's grid, and how to answer on the caller's.

    Attributes
    ----------
    array : numpy.ndarray
        ``(slices, rows, cols)`` float32 values (HU for CT).
    affine : numpy.ndarray
        ``(s, r, c) -> LPS`` mm.
    spacing : tuple of float
        ``(slice, row, col)`` mm.
    kind : str
        ``nifti``, ``dicom`` or an image kind (``png`` ...).
    nifti : NiftiVolume or None
        The NIfTI input, whose header and voxel order masks are written back in.
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    kind: str
    nifti: NiftiVolume | None = None

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        """The image's size in its own ``x, y, z`` index order."""
        if self.nifti is not None:
            return tuple(int(n) for n in self.nifti.image.shape[:3])  # type: ignore[return-value]
        s, r, c = self.array.shape
        return c, r, s

    def points_to_grid(self, points: np.ndarray) -> np.ndarray:
        """``(n, 3)`` ``[x, y, z]`` indices of the caller's image -> ``(s, r, c)`` indices of :attr:`array`."""
        if self.nifti is not None:
            return self.nifti.points_to_grid(points)
        return np.asarray(points, dtype=np.float64).reshape(-1, 3)[:, ::-1]

    def to_xyz(self, grid: np.ndarray) -> np.ndarray:
        """An ``(s, r, c)`` array on :attr:`array`'s grid in the caller's ``x, y, z`` order."""
        if self.nifti is None:
            return np.asarray(grid).transpose(2, 1, 0)
        return self.nifti.to_file_order(grid)

    def mask_file(self, labels: np.ndarray) -> bytes:
        """A uint8 ``(s, r, c)`` label map as ``.nii.gz`` on the caller's grid, affine and header."""
        if self.nifti is not None:
            return self.nifti.mask_image(labels)
        return volume_image(labels, self.affine)


def _rejected(exc: InputRejected) -> ApiError:
    status = {"too_many_pixels": 413, "unsupported_media_type": 415, "image_not_accepted": 415,
              "contract": 422, "session_unavailable": SESSION_EXPIRED}.get(exc.code, 400)
    return ApiError(status, exc.code, exc.description)


def _from_dicom(paths: list[Path], spec: ModelSpec, config: NodeConfig) -> AiaaImage:
    """DICOM files of one series (one enhanced multi-frame file, or single-frame slices) -> an image."""
    max_inflated = config.pixels.max_volume_bytes or 2 * 1024**3
    try:
        headers = [read_dataset(p, max_inflated_bytes=max_inflated, stop_before_pixels=True) for p in paths]
    except DicomNodeError as exc:
        raise InputRejected("undecodable", f"not a readable DICOM Part 10 file: {exc}") from exc
    check_contract(headers, spec)
    has_plane = all("ImagePositionPatient" in h or "PerFrameFunctionalGroupsSequence" in h for h in headers)
    if len(paths) == 1 and not has_plane:
        decoded = decode_for_model(paths[0].read_bytes(), spec, paths[0].parent, config.api.max_pixels,
                                   gpu=config.pixels.gpu_decode)
        return _from_decoded(decoded)
    try:
        volume = load_series(paths, workers=0, gpu=config.pixels.gpu_decode, max_inflated_bytes=max_inflated,
                             max_volume_bytes=config.pixels.max_volume_bytes)
    except PixelDataError as exc:
        raise InputRejected("too_many_pixels", str(exc)) from exc
    except DicomNodeError as exc:
        raise InputRejected("undecodable", f"the DICOM input could not be decoded into a volume: {exc}") from exc
    if volume.array.size > config.api.max_pixels:
        raise InputRejected("too_many_pixels", f"the volume holds {volume.array.size} voxels, more than "
                            f"api.max_pixels = {config.api.max_pixels}")
    return AiaaImage(volume.array, volume.affine, volume.spacing, "dicom")


def _from_decoded(decoded: DecodedInput) -> AiaaImage:
    spacing = decoded.spacing or (1.0, 1.0, 1.0)
    affine = np.diag([spacing[0], spacing[1], spacing[2], 1.0])
    return AiaaImage(decoded.array, affine, spacing, decoded.kind)


def load_upload(data: bytes, spec: ModelSpec, config: NodeConfig, tmp_dir: Path) -> AiaaImage:
    """An uploaded image (NIfTI, DICOM Part 10, or an image file for a model that takes images).

    Raises
    ------
    ApiError
        400 ``undecodable``, 413 ``too_many_pixels``, 415 ``unsupported_media_type`` /
        ``image_not_accepted``, 422 ``contract``; each naming what to change.
    """
    try:
        if is_nifti(data):
            try:
                vol = read_nifti(data, config.pixels.max_volume_bytes or 2 * 1024**3, config.api.max_pixels)
            except PixelDataError as exc:
                raise InputRejected("too_many_pixels", str(exc)) from exc
            except DicomNodeError as exc:
                raise InputRejected("undecodable", f"image: {exc}") from exc
            return AiaaImage(vol.array, vol.affine, vol.spacing, "nifti", vol)
        if sniff(data) == "dicom":
            fd, path = tmp_dir_file(tmp_dir)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            try:
                return _from_dicom([path], spec, config)
            finally:
                path.unlink(missing_ok=True)
        if sniff(data) is None:
            raise InputRejected("unsupported_media_type", "image: expected a NIfTI file (.nii or .nii.gz), a DICOM "
                                "Part 10 file, or PNG/JPEG/TIFF/BMP (detected from the content)")
        return _from_decoded(decode_for_model(data, spec, tmp_dir, config.api.max_pixels, gpu=config.pixels.gpu_decode))
    except InputRejected as exc:
        raise _rejected(exc) from exc


def load_session(sessions: SessionService, session_id: str, spec: ModelSpec, config: NodeConfig) -> AiaaImage:
    """The image of a ready session (its NIfTI file, else its one DICOM series), from ``/session/`` or
    ``/v1/sessions`` alike; unknown, expired or not ready: 440, as AIAA answers an expired session."""
    try:
        nifti = sessions.nifti_file(session_id)
        if nifti is not None:
            try:
                data = nifti.read_bytes()
            except OSError as exc:  # swept between the lookup and the read: expired
                raise InputRejected("session_unavailable", f"session_id: {session_id!r} expired") from exc
            return load_upload(data, spec, config, nifti.parent)
        try:
            paths = sessions.series_files(session_id, None)
        except SessionUnavailable as exc:
            raise InputRejected("session_unavailable", f"session_id: {exc}") from exc
        return _from_dicom(list(paths), spec, config)
    except InputRejected as exc:
        raise _rejected(exc) from exc


def tmp_dir_file(tmp_dir: Path) -> tuple[int, Path]:
    """A new private ``.part`` file under ``tmp_dir`` (the spool removes leftovers at start)."""
    import uuid

    path = tmp_dir / f"aiaa-{uuid.uuid4().hex}.part"
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600), path


async def read_form(request: Request, max_parts: int) -> tuple[dict[str, Any], bytes | None]:
    """The ``params`` JSON and the image bytes of an AIAA multipart request (either may be absent).

    Raises
    ------
    ApiError
        400 when ``params`` is not a JSON object or the body is not multipart/form-data.
    """
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(400, "invalid_request", "the body must be multipart/form-data with the fields params and image")
    form = await request.form(max_files=len(IMAGE_FIELDS), max_fields=max_parts)
    try:
        raw = form.get("params")
        if isinstance(raw, UploadFile):
            raw = (await raw.read()).decode("utf-8", "replace")
        params = json.loads(raw) if raw not in (None, "") else {}
        if not isinstance(params, dict):
            raise ApiError(400, "invalid_params", "params must be a JSON object, e.g. {}")
        image: bytes | None = None
        for name in IMAGE_FIELDS:
            part = form.get(name)
            if isinstance(part, UploadFile):
                image = await part.read()
                break
            if isinstance(part, str) and part:
                raise ApiError(400, "invalid_request", f"{name} must be a file part (curl -F \"{name}=@file.nii.gz\")")
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_params", f"params is not valid JSON: {exc.msg}") from exc
    finally:
        await form.close()
    return params, image


def answer(output: Output, result: Any, mask: bytes | None) -> Response:
    """The AIAA answer for ``output`` (see the module docstring); without a mask, JSON for every output but image."""
    if output == "json" or mask is None:
        if output == "image":
            raise ApiError(400, "no_image", "this model answers no mask; ask for output=json")
        return JSONResponse(result)
    if output == "image":
        return Response(mask, media_type="application/octet-stream",
                        headers={"Content-Disposition": 'attachment; filename="image.nii.gz"'})
    boundary = new_boundary()
    body = b"".join([
        form_data_head(boundary, "params", "application/json"), json.dumps(result).encode("utf-8"), b"\r\n",
        form_data_head(boundary, "image", "application/octet-stream", "image.nii.gz"), mask, b"\r\n",
        f"--{boundary}--\r\n".encode("ascii"),
    ])
    return Response(body, media_type=f"multipart/form-data; boundary={boundary}")
