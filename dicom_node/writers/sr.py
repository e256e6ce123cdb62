"""Model results -> Comprehensive 3D SR (PS3.3 A.35.13) following TID 1500 Measurement Report.

Every report has the same frame (PS3.16 TID 1500): title (126000, DCM,
"Imaging Measurement Report"), language, observation context with the node as
a device observer (TID 1002/1004: Device Observer UID derived from the UID
root and node name, Device Observer Name the node, Model Name
"<model> <version>"), procedure reported (363679005, SCT, "Imaging
procedure"), and an "Imaging Measurements" container of measurement groups:

- segmentation models: one TID 1411 Volumetric ROI group per segment, with
  Finding Category/Type from the spec, Algorithm Identification (TID 4019), the
  segment's tracking UID (shared with the SEG), a Referenced Segment (121191,
  DCM) pointing at the SEG instance and segment number plus the source series
  (121232, DCM), and the volume (118565006, SCT, "Volume") in mL (UCUM ``mL``);
- classification models: one TID 1501 group per label, with Finding
  Category/Type, one Probability measurement (122157, DCM) per classified image
  in UCUM ``{probability}``, referencing that image (TID 300 "Source of
  measurement"), the decision threshold (122411, DCM, "Threshold Value") when
  the spec decides by threshold (argmax decisions have none), and a qualitative
  evaluation "<finding type> = Present | Absent" (52101004 / 272519000, SCT).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_node.errors import WriterError
from dicom_node.writers.common import spec_code, with_type2_defaults, wrap_errors
from dicom_node.writers.options import WriterOptions
from dicom_node.writers.seg import tracking_uid
from dicom_node.writers.uids import ResultUids, derive_uid
from inference.spec import Label, ModelSpec

log = logging.getLogger(__name__)

__all__ = ["UNIT_ML", "UNIT_PROBABILITY", "build_classification_report", "build_segmentation_report", "segment_volumes_ml"]

#: UCUM millilitre (CID 7181 style unit for volumes).
UNIT_ML = Code("mL", "UCUM", "milliliter")
#: UCUM dimensionless annotation for a probability in [0, 1].
UNIT_PROBABILITY = Code("{probability}", "UCUM", "probability")
_PROCEDURE = codes.SCT.ImagingProcedure


def segment_volumes_ml(masks: np.ndarray, spacing: Sequence[float]) -> list[float]:
    """Volume of each segment in mL: voxel count x voxel volume (spacing in mm).

    Parameters
    ----------
    masks : numpy.ndarray
        ``(slices, rows, cols, labels)`` boolean masks.
    spacing : sequence of float
        (slice, row, col) spacing in mm.
    """
    voxel_ml = float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
    counts = np.count_nonzero(masks.reshape(-1, masks.shape[-1]), axis=0)
    return [round(int(n) * voxel_ml, 6) for n in counts]


def _observation_context(spec: ModelSpec, options: WriterOptions) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derive_uid(options.uid_root, "device", options.node_name),
        name=options.node_name,
        manufacturer_name=options.manufacturer,
        model_name=f"{spec.name} {spec.version}"[:64],
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(observer_type=codes.cid270.Device, observer_identifying_attributes=device)
    )


def _algorithm(spec: ModelSpec, model_sha256: str | None, parameters: Mapping[str, Any] | None) -> hd.sr.AlgorithmIdentification:
    params = [f"model_sha256={model_sha256}"] if model_sha256 else []
    params += [f"{k}={v}" for k, v in sorted((parameters or {}).items()) if isinstance(v, bool | int | float | str)]
    return hd.sr.AlgorithmIdentification(name=spec.name, version=spec.version, parameters=params or None)


def _document(
    evidence: Sequence[Dataset],
    groups: Sequence[Any],
    spec: ModelSpec,
    uids: ResultUids,
    options: WriterOptions,
) -> hd.sr.Comprehensive3DSR:
    """Wrap measurement groups into a TID 1500 report and the Comprehensive 3D SR instance."""
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(spec, options),
        procedure_reported=_PROCEDURE,
        imaging_measurements=list(groups),
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[with_type2_defaults(evidence[0]), *evidence[1:]],
        content=report[0],
        series_instance_uid=uids.sr_series_instance_uid,
        series_number=options.series_number("sr", spec),
        sop_instance_uid=uids.sr_sop_instance_uid,
        instance_number=1,
        manufacturer=options.manufacturer,
        # Complete content, but machine output nobody has verified: PRELIMINARY, UNVERIFIED.
        is_complete=True,
        is_final=False,
        is_verified=False,
        institution_name=options.institution_name,
        series_description=options.series_description("sr", spec.name, spec.version),
        manufacturer_model_name=options.manufacturer_model_name,
        software_versions=options.software_version,
        device_serial_number=options.device_serial_number,
    )


def build_segmentation_report(
    sources: Sequence[Dataset],
    segmentation: Dataset,
    spec: ModelSpec,
    uids: ResultUids,
    volumes_ml: Sequence[float],
    options: WriterOptions | None = None,
    *,
    model_sha256: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 report of a segmentation: one TID 1411 group per SEG segment.

    Parameters
    ----------
    sources : sequence of pydicom.dataset.Dataset
        Source image headers (evidence; the first supplies patient and study).
    segmentation : pydicom.dataset.Dataset
        The SEG built by :func:`dicom_node.writers.seg.build_segmentation`.
    spec : ModelSpec
        The model's spec; segment ``n`` is ``spec.labels[n - 1]``.
    uids : ResultUids
        The result UIDs (SR series/instance, tracking UIDs).
    volumes_ml : sequence of float
        Volume of each segment in mL (:func:`segment_volumes_ml`).
    options : WriterOptions, optional
        Series number/description, equipment, node name, UID root.
    model_sha256, parameters
        Recorded in each group's Algorithm Identification (TID 4019).

    Returns
    -------
    highdicom.sr.Comprehensive3DSR

    Raises
    ------
    WriterError
        The counts disagree, or highdicom rejects the content.
    """
    options = options or WriterOptions()
    if len(volumes_ml) != len(spec.labels) or len(segmentation.SegmentSequence) != len(spec.labels):
        raise WriterError(
            f"{len(spec.labels)} label(s), {len(segmentation.SegmentSequence)} SEG segment(s), {len(volumes_ml)} volume(s)"
        )
    with wrap_errors(f"model {spec.name!r}: cannot build the segmentation report"):
        algorithm = _algorithm(spec, model_sha256, parameters)
        series = hd.sr.SourceSeriesForSegmentation(str(sources[0].SeriesInstanceUID))
        groups = []
        for number, (label, volume) in enumerate(zip(spec.labels, volumes_ml, strict=False), start=1):
            segment = hd.sr.ReferencedSegment(
                sop_class_uid=segmentation.SOPClassUID,
                sop_instance_uid=segmentation.SOPInstanceUID,
                segment_number=number,
                source_series=series,
            )
            # The group's Algorithm Identification covers its measurements; repeating it per NUM only adds bulk.
            measurement = hd.sr.Measurement(name=codes.SCT.Volume, value=float(volume), unit=UNIT_ML)
            groups.append(
                hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid(uids, label.channel), identifier=label.name),
                    referenced_segment=segment,
                    finding_type=spec_code(label.type),
                    finding_category=spec_code(label.category),
                    algorithm_id=algorithm,
                    measurements=[measurement],
                )
            )
        sr = _document([*sources, segmentation], groups, spec, uids, options)
    log.info("segmentation report built model=%s version=%s groups=%d", spec.name, spec.version, len(groups))
    return sr


def _present(spec: ModelSpec, result: np.ndarray, label: Label) -> bool:
    """Whether the model's decision marks ``label`` on any classified image."""
    if spec.postprocessing.decision == "argmax":
        return bool(np.any(np.asarray(result) == label.channel))
    arr = np.asarray(result)
    return bool(np.any(arr[:, label.channel])) if arr.ndim == 2 else bool(np.any(arr))


def _probability_measurements(probabilities: np.ndarray, label: Label, images: Sequence[Dataset] | None) -> list[hd.sr.Measurement]:
    out = []
    for k in range(probabilities.shape[0]):
        refs = None
        if images is not None:
            refs = [hd.sr.SourceImageForMeasurement(str(images[k].SOPClassUID), str(images[k].SOPInstanceUID))]
        value = float(probabilities[k, label.channel])
        out.append(
            hd.sr.Measurement(name=codes.DCM.Probability, value=value, unit=UNIT_PROBABILITY, referenced_images=refs)
        )
    return out


def build_classification_report(
    sources: Sequence[Dataset],
    probabilities: np.ndarray,
    result: np.ndarray,
    spec: ModelSpec,
    uids: ResultUids,
    options: WriterOptions | None = None,
    *,
    threshold: float | None = None,
    model_sha256: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 report of a classification: one TID 1501 group per label.

    Parameters
    ----------
    sources : sequence of pydicom.dataset.Dataset
        Headers of the classified images, one per row of ``probabilities``
        (in the same order); or the whole series when the model gave one row
        for it (then the measurements reference no single image).
    probabilities : numpy.ndarray
        ``(images, channels)`` activated outputs.
    result : numpy.ndarray
        The decision: ``(images,)`` class indices (argmax) or ``(images, channels)`` 0/1 (threshold).
    spec : ModelSpec
        The model's spec (labels with finding category and type codes).
    uids : ResultUids
        The result UIDs.
    options : WriterOptions, optional
        Series number/description, equipment, node name, UID root.
    threshold : float, optional
        The threshold the decision used (recorded as "Threshold Value"); ``None`` for argmax.
    model_sha256, parameters
        Recorded in each group's Algorithm Identification (TID 4019).

    Returns
    -------
    highdicom.sr.Comprehensive3DSR

    Raises
    ------
    WriterError
        Shapes disagree, the spec has no labels, or highdicom rejects the content.
    """
    options = options or WriterOptions()
    probs = np.asarray(probabilities, dtype=np.float64)
    if not spec.labels:
        raise WriterError(f"model {spec.name!r} declares no labels: nothing to report")
    if probs.ndim != 2 or max(label.channel for label in spec.labels) >= probs.shape[1]:
        raise WriterError(f"probabilities must be (images, channels) covering every label channel, got {probs.shape}")
    if probs.shape[0] == len(sources):
        images: Sequence[Dataset] | None = sources
    elif probs.shape[0] == 1:
        images = None
    else:
        raise WriterError(f"{probs.shape[0]} probability row(s) for {len(sources)} source image(s)")
    with wrap_errors(f"model {spec.name!r}: cannot build the classification report"):
        algorithm = _algorithm(spec, model_sha256, parameters)
        groups = [_classification_group(spec, uids, label, probs, result, images, algorithm, threshold) for label in spec.labels]
        sr = _document(sources, groups, spec, uids, options)
    log.info("classification report built model=%s version=%s groups=%d", spec.name, spec.version, len(groups))
    return sr


def _classification_group(
    spec: ModelSpec,
    uids: ResultUids,
    label: Label,
    probs: np.ndarray,
    result: np.ndarray,
    images: Sequence[Dataset] | None,
    algorithm: hd.sr.AlgorithmIdentification,
    threshold: float | None,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    measurements = _probability_measurements(probs, label, images)
    if threshold is not None:
        measurements.append(hd.sr.Measurement(name=codes.DCM.ThresholdValue, value=float(threshold), unit=UNIT_PROBABILITY))
    finding = spec_code(label.type)
    presence = codes.SCT.Present if _present(spec, result, label) else codes.SCT.Absent
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uids.derive("finding", label.channel), identifier=label.name),
        finding_type=finding,
        finding_category=spec_code(label.category),
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=finding, value=presence)],
    )
