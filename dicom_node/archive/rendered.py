"""Rendered and thumbnail images of stored instances (PS3.18 8.3.5, 10.4.1.1.3).

A frame is decoded (only that frame), the Modality LUT applied (Rescale Slope and
Intercept), then the VOI: the request's ``window=center,width[,function]`` when given,
else the instance's VOI LUT or first Window Center/Width (pydicom's
:func:`~pydicom.pixels.apply_voi_lut`), else the frame's own range. MONOCHROME1 is
inverted so that it displays as it should; colour images keep their colours.
``viewport=vw,vh`` scales the image to fit inside that many pixels, keeping its
aspect; ``quality=`` (1-100) sets the JPEG quality. Structured reports have no pixels:
rendering them is refused.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

from dicom_node.archive.retrieve import BadRequest, Located, is_sr
from dicom_node.dicomweb.accept import NotAcceptable, Offer
from dicom_node.errors import PixelError

JPEG, PNG = "image/jpeg", "image/png"
#: Rendered media types, default first (PS3.18 Table 8.7.4-1: image/jpeg is the default).
OFFERS = (Offer(JPEG), Offer(PNG))
THUMBNAIL_SIZE = 128
MAX_VIEWPORT = 4096


@dataclass(frozen=True)
class RenderParams:
    """The query parameters of a rendered request (PS3.18 8.3.5.1)."""

    window: tuple[float, float, str] | None = None
    viewport: tuple[int, int] | None = None
    quality: int = 90


def parse_params(window: str | None, viewport: str | None, quality: str | None) -> RenderParams:
    """Parse ``window``, ``viewport`` and ``quality``; a malformed value raises :class:`BadRequest` naming it."""
    win = None
    if window:
        parts = [p.strip() for p in window.split(",")]
        try:
            center, width = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise BadRequest(f"window={window!r} is not center,width[,function]") from None
        function = (parts[2] if len(parts) > 2 else "linear").upper().replace("-", "_")  # linear-exact
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID") or width <= 0 or not math.isfinite(center + width):
            raise BadRequest(f"window={window!r}: width must be positive, function linear, linear-exact or sigmoid")
        win = (center, width, function)
    view = None
    if viewport:
        parts = [p.strip() for p in viewport.split(",")]
        try:
            view = (int(parts[0]), int(parts[1]))
        except (ValueError, IndexError):
            raise BadRequest(f"viewport={viewport!r} is not vw,vh[,sx,sy,sw,sh]") from None
        if not (0 < view[0] <= MAX_VIEWPORT and 0 < view[1] <= MAX_VIEWPORT):
            raise BadRequest(f"viewport={viewport!r}: each side must be 1..{MAX_VIEWPORT}")
    q = 90
    if quality:
        try:
            q = int(quality)
        except ValueError:
            raise BadRequest(f"quality={quality!r} is not an integer 1-100") from None
        if not 1 <= q <= 100:
            raise BadRequest(f"quality={quality!r} is not an integer 1-100")
    return RenderParams(win, view, q)


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2: output 0..1."""
    if function == "SIGMOID":
        return np.asarray(1.0 / (1.0 + np.exp(-4.0 * (values - center) / width)))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    return np.clip((values - (center - 0.5)) / max(width - 1.0, 1.0) + 0.5, 0.0, 1.0)


def _instance_window(ds: Dataset) -> tuple[float, float, str] | None:
    """The first Window Center/Width of the instance (PS3.3 C.11.2), or None."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        c = float(center[0] if isinstance(center, MultiValue) else center)
        w = float(width[0] if isinstance(width, MultiValue) else width)
    except (TypeError, ValueError):
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    return (c, w, function if function in ("LINEAR", "LINEAR_EXACT", "SIGMOID") else "LINEAR") if w > 0 else None


def _to_8bit(ds: Dataset, arr: np.ndarray, params: RenderParams) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if arr.ndim == 3 and int(ds.get("SamplesPerPixel", 1)) > 1:
        if arr.dtype == np.uint8:
            return arr
        top = float(arr.max()) or 1.0
        return np.asarray(arr.astype(np.float64) / top * 255.0).astype(np.uint8)
    if int(ds.get("BitsAllocated", 16)) == 1:  # SEG: a binary mask
        return np.where(arr > 0, 255, 0).astype(np.uint8)
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    window = params.window or _instance_window(ds)
    if window is not None:
        scaled = _window(values, *window)
    elif "VOILUTSequence" in ds:
        voi = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
        low, high = float(voi.min()), float(voi.max())
        scaled = (voi - low) / ((high - low) or 1.0)
    else:
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / ((high - low) or 1.0)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.asarray(np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render(item: Located, frame: int, offer: Offer, params: RenderParams) -> bytes:
    """One frame (numbered from 1) as JPEG or PNG.

    Raises
    ------
    NotAcceptable
        A structured report (no pixels).
    BadRequest
        A frame out of range, or an instance without pixels.
    PixelError
        Decoding failed.
    """
    if is_sr(item.sop_class_uid):
        # PS3.18 8.7.4: an SR renders as text/html, text/plain or application/pdf, none of which this node
        # produces, so nothing acceptable exists (406), whatever image type was asked for.
        raise NotAcceptable("a structured report has no pixel data to render as an image, and this node does not "
                            "render reports as text/html, text/plain or application/pdf; retrieve it as application/dicom")
    try:
        ds = pydicom.dcmread(item.path, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError) as exc:
        raise PixelError(f"cannot read a stored instance: {exc}") from exc
    if "Rows" not in ds:
        raise BadRequest("the instance has no pixel data to render")
    frames = int(ds.get("NumberOfFrames") or 1)
    if not 1 <= frame <= frames:
        raise BadRequest(f"frame {frame} is out of range: the instance has {frames} frame(s), numbered from 1")
    try:
        arr = pixel_array(str(item.path), index=frame - 1)
    except Exception as exc:  # decoders raise ValueError/RuntimeError/...: wrapped at the boundary
        raise PixelError(f"decoding frame {frame} failed: {exc}") from exc
    image = Image.fromarray(_to_8bit(ds, arr, params))
    if params.viewport is not None:
        image.thumbnail(params.viewport, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if offer.media_type == PNG:
        image.save(buf, format="PNG")
    else:
        image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(buf, format="JPEG", quality=params.quality)
    return buf.getvalue()


def representative(found: list[Located]) -> Located:
    """The instance a series or study thumbnail shows: the middle image (not an SR).

    Raises
    ------
    BadRequest
        When no instance has pixels.
    """
    images = [f for f in found if not is_sr(f.sop_class_uid)]
    if not images:
        raise BadRequest("nothing here has pixel data to show as a thumbnail")
    return images[len(images) // 2]
