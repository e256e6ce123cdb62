"""Results endpoints against a real uvicorn server: study summaries parsed from the SR, DICOM download."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest

from dicom_node.api.routers.results import findings
from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from dicom_node.writers import result_uids, select_sources
from dicom_node.writers.common import to_bytes
from dicom_node.writers.sr import build_classification_report
from tests.conftest import wait_for
from tests.scu import send_all

ENGINES = str(Path(__file__).resolve().parents[1] / "engines")
RULE = {"name": "ct", "models": ["ct-body"], "destinations": [], "match": {"modality": "CT"}}


def base(node: Node) -> str:
    return f"http://127.0.0.1:{node.api.port}"


def test_study_results_and_download(start_node) -> None:
    node: Node = start_node(routing={"rules": [RULE]}, inference={"models_dir": ENGINES})
    ct = list(ct_datasets(SeriesSpec(slices=4, rows=48, columns=48, seed="results")))
    study = str(ct[0].StudyInstanceUID)
    assert send_all(node.scp.port, ct) == [0] * 4
    url = f"{base(node)}/v1/studies/{study}/results"
    assert wait_for(lambda: len(httpx.get(url).json()["results"]) == 2, timeout=60)
    results = {r["kind"]: r for r in httpx.get(url).json()["results"]}
    seg, sr = results["SEG"], results["SR"]
    assert seg["model"] == sr["model"] == "ct-body" and seg["model_version"] == "1.0.0"
    assert seg["job_id"] == sr["job_id"] and seg["source_series_uid"] == str(ct[0].SeriesInstanceUID)
    assert seg["findings"] == [] and [f["label"] for f in sr["findings"]] == ["Body"]
    download = httpx.get(f"{base(node)}/v1/results/{seg['sop_instance_uid']}")
    assert download.status_code == 200 and download.headers["content-type"] == "application/dicom"
    seg_ds = pydicom.dcmread(io.BytesIO(download.content))
    assert seg_ds.SOPInstanceUID == seg["sop_instance_uid"] and seg_ds.StudyInstanceUID == study
    voxels = int(np.count_nonzero(seg_ds.pixel_array))
    spacing = [float(v) for v in ct[0].PixelSpacing] + [float(ct[0].SliceThickness)]
    assert sr["findings"][0]["volume_ml"] == pytest.approx(voxels * np.prod(spacing) / 1000.0, rel=0.05)
    sr_ds = pydicom.dcmread(io.BytesIO(httpx.get(f"{base(node)}/v1/results/{sr['sop_instance_uid']}").content))
    assert sr_ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"


def test_unknown_and_invalid_uids(start_node) -> None:
    node: Node = start_node()
    missing = httpx.get(f"{base(node)}/v1/results/1.2.3.4")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    for bad in ("1.2.x", "..", "1." * 40 + "1"):
        r = httpx.get(f"{base(node)}/v1/results/{bad}")
        assert r.status_code in (400, 404) and "error" in r.json()
    assert httpx.get(f"{base(node)}/v1/results/1.2.x").status_code == 400
    assert httpx.get(f"{base(node)}/v1/studies/9.9/results").json() == {"study_uid": "9.9", "results": []}


def test_classification_probabilities_are_parsed(tmp_path: Path) -> None:
    from tests.writer_fixtures import STORE, predicted_series

    series = predicted_series(tmp_path / "ct", "api-results", ("random-cnn",))
    spec = STORE.get("random-cnn").spec
    sources, _ = select_sources(series.headers, series.volume, list(range(3)))
    uids = result_uids("2.25.", series.volume.series_instance_uid, spec.name, spec.version)
    probs = np.array([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    path = tmp_path / "sr.dcm"
    path.write_bytes(to_bytes(build_classification_report(sources, probs, probs.argmax(axis=1), spec, uids)))
    found = findings(path)
    assert [f["label"] for f in found] == [lab.name for lab in spec.labels]
    assert [f["probability"] for f in found] == pytest.approx([0.6, 0.7, 0.8])
    assert all(f["present"] is True for f in found) and all(f["volume_ml"] is None for f in found)
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    assert findings(tmp_path / "junk.dcm") == [] and findings(tmp_path / "absent.dcm") == []
