"""``dicom-node infer`` on a synthetic CT series written as real DICOM files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from models.reference import body_mask, dice, lungs_mask

from dicom_node.cli import main
from dicom_node.synthetic import SeriesSpec, write_ct_series

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("series")
    write_ct_series(folder, SeriesSpec(slices=12, rows=96, columns=80, seed="infer-cli"))
    return folder


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[inference]\nmodels_dir = "{ROOT / "engines"}"\nbackends = ["onnxruntime"]\n[pixels]\ndecode_workers = 1\n')
    return cfg


def _hu(series: Path) -> np.ndarray:
    from dicom_node.pixels.volume import load_series

    return load_series(sorted(series.iterdir()), workers=0, gpu="cpu").array


@pytest.mark.parametrize(("model", "reference"), [("ct-body", body_mask), ("ct-lungs", lungs_mask)])
def test_infer_writes_mask_matching_numpy_reference(series: Path, tmp_path: Path, model: str, reference: object) -> None:
    out = tmp_path / "out"
    rc = main(["--config", str(_config(tmp_path)), "infer", "--model", model, str(series), "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    result = np.load(out / "result.npy")
    raw = np.load(out / summary["outputs"][{"ct-body": "body", "ct-lungs": "lungs"}[model]])
    assert result.shape == (12, 1, 96, 80) and raw.shape == (12, 1, 96, 80)
    ref = reference(_hu(series))  # type: ignore[operator]
    assert ref.sum() > 100
    assert dice(result[:, 0], ref) >= 0.99
    assert summary["model"]["name"] == model and summary["backend"].startswith("onnxruntime")
    assert summary["series"]["modality"] == "CT" and len(summary["series"]["sop_instance_uids"]) == 12
    assert summary["labels"][0]["voxels"] == int(result.sum())
    assert summary["batches"]["items"] == 12


def test_infer_parameters_and_errors(series: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(_config(tmp_path))
    out = tmp_path / "sub"
    argv = ["--config", cfg, "infer", "--model", "ct-body", str(series), "--out", str(out), "--param", "slice_idx=[0,5]", "--param", "threshold=0.5"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["slice_indices"] == [0, 5] and summary["parameters"]["threshold"] == 0.5
    assert np.load(out / "result.npy").shape[0] == 2
    capsys.readouterr()
    assert main(["--config", cfg, "infer", "--model", "ct-body", str(series), "--out", str(out), "--param", "threshold=7"]) == 1
    assert "outside" in capsys.readouterr().err
    assert main(["--config", cfg, "infer", "--model", "nope", str(series), "--out", str(out)]) == 1
    assert "no model named 'nope'" in capsys.readouterr().err
    assert main(["--config", cfg, "infer", "--model", "ct-body", str(tmp_path / "missing"), "--out", str(out)]) == 2


def test_infer_writes_seg_and_sr(series: Path, tmp_path: Path) -> None:
    """Segmentation models write seg.dcm + sr.dcm under the configured UID root; both reference the series."""
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text() + '[results]\nuid_root = "1.2.826.0.1.3680043.10.543."\nseg_series_number = 301\n')
    out = tmp_path / "out"
    assert main(["--config", str(cfg), "infer", "--model", "ct-lungs", str(series), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs"]["seg"] == "seg.dcm" and summary["outputs"]["sr"] == "sr.dcm"
    seg, sr = pydicom.dcmread(out / "seg.dcm"), pydicom.dcmread(out / "sr.dcm")
    source_series = summary["series"]["series_instance_uid"]
    assert seg.Modality == "SEG" and seg.SeriesNumber == 301 and seg.SOPInstanceUID.startswith("1.2.826.0.1.3680043.10.543.")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source_series
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == summary["series"]["study_instance_uid"]
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "ct-lungs" and "model_sha256=" in algo.AlgorithmParameters
    assert sr.Modality == "SR" and sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    # A re-run replaces rather than duplicates: the same UIDs again.
    again = tmp_path / "again"
    assert main(["--config", str(cfg), "infer", "--model", "ct-lungs", str(series), "--out", str(again)]) == 0
    assert pydicom.dcmread(again / "seg.dcm").SOPInstanceUID == seg.SOPInstanceUID
    assert pydicom.dcmread(again / "sr.dcm").SOPInstanceUID == sr.SOPInstanceUID


def test_infer_classifier_writes_sr_only(series: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[inference]\nmodels_dir = "{ROOT / "tests" / "models"}"\nbackends = ["onnxruntime"]\n[pixels]\ndecode_workers = 1\n')
    out = tmp_path / "out"
    assert main(["--config", str(cfg), "infer", "--model", "random-cnn", str(series), "--out", str(out)]) == 0
    assert (out / "sr.dcm").is_file() and not (out / "seg.dcm").exists()
    sr = pydicom.dcmread(out / "sr.dcm")
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
