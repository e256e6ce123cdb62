"""Worklist feed against a real uvicorn server: newest first, AI status per model, top finding."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from dicom_node.api.routers import worklist as wl
from dicom_node.index.worklist import Failure
from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import wait_for
from tests.scu import send_all

ENGINES = str(Path(__file__).resolve().parents[1] / "engines")
RULE = {"name": "any", "models": ["ct-body"], "destinations": [], "match": {}}


def feed(node: Node, **params: Any) -> list[dict[str, Any]]:
    return httpx.get(f"http://127.0.0.1:{node.api.port}/v1/worklist", params=params).json()["studies"]


def test_worklist_status_and_top_findings(start_node) -> None:
    node: Node = start_node(routing={"rules": [RULE]}, inference={"models_dir": ENGINES})
    ct = list(ct_datasets(SeriesSpec(slices=3, rows=32, columns=32, seed="wl-ct")))
    assert send_all(node.scp.port, ct) == [0] * 3
    assert wait_for(lambda: [s["status"] for s in feed(node)] == ["done"], timeout=60), feed(node)
    mr = list(ct_datasets(SeriesSpec(slices=2, rows=16, columns=16, seed="wl-mr", modality="MR")))
    assert send_all(node.scp.port, mr) == [0, 0]
    assert wait_for(lambda: [s["status"] for s in feed(node)] == ["failed", "done"], timeout=60), feed(node)
    newest, older = feed(node)
    assert newest["study_uid"] == str(mr[0].StudyInstanceUID) and newest["modalities"] == ["MR"]
    assert newest["models"] == [{"model": "ct-body", "pending": 0, "processing": 0, "done": 0, "failed": 1}]
    assert newest["top_finding"]["kind"] == "failed" and "contract" in newest["top_finding"]["reason"]
    assert older["instances"] == 3 and older["series"] == 1
    top = older["top_finding"]
    assert top["kind"] == "segmentation" and top["label"] == "Body" and top["volume_ml"] > 0
    assert [s["study_uid"] for s in feed(node, limit=1)] == [newest["study_uid"]]
    assert httpx.get(f"http://127.0.0.1:{node.api.port}/v1/worklist", params={"limit": 0}).status_code == 400


def test_priority_prefers_probability_then_volume(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    conn.execute("CREATE TABLE results (study_instance_uid TEXT, kind TEXT, model TEXT, path TEXT)")
    conn.executemany("INSERT INTO results VALUES ('1.2', 'SR', ?, ?)", [("seg", "a"), ("cls", "b")])
    found = {
        "a": [{"label": "Liver", "volume_ml": 1500.0, "probability": None, "present": None},
              {"label": "Tumour", "volume_ml": 12.0, "probability": None, "present": None}],
        "b": [{"label": "Nodule", "volume_ml": None, "probability": 0.3, "present": False},
              {"label": "Effusion", "volume_ml": None, "probability": 0.9, "present": True}],
    }
    monkeypatch.setattr(wl, "result_path", lambda _request, rel: Path(rel))
    monkeypatch.setattr(wl, "findings", lambda path: found[str(path)])
    top = wl.top_finding(None, conn, "1.2", None)  # type: ignore[arg-type]
    assert top == {"kind": "classification", "probability": 0.9, "model": "cls", "label": "Effusion"}
    found["b"] = []
    assert wl.top_finding(None, conn, "1.2", None)["label"] == "Liver"  # type: ignore[arg-type, index]
    failed = Failure(model="seg", reason="boom")
    assert wl.top_finding(None, conn, "1.2", failed)["kind"] == "failed"  # type: ignore[arg-type, index]
    assert wl._status([{"pending": 1, "processing": 0, "done": 2, "failed": 1}]) == "pending"
    assert wl._status([]) == "received"
