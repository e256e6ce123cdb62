"""Synthetic series: new by default (the quick start can be re-run), reproducible with a seed.

The quick start writes a synthetic CT and sends it with DCMTK ``storescu``. With
deterministic UIDs a second run was stored as duplicates: no job, nothing sent on.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.cli import main
from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets, write_ct_series
from tests.conftest import dicom_node_exe, require_tool, wait_for


def _uids(paths: list[Path]) -> tuple[str, str, list[str]]:
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    return str(headers[0].StudyInstanceUID), str(headers[0].SeriesInstanceUID), [str(h.SOPInstanceUID) for h in headers]


def test_unseeded_calls_make_new_uids(tmp_path: Path) -> None:
    spec = SeriesSpec(slices=3, rows=16, columns=16)
    study_a, series_a, sops_a = _uids(write_ct_series(tmp_path / "a", spec))
    study_b, series_b, sops_b = _uids(write_ct_series(tmp_path / "b", spec))
    assert study_a != study_b and series_a != series_b and not set(sops_a) & set(sops_b)
    assert len(set(sops_a)) == 3
    for uid in (study_a, series_a, *sops_a):
        assert uid.startswith("2.25.") and len(uid) <= 64  # UUID-derived UID, PS3.5 B.2 and 9.1


def test_same_seed_same_uids_and_pixels() -> None:
    a = list(ct_datasets(SeriesSpec(slices=3, rows=16, columns=16, seed=7)))
    b = list(ct_datasets(SeriesSpec(slices=3, rows=16, columns=16, seed=7)))
    c = list(ct_datasets(SeriesSpec(slices=3, rows=16, columns=16, seed=8)))
    for x, y in zip(a, b, strict=True):
        assert x.SOPInstanceUID == y.SOPInstanceUID and x.SeriesInstanceUID == y.SeriesInstanceUID
        assert x.PixelData == y.PixelData
    assert a[0].StudyInstanceUID != c[0].StudyInstanceUID
    assert not np.array_equal(a[0].pixel_array, c[0].pixel_array)


def test_rewriting_a_folder_leaves_one_series(tmp_path: Path) -> None:
    write_ct_series(tmp_path, SeriesSpec(slices=5, rows=16, columns=16))
    paths = write_ct_series(tmp_path, SeriesSpec(slices=2, rows=16, columns=16))
    assert sorted(tmp_path.iterdir()) == paths
    assert len({pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID for p in paths}) == 1


def test_cli_prints_folder_count_and_uids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ct"
    assert main(["synthetic", str(out), "--slices", "4", "--rows", "16", "--columns", "16", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    study, series, _ = _uids(sorted(out.glob("*.dcm")))
    assert first == {"folder": str(out.resolve()), "files": 4, "study_instance_uid": study, "series_instance_uid": series}
    assert main(["synthetic", str(out), "--slices", "4", "--rows", "16", "--columns", "16"]) == 0
    text = capsys.readouterr().out
    assert f"folder:             {out.resolve()}" in text and "files:              4" in text
    assert "StudyInstanceUID:" in text and study not in text, "a second run is a new study"
    seeded = [main(["synthetic", str(tmp_path / f"s{i}"), "--slices", "2", "--rows", "8", "--columns", "8",
                    "--seed", "42", "--json"]) for i in range(2)]
    assert seeded == [0, 0]
    a, b = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert (a["study_instance_uid"], a["series_instance_uid"]) == (b["study_instance_uid"], b["series_instance_uid"])
    assert (tmp_path / "s0" / "0001.dcm").read_bytes() == (tmp_path / "s1" / "0001.dcm").read_bytes()


def test_cli_rejects_a_non_positive_size(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["synthetic", "/tmp/never-written", "--slices", "0"])
    assert exc.value.code == 2 and "--slices" in capsys.readouterr().err


def test_quick_start_twice_gives_two_series(start_node, tmp_path: Path) -> None:
    """The README's steps, run twice: ``dicom-node synthetic`` then ``storescu``; both series are new."""
    storescu = require_tool("storescu", "apt-get install dcmtk")
    node: Node = start_node()
    env = dict(os.environ, TCP_NODELAY="1")
    for _ in range(2):
        made = subprocess.run([dicom_node_exe(), "synthetic", str(tmp_path / "ct"), "--slices", "3", "--rows", "32",
                               "--columns", "32"], capture_output=True, text=True, check=True)
        assert "SeriesInstanceUID:" in made.stdout
        sent = subprocess.run([storescu, "-aec", "DICOM_NODE", "127.0.0.1", str(node.scp.port),
                               *map(str, sorted((tmp_path / "ct").glob("*.dcm")))], env=env, capture_output=True)
        assert sent.returncode == 0, sent.stderr
    assert wait_for(lambda: node.index.counts()["complete"] == 2)
    counts = node.index.counts()
    assert counts["series"] == 2 and counts["instances"] == 6
    assert node.scp.ctx.metrics.duplicates == 0
