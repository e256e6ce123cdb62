"""TID 1500 SR writer: segmentation volumes (TID 1411) and classifications (TID 1501), read back."""

from __future__ import annotations

import io
from collections.abc import Iterator

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage

from dicom_node.errors import WriterError
from dicom_node.writers import WriterOptions, build_results, derive_uid, result_uids, select_sources
from dicom_node.writers.common import to_bytes
from dicom_node.writers.readback import check_report
from dicom_node.writers.sr import build_classification_report
from inference.predictor import Prediction
from inference.spec import Postprocessing
from tests.writer_fixtures import STORE, Series, predicted_series, sha256_of


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Series]:
    yield predicted_series(tmp_path_factory.mktemp("ct"), "writers-sr", ("ct-lungs", "random-cnn"))


def _report(data: bytes) -> tuple[Dataset, hd.sr.MeasurementReport]:
    ds = pydicom.dcmread(io.BytesIO(data))
    return ds, hd.sr.MeasurementReport.from_sequence(hd.sr.Comprehensive3DSR.from_dataset(ds).content)


def _observer(ds: Dataset) -> dict[str, str]:
    """Observation context items at the root (TID 1002/1004), by concept meaning."""
    out = {}
    for item in ds.ContentSequence:
        if item.RelationshipType == "HAS OBS CONTEXT":
            name = item.ConceptNameCodeSequence[0].CodeMeaning
            out[name] = str(item.get("TextValue") or item.get("UID") or item.ConceptCodeSequence[0].CodeMeaning)
    return out


def test_segmentation_report_references_segments_with_volumes(series: Series) -> None:
    entry = STORE.get("ct-lungs")
    prediction = series.predictions["ct-lungs"]
    objects = build_results(series.headers, series.volume, entry.spec, prediction, model_sha256=entry.onnx_sha256())
    assert objects.seg is not None and objects.sr is not None
    seg = pydicom.dcmread(io.BytesIO(objects.seg))
    ds, report = _report(objects.sr)
    assert ds.SOPClassUID == Comprehensive3DSRStorage and ds.Modality == "SR" and ds.SeriesNumber == 9021
    assert ds.SeriesDescription == "ct-lungs 1.0.0 AI measurement report"
    assert ds.SOPInstanceUID == objects.uids.sr_sop_instance_uid and ds.StudyInstanceUID == series.volume.study_instance_uid
    assert (ds.CompletionFlag, ds.VerificationFlag, ds.PreliminaryFlag) == ("COMPLETE", "UNVERIFIED", "PRELIMINARY")
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    evidence = {
        str(r.ReferencedSOPInstanceUID)
        for s in ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence for r in s.ReferencedSOPSequence
    }
    assert evidence == {seg.SOPInstanceUID, *series.volume.sop_instance_uids}
    observer = _observer(ds)
    assert observer["Observer Type"] == "Device" and observer["Device Observer Name"] == "dicom-node"
    assert observer["Device Observer Model Name"] == "ct-lungs 1.0.0"
    assert observer["Device Observer UID"] == derive_uid("2.25.", "device", "dicom-node")
    (group,) = report.get_volumetric_roi_measurement_groups()
    ref = group.referenced_segment
    assert ref is not None and ref[0].referenced_sop_instance_uid == seg.SOPInstanceUID
    assert ref[0].ReferencedSOPSequence[0].ReferencedSegmentNumber == 1
    assert group.tracking_uid == seg.SegmentSequence[0].TrackingUID
    assert group.finding_type.value == "39607008" and group.finding_category.value == "123037004"
    (volume,) = group.get_measurements(name=codes.SCT.Volume)
    voxels = int(prediction.result.sum())
    assert voxels > 0 and volume.value == pytest.approx(voxels * np.prod(series.volume.spacing) / 1000.0)
    assert (volume.unit.value, volume.unit.scheme_designator) == ("mL", "UCUM")


def _groups(report: hd.sr.MeasurementReport) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    return report.get_image_measurement_groups()


def _evaluation(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> hd.sr.CodedConcept:
    """Value of the "<finding type> = Present | Absent" evaluation (the other CODE items are the finding and its category)."""
    (item,) = [e for e in group.get_qualitative_evaluations() if e.name == group.finding_type]
    return item.value


def test_classification_report_probabilities_per_image(series: Series) -> None:
    entry = STORE.get("random-cnn")
    prediction = series.predictions["random-cnn"]
    objects = build_results(series.headers, series.volume, entry.spec, prediction, model_sha256=entry.onnx_sha256())
    assert objects.seg is None and objects.sr is not None
    ds, report = _report(objects.sr)
    groups = _groups(report)
    assert [g.tracking_identifier for g in groups] == ["Class A", "Class B", "Class C"]
    chosen = set(prediction.result.tolist())
    for channel, group in enumerate(groups):
        probs = group.get_measurements(name=codes.DCM.Probability)
        assert [m.value for m in probs] == pytest.approx(prediction.probabilities[:, channel].tolist(), abs=1e-6)
        assert (probs[0].unit.value, probs[0].unit.scheme_designator) == ("{probability}", "UCUM")
        images = [m.referenced_images[0].referenced_sop_instance_uid for m in probs]
        assert images == series.volume.sop_instance_uids
        assert group.get_measurements(name=codes.DCM.ThresholdValue) == []  # argmax decides without a threshold
        assert _evaluation(group) == (codes.SCT.Present if channel in chosen else codes.SCT.Absent)


def test_classification_report_threshold_decision(series: Series) -> None:
    entry = STORE.get("random-cnn")
    spec = entry.spec.model_copy(update={"postprocessing": Postprocessing(activation="sigmoid", decision="threshold", threshold=0.4)})
    probs = np.array([[0.1, 0.5, 0.2]] * 3 + [[0.05, 0.3, 0.39]] * 9, dtype=np.float32)
    prediction = Prediction({}, probs, (probs > 0.45).view(np.uint8), list(range(12)), {"threshold": 0.45})
    objects = build_results(series.headers, series.volume, spec, prediction, model_sha256=sha256_of(spec.name))
    assert objects.sr is not None
    groups = _groups(_report(objects.sr)[1])
    for group, present in zip(groups, (False, True, False), strict=False):
        (threshold,) = group.get_measurements(name=codes.DCM.ThresholdValue)
        assert threshold.value == pytest.approx(0.45)  # the caller's override, not the spec's 0.4
        assert _evaluation(group) == (codes.SCT.Present if present else codes.SCT.Absent)


def test_series_level_classification_references_no_single_image(series: Series) -> None:
    spec = STORE.get("random-cnn").spec
    sources, _ = select_sources(series.headers, series.volume, list(range(12)))
    uids = result_uids("2.25.", series.volume.series_instance_uid, spec.name, spec.version)
    probs = np.array([[0.2, 0.7, 0.1]])
    sr = build_classification_report(sources, probs, np.array([1]), spec, uids)
    data = to_bytes(sr)
    check_report(data, sources, uids, 3, n_probabilities=1)
    (prob,) = _groups(_report(data)[1])[1].get_measurements(name=codes.DCM.Probability)
    assert prob.value == pytest.approx(0.7) and not prob.referenced_images
    with pytest.raises(WriterError, match="probability row"):
        build_classification_report(sources, np.zeros((5, 3)), np.zeros(5, dtype=int), spec, uids)
    with pytest.raises(WriterError, match="channels"):
        build_classification_report(sources, np.zeros((12, 2)), np.zeros(12, dtype=int), spec, uids)


def test_report_readback_detects_mismatch(series: Series) -> None:
    entry = STORE.get("random-cnn")
    objects = build_results(series.headers, series.volume, entry.spec, series.predictions["random-cnn"], model_sha256=entry.onnx_sha256())
    assert objects.sr is not None
    sources, _ = select_sources(series.headers, series.volume, list(range(12)))
    with pytest.raises(WriterError, match="TID 1501 group"):
        check_report(objects.sr, sources, objects.uids, 4)
    with pytest.raises(WriterError, match="probabilities"):
        check_report(objects.sr, sources, objects.uids, 3, n_probabilities=11)
    other = result_uids("2.25.", "1.2.3", entry.spec.name, entry.spec.version)
    with pytest.raises(WriterError, match="SR SOP Instance UID"):
        check_report(objects.sr, sources, other, 3)


def test_configured_series_and_equipment(series: Series) -> None:
    entry = STORE.get("random-cnn")
    options = WriterOptions(
        sr_series_number=77, sr_series_description="{model} v{version} report", manufacturer="Example Hospital AI",
        institution_name="Example Hospital", node_name="node-a", uid_root="1.2.826.0.1.3680043.10.999",
    )
    objects = build_results(series.headers, series.volume, entry.spec, series.predictions["random-cnn"], options,
                            model_sha256=entry.onnx_sha256())
    assert objects.sr is not None
    ds = pydicom.dcmread(io.BytesIO(objects.sr))
    assert ds.SeriesNumber == 77 and ds.SeriesDescription == "random-cnn v0.0.1 report"
    assert ds.Manufacturer == "Example Hospital AI" and ds.InstitutionName == "Example Hospital"
    assert ds.SOPInstanceUID.startswith("1.2.826.0.1.3680043.10.999.") and len(ds.SOPInstanceUID) <= 64
    assert _observer(ds)["Device Observer UID"] == derive_uid("1.2.826.0.1.3680043.10.999.", "device", "node-a")


def test_embedding_models_write_no_object(series: Series) -> None:
    spec = STORE.get("random-cnn").spec.model_copy(update={"task": "embedding"})
    objects = build_results(series.headers, series.volume, spec, series.predictions["random-cnn"], model_sha256=sha256_of(spec.name))
    assert objects.seg is None and objects.sr is None
