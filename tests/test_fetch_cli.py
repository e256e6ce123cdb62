"""``dicom-node fetch`` end to end: a subprocess with a config file, pulling from a real Orthanc."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.conftest import ServeProcess, dicom_node_exe, free_port, node_index, require_tool, storage_env
from tests.test_sources_dimse import _datasets, post_instances

SCP_PORT = free_port()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, dict[str, list[pydicom.Dataset]]]]:
    """Orthanc holding one study with two series (4 and 2 slices); knows our SCP as "node"."""
    require_tool("Orthanc", "apt-get install orthanc orthanc-dicomweb")
    from tests.peers.orthanc import run_orthanc

    s1 = _datasets("fetch-1", 4)
    s2 = _datasets("fetch-2", 2, study_of=s1[0], number=2)
    extra = {"DicomModalities": {"node": {"AET": "DICOM_NODE", "Host": "127.0.0.1", "Port": SCP_PORT}}}
    with run_orthanc(tmp_path_factory.mktemp("orthanc"), extra=extra) as peer:
        post_instances(peer.http_url, s1 + s2)
        yield peer.dicom_port, {str(s1[0].SeriesInstanceUID): s1, str(s2[0].SeriesInstanceUID): s2}


def write_config(folder: Path, dicom_port: int, retrieve: str = "c-get") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "node.toml"
    path.write_text(
        f'[scp]\nport = {SCP_PORT}\n[storage]\nroot = "{folder / "state"}"\nmin_free_bytes = 0\n'
        f'[[sources.remotes]]\nname = "orthanc"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {dicom_port}\n'
        f'retrieve = "{retrieve}"\ndimse_timeout = 20\n', encoding="utf-8")
    return path


def fetch(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The config's storage, on the backend the tests run (storage_env adds the PostgreSQL database).
    env = dict(os.environ, **storage_env(config.parent / "state"))
    return subprocess.run([dicom_node_exe(), "--config", str(config), "fetch", "--from", "orthanc", *args],
                          cwd=config.parent, env=env, capture_output=True, text=True, timeout=120, check=False)


def outcome_lines(stderr: str) -> list[str]:
    """stderr without the line naming the config and storage root every command prints first."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("dicom-node: config ")]


def instances(config: Path) -> list[dict[str, Any]]:
    with node_index(config.parent / "state") as index:
        conn = index.reader()
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM instances")]
        finally:
            conn.close()


def _study(series: dict[str, list[pydicom.Dataset]]) -> str:
    return str(next(iter(series.values()))[0].StudyInstanceUID)


def test_fetch_by_c_get_prints_each_series_and_fills_the_spool(orthanc, tmp_path: Path) -> None:
    port, series = orthanc
    config = write_config(tmp_path / "get", port)
    out = fetch(config, "--study", _study(series), "--json")
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stderr and "fetch series" not in out.stderr, "no progress bar when stderr is piped"
    doc = json.loads(out.stdout)
    assert doc["method"] == "c-get" and doc["remote"] == "orthanc" and doc["study"] == _study(series)
    got = [(r["series_instance_uid"], r["modality"], r["stored"], r["duplicates"], r["failed"]) for r in doc["series"]]
    assert got == [(uid, "CT", len(dss), 0, 0) for uid, dss in series.items()]
    rows = instances(config)
    assert len(rows) == 6 and {r["source"] for r in rows} == {"qr:orthanc"}
    for row in rows:
        stored = pydicom.dcmread(config.parent / "state" / "spool" / row["path"])
        assert stored.SOPInstanceUID == row["sop_instance_uid"]
    # Again, one series, as text: everything is already held.
    first = next(iter(series))
    again = fetch(config, "--study", _study(series), "--series", first)
    assert again.returncode == 0, again.stderr
    line = next(ln for ln in again.stdout.splitlines() if ln.startswith(first))
    assert line.split()[1:] == ["CT", "0", str(len(series[first])), "0"]


def test_fetch_by_c_move_runs_an_scp_for_the_fetch_when_none_listens(orthanc, tmp_path: Path) -> None:
    port, series = orthanc
    config = write_config(tmp_path / "move", port, retrieve="c-move")
    second = list(series)[1]
    out = fetch(config, "--study", _study(series), "--series", second, "--json")
    assert out.returncode == 0, out.stderr
    assert [(r["series_instance_uid"], r["stored"]) for r in json.loads(out.stdout)["series"]] == [(second, 2)]
    rows = instances(config)
    assert {r["sop_instance_uid"] for r in rows} == {str(ds.SOPInstanceUID) for ds in series[second]}
    assert {r["calling_ae"] for r in rows} == {"ORTHANC"}


def test_fetch_by_c_move_goes_to_a_running_serve(orthanc, tmp_path: Path) -> None:
    port, series = orthanc
    config = write_config(tmp_path / "serve", port, retrieve="c-move")
    serve = ServeProcess(config.parent / "state", SCP_PORT).start()
    try:
        out = fetch(config, "--study", _study(series), "--json")
        assert out.returncode == 0, out.stderr
        assert sum(r["stored"] for r in json.loads(out.stdout)["series"]) == 6
        assert serve.status()["instances"] == 6
    finally:
        serve.stop()


def test_fetch_of_an_unknown_study_exits_1_with_one_line(orthanc, tmp_path: Path) -> None:
    port, _ = orthanc
    config = write_config(tmp_path / "unknown", port)
    out = fetch(config, "--study", "1.2.826.0.1.3680043.8.498.2")
    assert out.returncode == 1 and out.stdout == ""
    assert len(outcome_lines(out.stderr)) == 1
    assert "study 1.2.826.0.1.3680043.8.498.2 not found at ORTHANC" in out.stderr


def test_fetch_from_a_remote_that_is_down_or_unknown(tmp_path: Path) -> None:
    config = write_config(tmp_path / "down", free_port())
    out = fetch(config, "--study", "1.2.3")
    assert out.returncode == 1 and len(outcome_lines(out.stderr)) == 1
    assert "cannot connect to ORTHANC@127.0.0.1" in out.stderr
    other = subprocess.run([dicom_node_exe(), "--config", str(config), "fetch", "--from", "nowhere",
                            "--study", "1.2.3"], capture_output=True, text=True, timeout=60, check=False)
    assert other.returncode == 2 and "no such [[sources.remotes]] entry" in other.stderr


def test_fetch_shows_progress_on_a_terminal_only(orthanc, tmp_path: Path) -> None:
    """On a terminal, stderr carries a bar counting instances; stdout is the same JSON as when piped."""
    from tests.test_progress import run_on_terminal

    port, series = orthanc
    config = write_config(tmp_path / "tty", port)
    argv = [dicom_node_exe(), "--config", str(config), "fetch", "--from", "orthanc", "--study", _study(series), "--json"]
    shown = run_on_terminal(argv, config.parent, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "\r" in shown.stderr and "fetch series" in shown.stderr and "/6" in shown.stderr
    assert sum(r["stored"] for r in json.loads(shown.stdout)["series"]) == 6
