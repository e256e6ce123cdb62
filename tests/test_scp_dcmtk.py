"""The SCP against DCMTK's echoscu and storescu, and the stored files read back."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pydicom

from dicom_node.node import Node
from tests.conftest import require_tool, wait_for

ENV = dict(os.environ, TCP_NODELAY="1")


def test_echoscu(start_node) -> None:
    echoscu = require_tool("echoscu", "apt-get install dcmtk")
    node: Node = start_node()
    out = subprocess.run([echoscu, "-aec", "DICOM_NODE", "127.0.0.1", str(node.scp.port)], env=ENV, capture_output=True)
    assert out.returncode == 0, out.stderr


def test_storescu_series_is_stored_indexed_and_completed(start_node, ct_series: list[Path]) -> None:
    storescu = require_tool("storescu", "apt-get install dcmtk")
    node: Node = start_node()
    out = subprocess.run(
        [storescu, "-aec", "DICOM_NODE", "-aet", "MODALITY", "--max-pdu", "16384", "127.0.0.1", str(node.scp.port),
         *map(str, ct_series)],
        env=ENV, capture_output=True,
    )
    assert out.returncode == 0, out.stderr
    counts = node.index.counts()
    assert counts["instances"] == len(ct_series) and counts["series"] == 1 and counts["studies"] == 1
    assert wait_for(lambda: node.index.counts()["complete"] == 1, timeout=10)
    kinds = [e["kind"] for e in node.index.events()]
    assert kinds == ["series_complete", "study_complete"]

    # Every stored file is a Part 10 file with our meta and the sender's exact pixels.
    reader = node.index.reader()
    rows = {r["sop_instance_uid"]: r for r in reader.execute("SELECT * FROM instances")}
    for src in ct_series:
        original = pydicom.dcmread(src)
        row = rows[original.SOPInstanceUID]
        assert row["calling_ae"] == "MODALITY"
        stored_path = node.spool.path_for(row["path"])
        assert ".." not in row["path"] and original.SOPInstanceUID not in row["path"]
        stored = pydicom.dcmread(stored_path)
        assert stored.preamble == b"\x00" * 128
        assert stored.file_meta.ImplementationVersionName == "DICOM_NODE_010"
        assert stored.file_meta.SourceApplicationEntityTitle == "MODALITY"
        assert stored.SeriesInstanceUID == original.SeriesInstanceUID
        assert np.array_equal(stored.pixel_array, original.pixel_array)
    assert not list(node.spool.tmp.iterdir()), "no temporary files may remain"


def test_storescu_compressed_transfer_syntax_is_kept(start_node, ct_series: list[Path], tmp_path: Path) -> None:
    storescu = require_tool("storescu", "apt-get install dcmtk")
    dcmcrle = require_tool("dcmcrle", "apt-get install dcmtk")
    rle = tmp_path / "rle.dcm"
    subprocess.run([dcmcrle, str(ct_series[0]), str(rle)], check=True)
    node: Node = start_node()
    out = subprocess.run(
        [storescu, "-aec", "DICOM_NODE", "--propose-rle", "127.0.0.1", str(node.scp.port), str(rle)],
        env=ENV, capture_output=True,
    )
    assert out.returncode == 0, out.stderr
    row = node.index.reader().execute("SELECT transfer_syntax_uid FROM instances").fetchone()
    assert row[0] == "1.2.840.10008.1.2.5"
