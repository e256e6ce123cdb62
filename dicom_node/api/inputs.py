"""Inputs of the REST facade: DICOM Part 10, PNG, JPEG, TIFF and BMP bytes to a ``(slices, rows, cols)`` volume.

The kind is detected from magic bytes, never from a client's content type:
DICOM Part 10 (``DICM`` at offset 128, PS3.10 7.1), PNG, JPEG, TIFF, BMP.

Pixel counts are checked from the header against ``api.max_pixels`` *before*
anything is decoded (a small compressed upload can inflate to gigabytes).

DICOM instances are checked against the model's input contract
(``dicom_node.validation``) and decoded by the node's pixel pipeline
(``dicom_node.pixels.volume.load_series``) into modality values (HU for CT),
exactly as for C-STORE'd series. Several instances (a DICOMweb series) form one volume.

Images become one 2D slice, grayscale, with this intensity mapping:

- 8-bit gray (``L``): the stored values 0..255; 16-bit gray (``I;16``): 0..65535;
  32-bit integer or float gray: as stored. No rescale, no window.
- colour or palette images: converted to gray with ITU-R 601-2 luma
  (``L = 0.299 R + 0.587 G + 0.114 B``, Pillow's ``convert("L")``), then as 8-bit gray.
- multi-page TIFF: the first page only.

Images carry no modality LUT, so they are only accepted by models whose spec
sets ``preprocessing.rescale = false`` (models trained on image intensities,
normalised by the spec). Models that take modality values (HU), such as the
bundled ``ct-body`` and ``ct-lungs``, refuse images with an error naming the fix.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.dicomweb.multipart import MultipartError, media_type, split
from dicom_node.errors import DicomNodeError
from dicom_node.pixels.decode import decode_instance, read_dataset
from dicom_node.pixels.modality import apply_into, modality_transform
from dicom_node.pixels.volume import load_series
from dicom_node.validation.contract import Contract
from dicom_node.validation.rules import validate_series

log = logging.getLogger(__name__)

#: Kinds of input and their media types (for answers and DICOMweb parts).
MEDIA_TYPES = {"dicom": "application/dicom", "png": "image/png", "jpeg": "image/jpeg",
               "tiff": "image/tiff", "bmp": "image/bmp"}


class InputRejected(DicomNodeError):
    """One input cannot be used; ``code`` is machine-readable, the message says what to change."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


@dataclass
class DecodedInput:
    """A decoded input.

    Attributes
    ----------
    array : numpy.ndarray
        ``(slices, rows, cols)`` float32: modality values (DICOM) or gray values (images).
    spacing : tuple of float, optional
        (slice, row, col) spacing in mm; None for images (no physical size).
    kind : str
        "dicom", "png", "jpeg", "tiff" or "bmp".
    """

    array: np.ndarray
    spacing: tuple[float, float, float] | None
    kind: str


def sniff(data: bytes) -> str | None:
    """Return the kind of ``data`` from its magic bytes, or None when unsupported."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if data.startswith(b"BM") and len(data) >= 26:
        return "bmp"
    return None


def unsupported_reason(data: bytes) -> str:
    """A plain reason why ``data`` is not an accepted input."""
    if not data:
        return "the upload is empty"
    return ("unsupported content: expected a DICOM Part 10 file (with the 128-byte preamble and 'DICM'), "
            "PNG, JPEG, TIFF or BMP (detected from the content, not the declared type)")


def decode_image(data: bytes, max_pixels: int) -> DecodedInput:
    """Decode a PNG/JPEG/TIFF/BMP to one gray slice (see the module docstring for the mapping).

    Raises
    ------
    InputRejected
        ``too_many_pixels`` (from the header, before decoding) or ``undecodable``.
    """
    from PIL import Image, UnidentifiedImageError

    kind = sniff(data) or "image"
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise InputRejected("too_many_pixels", f"the image has {width}x{height} = {width * height} pixels, "
                                    f"more than api.max_pixels = {max_pixels}; downscale it")
            im.load()
            gray = im if im.mode in ("L", "I;16", "I;16B", "I;16L", "I", "F", "1") else im.convert("L")
            # np.array: one conversion into a new array of the node's own (asarray of a mode "F"
            # image could share Pillow's buffer), so no second copy is needed below.
            array = np.array(gray, dtype=np.float32)
    except Image.DecompressionBombError as exc:
        raise InputRejected("too_many_pixels", f"the image is too large to decode: {exc}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputRejected("undecodable", f"the {kind.upper()} image could not be decoded: {exc}") from exc
    return DecodedInput(array[None], None, kind)


def _header(data: bytes, max_inflated: int) -> Any:
    try:
        return read_dataset(io.BytesIO(data), max_inflated_bytes=max_inflated, stop_before_pixels=True)
    except DicomNodeError as exc:
        raise InputRejected("undecodable", f"not a readable DICOM Part 10 file: {exc}") from exc


def _pixel_count(ds: Any) -> int:
    def number(keyword: str, default: int) -> int:
        try:
            return int(ds.get(keyword, default) or default)
        except (TypeError, ValueError):
            return default

    return number("Rows", 0) * number("Columns", 0) * number("NumberOfFrames", 1) * number("SamplesPerPixel", 1)


def check_contract(headers: Sequence[Any], spec: Any) -> None:
    """Check DICOM headers against the model's input contract (``dicom_node.validation``).

    Raises
    ------
    InputRejected
        ``contract``, naming the first issue and how many there are.
    """
    report = validate_series(list(headers), Contract.from_dict(spec.contract_table()), decode=False)
    if not report.passed:
        first = report.issues[0]
        raise InputRejected("contract", f"the input does not satisfy model {spec.name!r}'s input contract "
                            f"({len(report.issues)} issue(s)); first: {first.message}")


def decode_dicom(parts: Sequence[bytes], spec: Any, tmp_dir: Path, max_pixels: int,
                 max_inflated: int = 2 * 1024**3, gpu: str = "cpu") -> DecodedInput:
    """Check and decode DICOM Part 10 instances (one series) into a volume of modality values.

    Parameters
    ----------
    parts : sequence of bytes
        Part 10 files of one series (a single instance, or a DICOMweb series).
    spec : inference.spec.ModelSpec
        The model, whose input contract is checked.
    tmp_dir : pathlib.Path
        Where the instances are written while decoding (the spool's tmp area).
    max_pixels : int
        ``api.max_pixels``, checked on the headers before decoding.

    Raises
    ------
    InputRejected
        ``undecodable``, ``too_many_pixels`` or ``contract``.
    """

    if not parts:
        raise InputRejected("undecodable", "no DICOM instance was received")
    headers = [_header(p, max_inflated) for p in parts]
    if _single_frame(headers, max_pixels):
        return _decode_single(parts[0], spec, max_inflated)
    check_contract(headers, spec)
    paths: list[Path] = []
    try:
        for data in parts:
            fd, path = _temp_file(tmp_dir)
            paths.append(path)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        return _volume(paths, gpu, max_inflated)
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


def decode_dicom_files(paths: Sequence[Path], spec: Any, max_pixels: int, max_inflated: int = 2 * 1024**3,
                       gpu: str = "cpu") -> DecodedInput:
    """As :func:`decode_dicom` for Part 10 files already on disk (a retrieval session's series).

    Raises
    ------
    InputRejected
        ``undecodable``, ``too_many_pixels`` or ``contract``.
    """
    if not paths:
        raise InputRejected("undecodable", "the session holds no DICOM instance for this series")
    try:
        headers = [read_dataset(p, max_inflated_bytes=max_inflated, stop_before_pixels=True) for p in paths]
    except DicomNodeError as exc:
        raise InputRejected("undecodable", f"not a readable DICOM Part 10 file: {exc}") from exc
    if _single_frame(headers, max_pixels):
        return _decode_single(Path(paths[0]).read_bytes(), spec, max_inflated)
    check_contract(headers, spec)
    return _volume(list(paths), gpu, max_inflated)


def _single_frame(headers: Sequence[Any], max_pixels: int) -> bool:
    """Check the pixel budget on the headers; True when the input is one single-frame instance."""
    pixels = sum(_pixel_count(h) for h in headers)
    if pixels > max_pixels:
        raise InputRejected("too_many_pixels", f"the input holds {pixels} pixels (from Rows x Columns x frames), "
                            f"more than api.max_pixels = {max_pixels}; send fewer slices or instances")
    return len(headers) == 1 and int(headers[0].get("NumberOfFrames", 1) or 1) == 1


def _volume(paths: list[Path], gpu: str, max_inflated: int) -> DecodedInput:
    """Decode Part 10 files of one series into a volume (contract already checked)."""
    try:
        volume = load_series(paths, workers=0, gpu=gpu, max_inflated_bytes=max_inflated)
    except DicomNodeError as exc:
        raise InputRejected("undecodable", f"the DICOM input could not be decoded into a volume: {exc}") from exc
    return DecodedInput(volume.array, tuple(float(s) for s in volume.spacing), "dicom")  # type: ignore[arg-type]


def _decode_single(data: bytes, spec: Any, max_inflated: int) -> DecodedInput:
    """One single-frame instance: read once, check the contract, decode in-process (no temp file).

    Geometry (Image Plane Module) is only required when the contract asks for it,
    so projection images (CR, DX) reach classification models too.
    """
    try:
        ds = read_dataset(io.BytesIO(data), max_inflated_bytes=max_inflated)
    except DicomNodeError as exc:
        raise InputRejected("undecodable", f"not a readable DICOM Part 10 file: {exc}") from exc
    check_contract([ds], spec)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise InputRejected("undecodable", "colour DICOM images (SamplesPerPixel > 1) are not supported; send a "
                            "monochrome image")
    try:
        stored = decode_instance(ds)
    except DicomNodeError as exc:
        raise InputRejected("undecodable", f"the DICOM pixel data could not be decoded: {exc}") from exc
    out = np.empty((1,) + stored.shape[-2:], dtype=np.float32)
    apply_into(stored.reshape(out.shape[1:]), modality_transform(ds), out[0])
    return DecodedInput(out, _spacing(ds), "dicom")


def _spacing(ds: Any) -> tuple[float, float, float] | None:
    try:
        row, col = (float(v) for v in ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing"))
    except (TypeError, ValueError):
        return None
    try:
        thickness = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
    except (TypeError, ValueError):
        thickness = 1.0
    return thickness, row, col


def _temp_file(tmp_dir: Path) -> tuple[int, Path]:
    import uuid

    # ".part": a crash leaves nothing behind, the spool removes these at start.
    path = tmp_dir / f"api-{uuid.uuid4().hex}.part"
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600), path


def split_multipart(body: bytes, content_type: str) -> list[bytes]:
    """Split a ``multipart/related`` body (WADO-RS, PS3.18 8.7.3) into its parts' payloads.

    The body is read by the node's one multipart reader (:mod:`dicom_node.dicomweb.multipart`);
    the caller bounds the number of parts (the body itself is bounded by ``api.max_body_bytes``).

    Raises
    ------
    InputRejected
        ``undecodable`` without a boundary parameter, or when the body is not a
        well-formed multipart message.
    """
    _, params = media_type(content_type)
    boundary = params.get("boundary", "")
    if not boundary:
        raise InputRejected("undecodable", "the DICOMweb server answered multipart without a boundary")
    try:
        return [payload for _, payload in split(body, boundary, max_parts=len(body) + 1)]
    except MultipartError as exc:
        raise InputRejected("undecodable", f"the DICOMweb server's multipart answer cannot be read: {exc}") from exc


def decode_for_model(data: bytes, spec: Any, tmp_dir: Path, max_pixels: int, gpu: str = "cpu") -> DecodedInput:
    """Decode one uploaded input (any supported kind) for ``spec``.

    Raises
    ------
    InputRejected
        ``unsupported_media_type``, ``image_not_accepted``, or any code of the decoders.
    """
    kind = sniff(data)
    if kind is None:
        raise InputRejected("unsupported_media_type", unsupported_reason(data))
    if kind == "dicom":
        return decode_dicom([data], spec, tmp_dir, max_pixels, gpu=gpu)
    if spec.preprocessing.rescale:
        raise InputRejected(
            "image_not_accepted",
            f"model {spec.name!r} takes modality values (preprocessing.rescale = true, e.g. HU for CT"
            f"{', modality ' + '/'.join(spec.input.modalities) if spec.input.modalities else ''}); "
            f"a {kind.upper()} image carries none. Send the DICOM instance instead (input_bytes of a "
            "Part 10 file, or dicomweb_uri)",
        )
    return decode_image(data, max_pixels)
