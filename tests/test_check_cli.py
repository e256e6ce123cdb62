"""`dicom-node check`: JSON line per series, exit codes, named missing tags, --verbose decoder path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicom_node.cli import main
from dicom_node.synthetic import SeriesSpec, ct_datasets, write_ct_series


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict]]:
    code = main(["check", *argv])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    return code, lines


def test_clean_ct_series_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_ct_series(tmp_path / "ct", SeriesSpec(slices=20, rows=32, columns=32))
    code, lines = run(capsys, str(tmp_path / "ct"), "--contract", "ct-volume", "--verbose")
    assert code == 0 and len(lines) == 1
    assert lines[0]["verdict"] == "pass" and lines[0]["instances"] == 20 and lines[0]["issues"] == []
    assert lines[0]["decoder"]["path"] == "cpu" and lines[0]["decoder"]["reason"]


def test_stripped_series_names_every_missing_tag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stripped = ["FrameOfReferenceUID", "PixelSpacing", "RescaleSlope", "RescaleIntercept", "HighBit"]
    folder = tmp_path / "stripped"
    folder.mkdir()
    for i, ds in enumerate(ct_datasets(SeriesSpec(slices=20, rows=32, columns=32))):
        for kw in stripped:
            del ds[kw]
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
    code, lines = run(capsys, str(folder), "--contract", "ct-volume")
    assert code == 1 and lines[0]["verdict"] == "fail"
    missing = {i["keyword"] for i in lines[0]["issues"] if i["rule"] == "required"}
    assert missing == set(stripped)
    tags = {i["keyword"]: i["tag"] for i in lines[0]["issues"]}
    assert tags["PixelSpacing"] == "(0028,0030)" and tags["FrameOfReferenceUID"] == "(0020,0052)"


def test_two_series_and_a_non_dicom_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_ct_series(tmp_path / "a", SeriesSpec(slices=3, rows=16, columns=16, seed="a"))
    write_ct_series(tmp_path / "b", SeriesSpec(slices=3, rows=16, columns=16, seed="b"))
    (tmp_path / "notes.txt").write_text("not dicom")
    code, lines = run(capsys, str(tmp_path))
    assert code == 1
    assert sorted(line["verdict"] for line in lines) == ["fail", "pass", "pass"]
    assert any(line.get("file") == "notes.txt" for line in lines)


def test_without_contract_corrupt_pixels_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = write_ct_series(tmp_path / "s", SeriesSpec(slices=3, rows=16, columns=16))
    raw = paths[1].read_bytes()
    paths[1].write_bytes(raw[:-200])
    code, lines = run(capsys, str(tmp_path / "s"))
    assert code == 1 and lines[0]["issues"][0]["rule"] == "decodable"
