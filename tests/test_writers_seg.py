"""SEG writer: the bundled models' masks on a synthetic CT series -> DICOM SEG -> read back and compared."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from models.reference import body_mask, dice, lungs_mask
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import SegmentationStorage

from dicom_node.errors import WriterError
from dicom_node.pixels.volume import load_series
from dicom_node.synthetic import SeriesSpec, ct_datasets
from dicom_node.writers import WriterOptions, build_results, read_headers, result_uids, select_sources
from dicom_node.writers.common import to_bytes
from dicom_node.writers.readback import check_segmentation
from dicom_node.writers.seg import build_segmentation, stack_segments
from inference.predictor import Prediction
from inference.spec import Code, Label
from inference.store import ModelEntry
from tests.writer_fixtures import STORE, Series, predicted_series, sha256_of


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Series]:
    yield predicted_series(tmp_path_factory.mktemp("ct"), "writers-seg", ("ct-body", "ct-lungs"))


def _frames_by_source(ds: Dataset) -> dict[tuple[str, int], np.ndarray]:
    """Decode a SEG without highdicom: (source SOP Instance UID, segment number) -> frame."""
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    shared = ds.SharedFunctionalGroupsSequence[0]
    out = {}
    for i, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        src = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        seg_id = (frame if "SegmentIdentificationSequence" in frame else shared).SegmentIdentificationSequence[0]
        out[(str(src), int(seg_id.ReferencedSegmentNumber))] = pixels[i]
    return out


@pytest.mark.parametrize(("model", "reference"), [("ct-body", body_mask), ("ct-lungs", lungs_mask)])
def test_seg_round_trip_matches_model_mask(series: Series, model: str, reference: Any) -> None:
    entry = STORE.get(model)
    prediction = series.predictions[model]
    objects = build_results(series.headers, series.volume, entry.spec, prediction, model_sha256=entry.onnx_sha256())
    assert objects.seg is not None and objects.sr is not None
    ds = pydicom.dcmread(io.BytesIO(objects.seg))
    vol = series.volume
    assert ds.SOPClassUID == SegmentationStorage and ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == vol.study_instance_uid and ds.FrameOfReferenceUID == vol.frame_of_reference_uid
    assert ds.SeriesInstanceUID == objects.uids.seg_series_instance_uid != vol.series_instance_uid
    assert ds.SeriesNumber == entry.spec.series_number and ds.Modality == "SEG"
    assert ds.SeriesDescription == f"{model} 1.0.0 AI segmentation"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == vol.series_instance_uid
    assert len(ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 12
    mask = prediction.result[:, 0].astype(bool)
    assert dice(mask, reference(vol.array)) >= 0.99 and mask.any()
    frames = _frames_by_source(ds)
    nonempty = [k for k in range(12) if mask[k].any()]
    assert int(ds.NumberOfFrames) == len(nonempty) == len(frames)
    for k in range(12):
        frame = frames.get((vol.sop_instance_uids[k], 1))
        assert (frame is None) == (not mask[k].any())
        if frame is not None:
            assert np.array_equal(frame.astype(bool), mask[k])
    # A second reader (highdicom) agrees, slice by slice in volume order.
    seg = hd.seg.segread(io.BytesIO(objects.seg))
    decoded = seg.get_pixels_by_source_instance(vol.sop_instance_uids, segment_numbers=[1], assert_missing_frames_are_empty=True)
    assert np.array_equal(decoded[..., 0].astype(bool), mask)
    assert objects.volumes_ml[0] == pytest.approx(mask.sum() * np.prod(vol.spacing) / 1000.0)


def test_segment_description_codes_colour_and_algorithm(series: Series) -> None:
    entry = STORE.get("ct-lungs")
    objects = build_results(series.headers, series.volume, entry.spec, series.predictions["ct-lungs"], model_sha256=entry.onnx_sha256())
    assert objects.seg is not None
    item = pydicom.dcmread(io.BytesIO(objects.seg)).SegmentSequence[0]
    label = entry.spec.labels[0]
    assert item.SegmentNumber == 1 and item.SegmentLabel == label.name == "Lungs and airways"
    assert item.SegmentAlgorithmType == "AUTOMATIC"
    cat, typ = item.SegmentedPropertyCategoryCodeSequence[0], item.SegmentedPropertyTypeCodeSequence[0]
    assert (cat.CodeValue, cat.CodingSchemeDesignator) == ("123037004", "SCT")
    assert (typ.CodeValue, typ.CodingSchemeDesignator, typ.CodeMeaning) == ("39607008", "SCT", "Lung")
    assert tuple(item.RecommendedDisplayCIELabValue) == hd.color.CIELabColor.from_rgb(*label.color).value
    assert hd.color.CIELabColor.from_dicom_value(tuple(item.RecommendedDisplayCIELabValue)).to_rgb() == pytest.approx(label.color, abs=1)
    algo = item.SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("ct-lungs", "1.0.0")
    assert algo.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # Artificial Intelligence, CID 7162
    assert f"model_sha256={entry.onnx_sha256()}" in algo.AlgorithmParameters and "threshold=0.25" in algo.AlgorithmParameters
    assert item.TrackingID == label.name and item.TrackingUID == objects.uids.derive("segment", label.channel)


def _two_label_spec(entry: ModelEntry) -> Any:
    lungs = Label(
        channel=1, name="Lungs", category=Code(value="123037004", meaning="Anatomical Structure"),
        type=Code(value="39607008", meaning="Lung"), color=(128, 174, 255),
    )
    return entry.spec.model_copy(update={"labels": [entry.spec.labels[0], lungs]})


def test_two_segments_omit_empty_frames_per_segment(series: Series) -> None:
    spec = _two_label_spec(STORE.get("ct-body"))
    body, lungs = body_mask(series.volume.array), lungs_mask(series.volume.array)
    body[:4] = False  # segment 1 empty on the first four slices, segment 2 still present there
    result = np.stack([body, lungs], axis=1).astype(np.uint8)
    prediction = Prediction({}, result.astype(np.float32), result, list(range(12)), {"threshold": 0.5})
    objects = build_results(series.headers, series.volume, spec, prediction, model_sha256=sha256_of(spec.name))
    assert objects.seg is not None
    ds = pydicom.dcmread(io.BytesIO(objects.seg))
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["Body", "Lungs"]
    frames = _frames_by_source(ds)
    assert int(ds.NumberOfFrames) == int(body.any(axis=(1, 2)).sum() + lungs.any(axis=(1, 2)).sum())
    assert (series.volume.sop_instance_uids[0], 1) not in frames and (series.volume.sop_instance_uids[0], 2) in frames
    assert objects.volumes_ml == pytest.approx([m.sum() * np.prod(series.volume.spacing) / 1000 for m in (body, lungs)], rel=1e-6)


def test_label_map_input_and_channel_order(series: Series) -> None:
    spec = _two_label_spec(STORE.get("ct-body"))
    body, lungs = body_mask(series.volume.array), lungs_mask(series.volume.array)
    label_map = np.where(lungs, 1, np.where(body, 0, 7)).astype(np.int64)  # argmax-style: values are channels
    stacked = stack_segments(spec, label_map)
    assert stacked.shape == (12, 64, 64, 2) and stacked.dtype == bool
    assert np.array_equal(stacked[..., 0], body & ~lungs) and np.array_equal(stacked[..., 1], lungs)


def test_empty_result_keeps_all_frames(series: Series) -> None:
    entry = STORE.get("ct-body")
    empty = np.zeros((12, 1, 64, 64), dtype=np.uint8)
    objects = build_results(series.headers, series.volume, entry.spec, Prediction({}, empty.astype(np.float32), empty, list(range(12)), {}),
                            model_sha256=entry.onnx_sha256())
    assert objects.seg is not None
    ds = pydicom.dcmread(io.BytesIO(objects.seg))
    assert int(ds.NumberOfFrames) == 12 and not ds.pixel_array.any()
    assert objects.volumes_ml == [0.0]


def test_fractional_stores_quantised_probabilities(series: Series) -> None:
    entry = STORE.get("ct-body")
    rng = np.random.default_rng(1)
    probs = (rng.random((12, 1, 64, 64)) * (body_mask(series.volume.array)[:, None])).astype(np.float32)
    prediction = Prediction({}, probs, (probs > 0.25).view(np.uint8), list(range(12)), {"threshold": 0.25})
    objects = build_results(series.headers, series.volume, entry.spec, prediction, WriterOptions(segmentation_type="FRACTIONAL"),
                            model_sha256=entry.onnx_sha256())
    assert objects.seg is not None
    ds = pydicom.dcmread(io.BytesIO(objects.seg))
    assert ds.SegmentationType == "FRACTIONAL" and ds.SegmentationFractionalType == "PROBABILITY"
    assert ds.MaximumFractionalValue == 255
    frames = _frames_by_source(ds)
    k = int(np.argmax(probs.reshape(12, -1).max(axis=1)))
    stored = frames[(series.volume.sop_instance_uids[k], 1)]
    assert np.array_equal(stored, np.around(probs[k, 0] * 255).astype(np.uint8))
    assert objects.volumes_ml[0] == pytest.approx((probs > 0.25).sum() * np.prod(series.volume.spacing) / 1000)


def test_slice_subset_references_only_analysed_slices(series: Series) -> None:
    entry = STORE.get("ct-body")
    full = series.predictions["ct-body"]
    prediction = replace(full, result=full.result[[5, 0]], probabilities=full.probabilities[[5, 0]], slice_indices=[5, 0])
    objects = build_results(series.headers, series.volume, entry.spec, prediction, model_sha256=entry.onnx_sha256())
    assert objects.seg is not None
    ds = pydicom.dcmread(io.BytesIO(objects.seg))
    refs = {str(i.ReferencedSOPInstanceUID) for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == {series.volume.sop_instance_uids[5], series.volume.sop_instance_uids[0]}
    frames = _frames_by_source(ds)
    assert np.array_equal(frames[(series.volume.sop_instance_uids[5], 1)].astype(bool), full.result[5, 0].astype(bool))


def test_rerun_gives_same_uids_new_version_new_uids(series: Series) -> None:
    entry = STORE.get("ct-body")
    prediction = series.predictions["ct-body"]
    sha = entry.onnx_sha256()
    first = build_results(series.headers, series.volume, entry.spec, prediction, model_sha256=sha)
    again = build_results(series.headers, series.volume, entry.spec, prediction, model_sha256=sha)
    bumped = build_results(series.headers, series.volume, entry.spec.model_copy(update={"version": "1.0.1"}), prediction, model_sha256=sha)
    assert first.seg and again.seg and bumped.seg
    a, b, c = (pydicom.dcmread(io.BytesIO(o.seg)) for o in (first, again, bumped))
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    assert a.SOPInstanceUID != c.SOPInstanceUID and a.SeriesInstanceUID != c.SeriesInstanceUID
    assert a.StudyInstanceUID == c.StudyInstanceUID == series.volume.study_instance_uid


def test_readback_detects_a_changed_mask_and_wrong_uids(series: Series) -> None:
    entry = STORE.get("ct-body")
    sources, _ = select_sources(series.headers, series.volume, list(range(12)))
    masks = stack_segments(entry.spec, series.predictions["ct-body"].result)
    uids = result_uids("2.25.", series.volume.series_instance_uid, "ct-body", "1.0.0")
    data = to_bytes(build_segmentation(sources, masks, entry.spec, uids))
    check_segmentation(data, sources, masks, uids)
    changed = masks.copy()
    k = int(np.argmax(masks.reshape(12, -1).any(axis=1)))
    changed[k, 32, 32, 0] = not changed[k, 32, 32, 0]
    with pytest.raises(WriterError, match="differs from the mask"):
        check_segmentation(data, sources, changed, uids)
    other = result_uids("2.25.", series.volume.series_instance_uid, "ct-body", "2.0.0")
    with pytest.raises(WriterError, match="SOP Instance UID"):
        check_segmentation(data, sources, masks, other)
    with pytest.raises(WriterError, match="cannot be read back"):
        check_segmentation(b"not dicom", sources, masks, uids)


def test_bad_inputs_raise_writer_error(series: Series) -> None:
    entry = STORE.get("ct-body")
    sources, _ = select_sources(series.headers, series.volume, list(range(12)))
    uids = result_uids("2.25.", series.volume.series_instance_uid, "ct-body", "1.0.0")
    masks = np.zeros((12, 64, 64, 1), dtype=bool)
    with pytest.raises(WriterError, match="mask slice"):
        build_segmentation(sources[:5], masks, entry.spec, uids)
    with pytest.raises(WriterError, match="source images 64x64"):
        build_segmentation(sources, np.zeros((12, 32, 32, 1), dtype=bool), entry.spec, uids)
    with pytest.raises(WriterError, match="needs decided masks"):
        build_segmentation(sources, masks.astype(np.float32), entry.spec, uids)
    with pytest.raises(WriterError, match="channel 3"):
        stack_segments(entry.spec.model_copy(update={"labels": [replace_channel(entry.spec.labels[0], 3)]}), np.zeros((12, 1, 64, 64)))


def replace_channel(label: Label, channel: int) -> Label:
    """The same label on another output channel."""
    return label.model_copy(update={"channel": channel})


def _enhanced_ct(path: Path, order: list[int]) -> None:
    """An Enhanced CT image (PS3.3 A.38) of five 16x16 synthetic slices, stored in frame ``order``."""
    slices = list(ct_datasets(SeriesSpec(slices=5, rows=16, columns=16, seed="writers-enhanced")))
    ds = copy.deepcopy(slices[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.NumberOfFrames = len(order)
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept"):
        del ds[kw]
    ori, meas, pvt, shared = Dataset(), Dataset(), Dataset(), Dataset()
    ori.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    meas.PixelSpacing, meas.SliceThickness = [0.5, 0.5], 1.0
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 1, -1024, "HU"
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = Sequence([ori]), Sequence([meas])
    shared.PixelValueTransformationSequence = Sequence([pvt])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in order:
        item, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = [0.0, 0.0, 3.0 * k]
        item.PlanePositionSequence = Sequence([pos])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = b"".join(slices[k].PixelData for k in order)
    ds.save_as(path, enforce_file_format=True)


def test_enhanced_multiframe_source_maps_frames(tmp_path: Path) -> None:
    path = tmp_path / "enhanced.dcm"
    _enhanced_ct(path, [3, 0, 4, 1, 2])
    volume = load_series([path], workers=0, gpu="cpu")
    assert volume.source_frames == [2, 4, 5, 1, 3]
    mask = np.zeros((5, 1, 16, 16), dtype=np.uint8)
    mask[1, 0, 4:8, 4:8] = 1  # volume slice 1 is frame 4 of the source
    prediction = Prediction({}, mask.astype(np.float32), mask, list(range(5)), {})
    objects = build_results(read_headers([path]), volume, STORE.get("ct-body").spec, prediction, model_sha256=sha256_of("ct-body"))
    assert objects.seg is not None
    ds = pydicom.dcmread(io.BytesIO(objects.seg))
    assert int(ds.NumberOfFrames) == 1
    ref = ds.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == volume.sop_instance_uids[0] and int(ref.ReferencedFrameNumber) == 4
    assert np.array_equal(ds.pixel_array.astype(bool), mask[1, 0].astype(bool))


def test_provenance_other_than_a_digest_is_refused(series: Series) -> None:
    """A bound method's repr (with the server's model path) once went to PACS as the digest."""
    entry = STORE.get("ct-body")
    prediction = series.predictions["ct-body"]
    for bad in (repr(entry.onnx_sha256), entry.onnx_sha256().upper(), "", entry.onnx_sha256()[:40]):
        with pytest.raises(WriterError, match="model_sha256"):
            build_results(series.headers, series.volume, entry.spec, prediction, model_sha256=bad)


def test_two_models_on_one_series_write_distinguishable_series(series: Series) -> None:
    """ct-body and ct-lungs once both wrote SEG 9001 "AI segmentation" (SR 9002 alike)."""
    written = {}
    for model in ("ct-body", "ct-lungs"):
        entry = STORE.get(model)
        objects = build_results(series.headers, series.volume, entry.spec, series.predictions[model],
                                model_sha256=entry.onnx_sha256())
        assert objects.seg is not None and objects.sr is not None
        for kind, data in (("SEG", objects.seg), ("SR", objects.sr)):
            ds = pydicom.dcmread(io.BytesIO(data))
            written[model, kind] = (int(ds.SeriesNumber), str(ds.SeriesDescription))
            assert model in ds.SeriesDescription and "1.0.0" in ds.SeriesDescription and len(ds.SeriesDescription) <= 64
    numbers = [number for number, _ in written.values()]
    descriptions = [text for _, text in written.values()]
    assert len(set(numbers)) == 4 and len(set(descriptions)) == 4, written
