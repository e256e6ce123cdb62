"""Segmentation model output -> DICOM Segmentation (PS3.3 A.51, C.8.20) with highdicom.

One segment per label of the model spec, numbered in spec order from 1
(PS3.3 C.8.20.2: Segment Number), each with the spec's SNOMED CT category and
type (CID 7150/7151), the recommended display colour converted from the spec's
RGB to CIELab (PS3.3 C.10.7.1.1), and the Segmentation Algorithm
Identification (PS3.3 C.8.20.2, Table 10-19: Algorithm Family "Artificial
Intelligence", Algorithm Name and Version from the spec, Algorithm Parameters
carrying the SHA-256 of the model file and the effective scalar parameters).

The SEG shares the source's Study and Frame of Reference; highdicom writes the
Referenced Series Sequence and, per frame, the Derivation Image Sequence from
``source_images``. Frames where a segment is empty are omitted
(``omit_empty_frames``); an all-empty result keeps every frame because a SEG
needs at least one (highdicom reverts on its own and logs why).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_node.errors import WriterError
from dicom_node.writers.common import spec_code, with_type2_defaults, wrap_errors
from dicom_node.writers.options import WriterOptions
from dicom_node.writers.uids import ResultUids
from inference.spec import ModelSpec

log = logging.getLogger(__name__)

__all__ = ["FRACTIONAL_MAX", "algorithm_identification", "build_segmentation", "stack_segments", "tracking_uid"]

#: Maximum Fractional Value (0062,000E): probabilities are stored as 0..255.
FRACTIONAL_MAX = 255


def stack_segments(spec: ModelSpec, result: np.ndarray) -> np.ndarray:
    """Arrange a model result as ``(slices, rows, cols, labels)`` in spec label order.

    Parameters
    ----------
    spec : ModelSpec
        The model's spec; its ``labels`` pick and order the channels.
    result : numpy.ndarray
        The predictor's layout: ``(slices, C, rows, cols)`` per-channel masks or
        probabilities (2D models), ``(1, C, slices, rows, cols)`` (3D models), or
        a ``(slices, rows, cols)`` integer label map whose values are channels.

    Returns
    -------
    numpy.ndarray
        Boolean masks for integer/boolean input; float32 probabilities quantised to
        steps of 1/255 (what a FRACTIONAL SEG stores, PS3.3 C.8.20.2.3) otherwise.

    Raises
    ------
    WriterError
        The shape does not fit, or a label's channel is missing from the result.
    """
    arr = np.asarray(result)
    channels = [label.channel for label in spec.labels]
    if not channels:
        raise WriterError(f"model {spec.name!r} declares no labels: nothing to segment")
    if arr.ndim == 5 and arr.shape[0] == 1:
        arr = np.moveaxis(arr[0], 0, 1)
    if arr.ndim == 3:
        if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
            raise WriterError(f"a (slices, rows, cols) result must be an integer label map, got {arr.dtype}")
        return np.stack([arr == c for c in channels], axis=-1)
    if arr.ndim != 4:
        raise WriterError(f"cannot make segments of a result shaped {arr.shape}")
    if max(channels) >= arr.shape[1]:
        raise WriterError(f"model {spec.name!r}: label channel {max(channels)} is not in a result with {arr.shape[1]} channel(s)")
    picked = np.moveaxis(arr[:, channels], 1, -1)
    if np.issubdtype(picked.dtype, np.floating):
        # Quantise once here so emptiness and read-back comparisons use what the SEG stores.
        return (np.around(np.clip(picked, 0.0, 1.0) * FRACTIONAL_MAX) / FRACTIONAL_MAX).astype(np.float32)
    return picked.astype(bool)


def algorithm_identification(
    spec: ModelSpec, options: WriterOptions, model_sha256: str | None = None, parameters: Mapping[str, Any] | None = None
) -> hd.AlgorithmIdentificationSequence:
    """The Segmentation Algorithm Identification Sequence (PS3.3 Table 10-19) of a model.

    Algorithm Family is (123110, DCM, "Artificial Intelligence") from CID 7162;
    Algorithm Parameters lists ``model_sha256=<hex>`` and the scalar effective
    parameters (``threshold=0.25``), comma-separated, so the exact model file and
    settings behind a segment can be identified.
    """
    params: dict[str, str] = {}
    if model_sha256:
        params["model_sha256"] = model_sha256
    for key, value in sorted((parameters or {}).items()):
        if isinstance(value, bool | int | float | str):
            params[key] = str(value)
    with wrap_errors("algorithm identification"):
        return hd.AlgorithmIdentificationSequence(
            name=spec.name,
            family=codes.cid7162.ArtificialIntelligence,
            version=spec.version,
            source=options.manufacturer,
            parameters=params or None,
        )


def _descriptions(spec: ModelSpec, uids: ResultUids, algorithm: hd.AlgorithmIdentificationSequence) -> list[hd.seg.SegmentDescription]:
    out = []
    for number, label in enumerate(spec.labels, start=1):
        with wrap_errors(f"segment {number} ({label.name!r})"):
            out.append(
                hd.seg.SegmentDescription(
                    segment_number=number,
                    segment_label=label.name,
                    segmented_property_category=spec_code(label.category),
                    segmented_property_type=spec_code(label.type),
                    algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                    algorithm_identification=algorithm,
                    # The SR's measurement group for this segment carries the same tracking UID.
                    tracking_uid=tracking_uid(uids, label.channel),
                    tracking_id=label.name,
                    display_color=hd.color.CIELabColor.from_rgb(*label.color),
                )
            )
    return out


def tracking_uid(uids: ResultUids, channel: int) -> str:
    """Tracking UID (0062,0021) of the segment of label ``channel``, shared by the SEG and the SR."""
    return uids.derive("segment", channel)


def _content_label(name: str) -> str:
    """Content Label (0070,0080) is a CS: upper case, digits, space, underscore, at most 16 characters."""
    return re.sub(r"[^A-Z0-9_ ]", "_", name.upper())[:16] or "SEGMENTATION"


def _align(sources: Sequence[Dataset], segments: np.ndarray, source_frames: Sequence[int] | None) -> np.ndarray:
    """Check the mask against the sources; place slices of an enhanced multi-frame source in frame order."""
    first = sources[0]
    rows, cols = int(first.Rows), int(first.Columns)
    if segments.shape[1:3] != (rows, cols):
        raise WriterError(f"mask slices are {segments.shape[1]}x{segments.shape[2]}, the source images {rows}x{cols}")
    frames = int(first.get("NumberOfFrames", 1) or 1)
    if len(sources) == 1 and frames > 1:
        if source_frames is None or len(source_frames) != segments.shape[0]:
            raise WriterError("a multi-frame source needs one source frame number per mask slice")
        full = np.zeros((frames, *segments.shape[1:]), dtype=segments.dtype)
        full[np.asarray(source_frames, dtype=np.intp) - 1] = segments
        return full
    if len(sources) != segments.shape[0]:
        raise WriterError(f"{segments.shape[0]} mask slice(s) but {len(sources)} source image(s)")
    return segments


def build_segmentation(
    sources: Sequence[Dataset],
    segments: np.ndarray,
    spec: ModelSpec,
    uids: ResultUids,
    options: WriterOptions | None = None,
    *,
    model_sha256: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    source_frames: Sequence[int] | None = None,
) -> hd.seg.Segmentation:
    """Build the Segmentation instance (PS3.3 A.51) of one model run.

    Parameters
    ----------
    sources : sequence of pydicom.dataset.Dataset
        Source image headers (pixel data not needed), one per mask slice in the
        same (volume) order; or a single enhanced multi-frame image.
    segments : numpy.ndarray
        ``(slices, rows, cols, labels)`` from :func:`stack_segments`: booleans for
        BINARY, probabilities in [0, 1] for FRACTIONAL.
    spec : ModelSpec
        The model's spec (labels, name, version).
    uids : ResultUids
        From :func:`dicom_node.writers.uids.result_uids`.
    options : WriterOptions, optional
        Series number/description, equipment, segmentation type.
    model_sha256 : str, optional
        SHA-256 of the model file, recorded in Algorithm Parameters.
    parameters : mapping, optional
        The effective inference parameters (scalars are recorded).
    source_frames : sequence of int, optional
        With a multi-frame source: the 1-based frame of each mask slice.

    Returns
    -------
    highdicom.seg.Segmentation
        A pydicom ``Dataset``; serialise with :func:`dicom_node.writers.common.to_bytes`.

    Raises
    ------
    WriterError
        Shapes disagree, the spec has no labels, or highdicom rejects the input.
    """
    options = options or WriterOptions()
    if not sources:
        raise WriterError("no source images to derive a segmentation from")
    if segments.ndim != 4 or segments.shape[-1] != len(spec.labels):
        raise WriterError(f"segments must be (slices, rows, cols, {len(spec.labels)}), got {segments.shape}")
    fractional = options.segmentation_type == "FRACTIONAL"
    if not fractional and np.issubdtype(segments.dtype, np.floating):
        raise WriterError("a BINARY segmentation needs decided masks, got probabilities")
    pixels = _align(sources, segments, source_frames)
    pixels = pixels.astype(np.float32) if fractional else pixels.astype(np.uint8)
    algorithm = algorithm_identification(spec, options, model_sha256, parameters)
    headers = [with_type2_defaults(sources[0]), *sources[1:]]
    with wrap_errors(f"model {spec.name!r}: cannot build the segmentation"):
        seg = hd.seg.Segmentation(
            source_images=headers,
            pixel_array=pixels,
            segmentation_type=options.segmentation_type,
            segment_descriptions=_descriptions(spec, uids, algorithm),
            series_instance_uid=uids.seg_series_instance_uid,
            series_number=options.series_number("seg", spec),
            sop_instance_uid=uids.seg_sop_instance_uid,
            instance_number=1,
            manufacturer=options.manufacturer,
            manufacturer_model_name=options.manufacturer_model_name,
            software_versions=options.software_version,
            device_serial_number=options.device_serial_number,
            fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY if fractional else None,
            max_fractional_value=FRACTIONAL_MAX,
            content_label=_content_label(spec.name),
            content_description=f"{spec.name} {spec.version}"[:64],
            omit_empty_frames=True,
            series_description=options.series_description("seg", spec.name, spec.version),
            institution_name=options.institution_name,
        )
    log.info("segmentation built model=%s version=%s segments=%d frames=%d", spec.name, spec.version, len(spec.labels), seg.NumberOfFrames)
    return seg
