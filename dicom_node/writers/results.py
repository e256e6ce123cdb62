"""One model run -> its result objects, built, encoded and read back.

:func:`build_results` is what callers use (``dicom-node infer``, the job
pipeline): it picks the source headers of the analysed slices in volume order,
derives the UIDs, builds the SEG (segmentation models) and the TID 1500 SR
(segmentation and classification models), encodes both and runs the read-back
checks of :mod:`dicom_node.writers.readback`. Embedding models produce no
DICOM result object (TID 1500 has no place for a feature vector).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.errors import PixelError, WriterError
from dicom_node.pixels.decode import read_dataset
from dicom_node.pixels.volume import Volume
from dicom_node.writers.common import to_bytes
from dicom_node.writers.options import WriterOptions
from dicom_node.writers.readback import check_report, check_segmentation
from dicom_node.writers.seg import build_segmentation, stack_segments
from dicom_node.writers.sr import build_classification_report, build_segmentation_report, segment_volumes_ml
from dicom_node.writers.uids import ResultUids, result_uids
from inference.spec import ModelSpec

if TYPE_CHECKING:
    from inference.predictor import Prediction

log = logging.getLogger(__name__)

__all__ = ["ResultObjects", "build_results", "read_headers", "select_sources"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ResultObjects:
    """The encoded, checked result objects of one run.

    Attributes
    ----------
    uids : ResultUids
        The derived UIDs.
    seg, sr : bytes or None
        Part 10 files; ``seg`` only for segmentation models, ``sr`` for
        segmentation and classification models.
    volumes_ml : list of float
        Volume of each segment (segmentation models), in spec label order.
    """

    uids: ResultUids
    seg: bytes | None
    sr: bytes | None
    volumes_ml: list[float]


def read_headers(paths: Sequence[Path]) -> dict[str, Dataset]:
    """Read the headers (no pixel data) of the source files, keyed by SOP Instance UID.

    Raises
    ------
    WriterError
        A file cannot be read.
    """
    headers: dict[str, Dataset] = {}
    for path in paths:
        try:
            ds = read_dataset(str(path), stop_before_pixels=True)
        except PixelError as exc:
            raise WriterError(f"cannot re-read source header {Path(path).name}: {exc}") from exc
        headers[str(ds.SOPInstanceUID)] = ds
    return headers


def select_sources(
    headers: Mapping[str, Dataset], volume: Volume, slice_indices: Sequence[int]
) -> tuple[list[Dataset], list[int] | None]:
    """The source headers of the analysed slices in volume order (and frames of a multi-frame source).

    Returns
    -------
    tuple
        ``(sources, source_frames)``: one header per slice and ``None`` for a
        single-frame series; ``[header]`` and the 1-based frame of each slice
        for an enhanced multi-frame image.

    Raises
    ------
    WriterError
        A slice's instance is missing from ``headers``.
    """
    uids = [volume.sop_instance_uids[i] for i in slice_indices]
    missing = sorted(set(uids) - set(headers))
    if missing:
        raise WriterError(f"{len(missing)} source instance(s) of the volume have no header")
    if len(set(volume.sop_instance_uids)) == 1 and len(volume.sop_instance_uids) > 1:
        return [headers[uids[0]]], [volume.source_frames[i] for i in slice_indices]
    return [headers[u] for u in uids], None


def build_results(
    headers: Mapping[str, Dataset],
    volume: Volume,
    spec: ModelSpec,
    prediction: Prediction,
    options: WriterOptions | None = None,
    *,
    model_sha256: str,
) -> ResultObjects:
    """Build, encode and read back the SEG and SR of one prediction.

    Parameters
    ----------
    headers : mapping
        Source headers by SOP Instance UID (:func:`read_headers`).
    volume : Volume
        The decoded series the model ran on.
    spec : ModelSpec
        The model's spec.
    prediction : inference.predictor.Prediction
        ``result``, ``probabilities``, ``slice_indices`` and ``parameters`` are used.
    options : WriterOptions, optional
        From the ``[results]`` config section.
    model_sha256 : str
        SHA-256 of the model's ONNX file, 64 hex digits
        (``inference.store.ModelEntry.onnx_sha256()``), recorded in Algorithm
        Parameters (0066,0032) of the SEG and the SR's algorithm identification.

    Returns
    -------
    ResultObjects

    Raises
    ------
    WriterError
        ``model_sha256`` is not a SHA-256 hex digest, or a writer or a
        read-back check failed.
    """
    # Provenance goes to every PACS the result reaches: refuse anything but a
    # digest (a bound method's repr once leaked a server path into every result).
    if not isinstance(model_sha256, str) or not _SHA256.fullmatch(model_sha256):
        raise WriterError("model_sha256 must be the 64-hex-digit SHA-256 of the model file")
    options = options or WriterOptions()
    uids = result_uids(options.uid_root, volume.series_instance_uid, spec.name, spec.version)
    if spec.task == "embedding":
        log.info("no DICOM result object for embedding model=%s", spec.name)
        return ResultObjects(uids, None, None, [])
    sources, frames = select_sources(headers, volume, prediction.slice_indices)
    params = dict(prediction.parameters)
    if spec.task == "classification":
        return ResultObjects(uids, None, _classification_sr(sources, spec, uids, options, prediction, params, model_sha256), [])
    masks = stack_segments(spec, prediction.result)
    stored = stack_segments(spec, prediction.probabilities) if options.segmentation_type == "FRACTIONAL" else masks
    seg = build_segmentation(
        sources, stored, spec, uids, options, model_sha256=model_sha256, parameters=params, source_frames=frames
    )
    seg_bytes = to_bytes(seg)
    seg_read = check_segmentation(seg_bytes, sources, stored, uids, frames)
    volumes = segment_volumes_ml(masks, volume.spacing)
    sr = build_segmentation_report(
        sources, seg_read, spec, uids, volumes, options, model_sha256=model_sha256, parameters=params
    )
    sr_bytes = to_bytes(sr)
    check_report(sr_bytes, sources, uids, len(spec.labels), segmentation=seg_read, volumes_ml=volumes)
    return ResultObjects(uids, seg_bytes, sr_bytes, volumes)


def _classification_sr(
    sources: list[Dataset],
    spec: ModelSpec,
    uids: ResultUids,
    options: WriterOptions,
    prediction: Prediction,
    params: dict[str, Any],
    model_sha256: str,
) -> bytes:
    threshold = None
    if spec.postprocessing.decision == "threshold":
        threshold = float(params.get("threshold", spec.postprocessing.threshold))
    probs = np.asarray(prediction.probabilities)
    sr = build_classification_report(
        sources, probs, prediction.result, spec, uids, options, threshold=threshold, model_sha256=model_sha256, parameters=params
    )
    data = to_bytes(sr)
    check_report(data, sources, uids, len(spec.labels), n_probabilities=probs.shape[0])
    return data
