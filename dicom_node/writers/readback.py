"""Read-back checks: every written result object is parsed again and compared with its inputs.

The checks read the encoded bytes with pydicom (not the objects highdicom
built), so they catch what serialisation loses or changes. A failed check
raises :class:`~dicom_node.errors.WriterError`; nothing is delivered then.

- SEG (PS3.3 A.51): SOP Class, UIDs, study and frame of reference, number of
  segments, referenced series and instances, frame count, and that every
  decoded frame equals the input mask of the slice and segment its Derivation
  Image Sequence and Segment Identification Sequence name (C.8.20.3).
- SR (PS3.16 TID 1500): SOP Class, UIDs, study, template 1500, evidence, the
  number of measurement groups, and per group the referenced SEG segment and
  volume (TID 1411) or the probability count (TID 1501).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage

from dicom_node.errors import WriterError
from dicom_node.writers.common import THIRD_PARTY_ERRORS, from_bytes
from dicom_node.writers.seg import FRACTIONAL_MAX
from dicom_node.writers.uids import ResultUids

log = logging.getLogger(__name__)

__all__ = ["check_report", "check_segmentation"]


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise WriterError(f"read-back check failed: {message}")


def _slot_of(sources: Sequence[Dataset], n_slices: int, source_frames: Sequence[int] | None) -> dict[tuple[str, int], int]:
    """(SOP Instance UID, 1-based frame) of each mask slice -> slice index."""
    if len(sources) == 1 and source_frames is not None:
        uid = str(sources[0].SOPInstanceUID)
        return {(uid, int(f)): k for k, f in enumerate(source_frames)}
    return {(str(ds.SOPInstanceUID), 1): k for k, ds in enumerate(sources[:n_slices])}


def _functional(frame: Dataset, shared: Dataset, keyword: str) -> Dataset:
    """First item of a functional group macro, per-frame or shared (PS3.3 C.7.6.16)."""
    group = frame if keyword in frame else shared
    return group[keyword][0]


def _frame_source(frame: Dataset, shared: Dataset) -> tuple[tuple[str, int], int]:
    """The (source instance, frame) and segment number one SEG frame declares (PS3.3 C.8.20.3)."""
    ref = _functional(frame, shared, "DerivationImageSequence").SourceImageSequence[0]
    frames = ref.get("ReferencedFrameNumber", 1) or 1
    frame_no = int(frames[0]) if isinstance(frames, Sequence) and not isinstance(frames, str) else int(frames)
    segment = int(_functional(frame, shared, "SegmentIdentificationSequence").ReferencedSegmentNumber)
    return (str(ref.ReferencedSOPInstanceUID), frame_no), segment


def _check_seg_header(ds: Dataset, sources: Sequence[Dataset], n_segments: int, uids: ResultUids) -> None:
    first = sources[0]
    _expect(ds.SOPClassUID == SegmentationStorage, f"SOP Class {ds.SOPClassUID} is not Segmentation Storage")
    _expect(ds.SOPInstanceUID == uids.seg_sop_instance_uid, "SEG SOP Instance UID differs from the derived one")
    _expect(ds.SeriesInstanceUID == uids.seg_series_instance_uid, "SEG Series Instance UID differs from the derived one")
    _expect(ds.StudyInstanceUID == first.StudyInstanceUID, "SEG is not in the source study")
    if "FrameOfReferenceUID" in first:
        _expect(ds.get("FrameOfReferenceUID") == first.FrameOfReferenceUID, "SEG Frame of Reference differs from the source's")
    numbers = [int(item.SegmentNumber) for item in ds.SegmentSequence]
    _expect(numbers == list(range(1, n_segments + 1)), f"segment numbers {numbers}, expected 1..{n_segments}")
    series = {str(item.SeriesInstanceUID): item for item in ds.ReferencedSeriesSequence}
    _expect(str(first.SeriesInstanceUID) in series, "Referenced Series Sequence lacks the source series")
    referenced = {str(i.ReferencedSOPInstanceUID) for i in series[str(first.SeriesInstanceUID)].ReferencedInstanceSequence}
    _expect(referenced == {str(s.SOPInstanceUID) for s in sources}, "referenced instances differ from the source images")


def check_segmentation(
    data: bytes,
    sources: Sequence[Dataset],
    segments: np.ndarray,
    uids: ResultUids,
    source_frames: Sequence[int] | None = None,
) -> Dataset:
    """Read a written SEG back and compare it with its inputs.

    Parameters
    ----------
    data : bytes
        The Part 10 file.
    sources : sequence of pydicom.dataset.Dataset
        The source headers the SEG was built from, one per mask slice.
    segments : numpy.ndarray
        ``(slices, rows, cols, labels)`` masks (or quantised probabilities) it was built from.
    uids : ResultUids
        The UIDs it must carry.
    source_frames : sequence of int, optional
        With a multi-frame source: the 1-based frame of each mask slice.

    Returns
    -------
    pydicom.dataset.Dataset
        The dataset as read back.

    Raises
    ------
    WriterError
        Any mismatch; the message says which.
    """
    ds = from_bytes(data)
    try:
        _check_seg_header(ds, sources, segments.shape[-1], uids)
        fractional = ds.SegmentationType == "FRACTIONAL"
        expected = np.around(segments * FRACTIONAL_MAX).astype(np.uint8) if fractional else segments.astype(np.uint8)
        nonempty = {(k, s + 1) for k, s in zip(*np.nonzero(expected.reshape(expected.shape[0], -1, expected.shape[-1]).any(axis=1)), strict=False)}
        # An all-empty result keeps every frame: a SEG needs at least one (highdicom reverts on its own).
        wanted = nonempty or {(k, s + 1) for k in range(expected.shape[0]) for s in range(expected.shape[-1])}
        _expect(int(ds.NumberOfFrames) == len(wanted), f"{ds.NumberOfFrames} frame(s), expected {len(wanted)} non-empty")
        pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
        slot = _slot_of(sources, expected.shape[0], source_frames)
        seen = set()
        shared = ds.SharedFunctionalGroupsSequence[0]
        for index, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
            source, segment = _frame_source(frame, shared)
            _expect(source in slot, f"frame {index + 1} derives from an image that is not a source")
            key = (slot[source], segment)
            _expect(key in wanted and key not in seen, f"frame {index + 1} (slice {key[0]}, segment {segment}) is unexpected")
            _expect(np.array_equal(pixels[index], expected[key[0], :, :, segment - 1]), f"frame {index + 1} differs from the mask")
            seen.add(key)
    except THIRD_PARTY_ERRORS as exc:
        raise WriterError(f"read-back check failed: SEG is malformed: {exc}") from exc
    log.debug("segmentation read back frames=%d", len(seen))
    return ds


def _check_sr_header(ds: Dataset, sources: Sequence[Dataset], uids: ResultUids, segmentation: Dataset | None) -> None:
    _expect(ds.SOPClassUID == Comprehensive3DSRStorage, f"SOP Class {ds.SOPClassUID} is not Comprehensive 3D SR Storage")
    _expect(ds.SOPInstanceUID == uids.sr_sop_instance_uid, "SR SOP Instance UID differs from the derived one")
    _expect(ds.SeriesInstanceUID == uids.sr_series_instance_uid, "SR Series Instance UID differs from the derived one")
    _expect(ds.StudyInstanceUID == sources[0].StudyInstanceUID, "SR is not in the source study")
    _expect(ds.ContentTemplateSequence[0].TemplateIdentifier == "1500", "SR root is not TID 1500")
    # Hierarchical SOP Instance Reference Macro (PS3.3 Table C.17-3): study -> series -> instances.
    evidence = {
        str(ref.ReferencedSOPInstanceUID)
        for study in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    wanted = {str(s.SOPInstanceUID) for s in sources} | ({str(segmentation.SOPInstanceUID)} if segmentation is not None else set())
    _expect(wanted <= evidence, "Current Requested Procedure Evidence lacks a source image or the SEG")


def check_report(
    data: bytes,
    sources: Sequence[Dataset],
    uids: ResultUids,
    n_groups: int,
    *,
    segmentation: Dataset | None = None,
    volumes_ml: Sequence[float] | None = None,
    n_probabilities: int | None = None,
) -> Dataset:
    """Read a written SR back and compare it with its inputs.

    Parameters
    ----------
    data : bytes
        The Part 10 file.
    sources : sequence of pydicom.dataset.Dataset
        The source headers (evidence).
    uids : ResultUids
        The UIDs it must carry.
    n_groups : int
        Expected number of measurement groups (one per label).
    segmentation : pydicom.dataset.Dataset, optional
        For a segmentation report: the SEG each TID 1411 group must reference.
    volumes_ml : sequence of float, optional
        For a segmentation report: the expected volume of each segment.
    n_probabilities : int, optional
        For a classification report: probability measurements per TID 1501 group.

    Returns
    -------
    pydicom.dataset.Dataset
        The dataset as read back.

    Raises
    ------
    WriterError
        Any mismatch; the message says which.
    """
    ds = from_bytes(data)
    try:
        _check_sr_header(ds, sources, uids, segmentation)
        report = hd.sr.MeasurementReport.from_sequence(hd.sr.Comprehensive3DSR.from_dataset(ds).content)
        if segmentation is not None:
            _check_volumetric(report, segmentation, n_groups, volumes_ml)
        else:
            groups = report.get_image_measurement_groups()
            _expect(len(groups) == n_groups, f"{len(groups)} TID 1501 group(s), expected {n_groups}")
            for group in groups:
                count = len(group.get_measurements(name=codes.DCM.Probability))
                _expect(n_probabilities is None or count == n_probabilities, f"{count} probabilities, expected {n_probabilities}")
    except THIRD_PARTY_ERRORS as exc:
        raise WriterError(f"read-back check failed: SR is malformed: {exc}") from exc
    return ds


def _check_volumetric(
    report: hd.sr.MeasurementReport, segmentation: Dataset, n_groups: int, volumes_ml: Sequence[float] | None
) -> None:
    groups = report.get_volumetric_roi_measurement_groups()
    _expect(len(groups) == n_groups, f"{len(groups)} TID 1411 group(s), expected {n_groups}")
    for number, group in enumerate(groups, start=1):
        segment = group.referenced_segment
        _expect(segment is not None, f"group {number} references no segment")
        item = segment[0]  # type: ignore[index]
        _expect(item.referenced_sop_instance_uid == segmentation.SOPInstanceUID, f"group {number} references another SEG")
        _expect(int(item.ReferencedSOPSequence[0].ReferencedSegmentNumber) == number, f"group {number} references another segment")
        volumes = group.get_measurements(name=codes.SCT.Volume)
        _expect(len(volumes) == 1, f"group {number} has {len(volumes)} volume measurement(s)")
        if volumes_ml is not None:
            _expect(bool(np.isclose(volumes[0].value, volumes_ml[number - 1], rtol=1e-6, atol=1e-9)), f"group {number} volume differs")
