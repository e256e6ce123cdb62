"""``dicom-node results list|show`` on a node that ran a real job (C-STORE -> ct-body -> SEG + SR)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from dicom_node.cli import main
from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import database_toml, dicom_node_exe, wait_for
from tests.scu import send_all

ENGINES = str(Path(__file__).resolve().parents[1] / "engines")
RULE = {"name": "ct", "models": ["ct-body"], "destinations": [], "match": {"modality": "CT"}}
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SR = "1.2.840.10008.5.1.4.1.1.88.34"

#: The running node, the config file naming its storage, and the CT series it received.
NodeWithResults = tuple[Node, Path, list[pydicom.Dataset]]


def cli(config: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed command, run from ``cwd`` with ``--config`` after the subcommand, as a user types it."""
    return subprocess.run([dicom_node_exe(), *args, "--config", os.path.relpath(config, cwd)], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def node_with_results(start_node: Callable[..., Node], tmp_path: Path) -> NodeWithResults:
    """A node whose job wrote a SEG and an SR, and a config file (relative root) naming its storage."""
    root = tmp_path / "site" / "var"
    node: Node = start_node(root, routing={"rules": [RULE]}, inference={"models_dir": ENGINES})
    ct = list(ct_datasets(SeriesSpec(slices=4, rows=48, columns=48, seed="results-cli")))
    assert send_all(node.scp.port, ct) == [0] * 4

    def jobs() -> list[tuple[str, str | None]]:
        conn = node.index.reader()
        try:
            return [(r["state"], r["reason"]) for r in conn.execute("SELECT state, reason FROM jobs")]
        finally:
            conn.close()

    assert wait_for(lambda: any(state in ("done", "failed") for state, _ in jobs()), timeout=60), jobs()
    assert [state for state, _ in jobs()] == ["done"], jobs()
    config = tmp_path / "site" / "conf" / "node.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[storage]\nroot = "../var"\n' + database_toml(root), encoding="utf-8")
    return node, config, ct


def test_results_list_tells_seg_from_sr_and_finds_the_files(node_with_results: NodeWithResults, tmp_path: Path) -> None:
    _node, config, ct = node_with_results
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = cli(config, elsewhere, "results", "list", "--json")
    assert out.returncode == 0, out.stderr
    rows = {row["kind"]: row for row in map(json.loads, out.stdout.splitlines())}
    assert sorted(rows) == ["SEG", "SR"]
    study, series = str(ct[0].StudyInstanceUID), str(ct[0].SeriesInstanceUID)
    for kind, sop_class in (("SEG", SEG), ("SR", SR)):
        row = rows[kind]
        assert (row["model"], row["model_version"], row["sop_class_uid"]) == ("ct-body", "1.0.0", sop_class)
        assert row["study_instance_uid"] == study and row["source_series_uid"] == series
        ds = pydicom.dcmread(row["path"])  # an absolute path to the stored file
        assert Path(row["path"]).is_relative_to(tmp_path / "site" / "var")
        assert (ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID) == (
            sop_class, row["sop_instance_uid"], row["series_instance_uid"], study)
        assert row["created"].endswith("Z") and row["created_at"] > 0
    assert rows["SEG"]["job_id"] == rows["SR"]["job_id"]
    assert rows["SEG"]["series_instance_uid"] != rows["SR"]["series_instance_uid"]
    assert not (elsewhere / "var").exists()

    text = cli(config, elsewhere, "results", "list", "--study", study)
    assert text.returncode == 0, text.stderr
    header, *lines = text.stdout.splitlines()
    assert header.split()[:4] == ["kind", "model", "version", "created"]
    assert sorted(line.split()[0] for line in lines) == ["SEG", "SR"]
    for line in lines:
        kind = line.split()[0]
        assert rows[kind]["sop_instance_uid"] in line and rows[kind]["path"] in line and series in line
    assert f"storage {tmp_path / 'site' / 'var'}" in text.stderr


def test_results_list_of_another_study_and_show(node_with_results: NodeWithResults,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _node, config, _ct = node_with_results
    assert main(["--config", str(config), "results", "list", "--study", "1.2.3.4", "--json"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["results", "list", "--study", "1.2.3.4", "--config", str(config)]) == 0
    assert capsys.readouterr().out == "no result objects for study 1.2.3.4\n"
    assert main(["results", "list", "--json", "--config", str(config)]) == 0
    seg = next(r for r in map(json.loads, capsys.readouterr().out.splitlines()) if r["kind"] == "SEG")
    assert main(["results", "show", seg["sop_instance_uid"], "--config", str(config)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {**seg, "file_exists": True}
    assert main(["results", "show", "1.2.3.4", "--config", str(config)]) == 1
    assert "no result object '1.2.3.4'" in capsys.readouterr().err
