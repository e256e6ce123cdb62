"""Every kind of result object passes dicom3tools' independent IOD validator ``dciodvfy``.

Kinds: BINARY SEG, FRACTIONAL SEG, segmentation SR (TID 1500/1411), classification
SR (TID 1500/1501), and one under an organisation UID root. Errors fail the test;
warnings are allowed and listed in the assertion message when errors occur.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.pixels.volume import load_series
from dicom_node.synthetic import SeriesSpec, write_ct_series
from dicom_node.writers import ResultObjects, WriterOptions, build_results, read_headers
from inference.backends import BackendOptions
from inference.predictor import Prediction, open_predictor
from inference.store import ModelStore
from tests.conftest import require_tool

pytestmark = pytest.mark.peers

ROOT = Path(__file__).resolve().parents[1]
STORE = ModelStore([ROOT / "engines", ROOT / "tests" / "models"])


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Run dciodvfy on ``path``; return its (error, warning) lines."""
    exe = require_tool("dciodvfy", "apt-get install dicom3tools")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


def _predict(name: str, volume: np.ndarray) -> Prediction:
    predictor = open_predictor(STORE.get(name), BackendOptions(onnxruntime_threads=1), ["onnxruntime"])
    try:
        return predictor.predict(volume)
    finally:
        predictor.close()


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ResultObjects]]:
    require_tool("dciodvfy", "apt-get install dicom3tools")
    files = write_ct_series(tmp_path_factory.mktemp("ct"), SeriesSpec(slices=12, rows=64, columns=64, seed="writers-dciodvfy"))
    volume = load_series(files, workers=0, gpu="cpu")
    headers = read_headers(files)
    lungs, cnn = STORE.get("ct-lungs"), STORE.get("random-cnn")
    lungs_pred = _predict("ct-lungs", volume.array)
    yield {
        "binary": build_results(headers, volume, lungs.spec, lungs_pred, model_sha256=lungs.onnx_sha256()),
        "fractional": build_results(headers, volume, lungs.spec, lungs_pred, WriterOptions(segmentation_type="FRACTIONAL"),
                                    model_sha256=lungs.onnx_sha256()),
        "classification": build_results(headers, volume, cnn.spec, _predict("random-cnn", volume.array), model_sha256=cnn.onnx_sha256()),
        "org-root": build_results(
            headers, volume, lungs.spec, lungs_pred, WriterOptions(uid_root="1.2.826.0.1.3680043.10.543.", institution_name="Example"),
            model_sha256=lungs.onnx_sha256(),
        ),
    }


@pytest.mark.parametrize(
    ("case", "kind"),
    [
        ("binary", "seg"), ("binary", "sr"), ("fractional", "seg"), ("classification", "sr"),
        ("org-root", "seg"), ("org-root", "sr"),
    ],
)
def test_dciodvfy_reports_no_errors(objects: dict[str, ResultObjects], tmp_path: Path, case: str, kind: str) -> None:
    data = getattr(objects[case], kind)
    assert data is not None
    path = tmp_path / f"{case}-{kind}.dcm"
    path.write_bytes(data)
    errors, warnings = dciodvfy(path)
    assert not errors, "\n".join(errors + warnings)


def test_dciodvfy_catches_a_broken_segmentation(objects: dict[str, ResultObjects], tmp_path: Path) -> None:
    """The validator is really looking: a SEG without Segment Label is reported."""
    data = objects["binary"].seg
    assert data is not None
    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.SegmentSequence[0].SegmentLabel
    path = tmp_path / "broken.dcm"
    ds.save_as(path)
    errors, _ = dciodvfy(path)
    assert any("SegmentLabel" in e for e in errors)
