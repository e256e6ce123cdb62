"""The job path's result objects: real model provenance, no server paths, one series per model.

A node on an ephemeral port receives a synthetic CT series by C-STORE
(pynetdicom), routes it to ct-body and ct-lungs, and writes their SEG and SR
into its results store. These tests read those files back. The job path once
recorded ``model_sha256=<bound method ModelEntry.onnx_sha256 of ...PosixPath(...)>``
(a server path) where ``dicom-node infer`` wrote the digest, and both models'
series were numbered and described alike (9001 "AI segmentation").
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import REPO, node_config, wait_for
from tests.scu import send_all

ENGINES = REPO / "engines"
MODELS = ("ct-body", "ct-lungs")
RULE = {"name": "ct", "models": list(MODELS), "destinations": [], "match": {"modality": "CT"}}
#: Algorithm Parameters (111002, DCM), the TEXT item TID 4019 puts in an SR's algorithm identification.
ALGORITHM_PARAMETERS = "111002"


def _job_states(node: Node) -> list[str]:
    conn = node.index.reader()
    try:
        return [str(r[0]) for r in conn.execute("SELECT state FROM jobs")]
    finally:
        conn.close()


def _stored_results(node: Node) -> dict[tuple[str, str], bytes]:
    """Each result file in the node's results store, by (model, kind)."""
    conn = node.index.reader()
    try:
        rows = conn.execute("SELECT model, kind, path FROM results").fetchall()
    finally:
        conn.close()
    root = Path(node.config.storage.root)
    return {(str(model), str(kind)): (root / str(path)).read_bytes() for model, kind, path in rows}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[tuple[str, str], bytes], Path]]:
    """Run one series through the job path of a real node; yield its result files and storage root.

    Module-scoped (the ``start_node`` fixture is per test): all checks read the same two jobs' output.
    """
    root = tmp_path_factory.mktemp("provenance") / "node"
    node = Node(node_config(root, routing={"rules": [RULE]}, inference={"models_dir": str(ENGINES)}))
    node.start()
    try:
        datasets = list(ct_datasets(SeriesSpec(slices=6, rows=48, columns=48, seed="provenance")))
        assert send_all(node.scp.port, datasets) == [0] * len(datasets)
        assert wait_for(lambda: _job_states(node) == ["done", "done"], timeout=120), _job_states(node)
        stored = _stored_results(node)
    finally:
        node.stop()
    assert set(stored) == {(m, k) for m in MODELS for k in ("SEG", "SR")}, sorted(stored)
    yield stored, root


def _text_items(items: pydicom.Sequence, concept: str) -> Iterator[str]:
    """TextValue of every content item named ``concept`` (code value), at any depth of an SR tree."""
    for item in items:
        name = item.get("ConceptNameCodeSequence")
        if name and name[0].CodeValue == concept and "TextValue" in item:
            yield str(item.TextValue)
        yield from _text_items(item.get("ContentSequence", []), concept)


def _digests(ds: Dataset) -> list[str]:
    """Every ``model_sha256=`` value in a SEG's segments or an SR's algorithm parameters."""
    if ds.Modality == "SEG":
        texts = [str(seg.SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters) for seg in ds.SegmentSequence]
    else:
        texts = list(_text_items(ds.ContentSequence, ALGORITHM_PARAMETERS))
    return [m.group(1) for text in texts for m in re.finditer(r"model_sha256=([^,]*)", text)]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", ["SEG", "SR"])
def test_results_record_the_onnx_files_sha256(results: tuple[dict[tuple[str, str], bytes], Path], model: str, kind: str) -> None:
    stored, _ = results
    expected = hashlib.sha256((ENGINES / model / "model.onnx").read_bytes()).hexdigest()
    ds = pydicom.dcmread(io.BytesIO(stored[model, kind]))
    digests = _digests(ds)
    assert digests, f"{model} {kind} records no model_sha256"
    assert set(digests) == {expected}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", ["SEG", "SR"])
def test_results_carry_no_server_path(results: tuple[dict[tuple[str, str], bytes], Path], model: str, kind: str) -> None:
    stored, root = results
    data = stored[model, kind]
    leaks = {str(root), str(root.resolve()), str(ENGINES), str(ENGINES.resolve()), str(REPO), "PosixPath",
             "bound method", "ModelEntry"}
    found = sorted(text for text in leaks if text.encode() in data)
    assert found == [], f"{model} {kind} contains {found}"


def test_each_models_series_is_numbered_and_named_apart(results: tuple[dict[tuple[str, str], bytes], Path]) -> None:
    stored, _ = results
    series = {}
    for (model, kind), data in stored.items():
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        description = str(ds.SeriesDescription)
        assert model in description and "1.0.0" in description and len(description) <= 64, description
        series[model, kind] = (int(ds.SeriesNumber), description)
    numbers = {key: number for key, (number, _) in series.items()}
    assert numbers == {("ct-body", "SEG"): 9010, ("ct-body", "SR"): 9011, ("ct-lungs", "SEG"): 9020, ("ct-lungs", "SR"): 9021}
    assert len({description for _, description in series.values()}) == 4, series
