"""End to end with third-party peers: storescu -> dicom-node serve -> storescp / Orthanc (STOW-RS).

The node runs as ``dicom-node serve`` on the embedded default backend (ONNX Runtime
on CPU) with a routing rule for ``ct-body``; results are checked where they arrive.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from models.reference import body_mask, dice

from dicom_node.synthetic import SeriesSpec, write_ct_series
from tests.conftest import ServeProcess, free_port, node_index, require_tool, wait_for, wait_port

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SR = "1.2.840.10008.5.1.4.1.1.88.34"
ENGINES = Path(__file__).resolve().parents[1] / "engines"
ENV = dict(os.environ, TCP_NODELAY="1")


def write_conf(folder: Path, destination: str, retry: str = "") -> None:
    """conf/node.toml in ``folder``: a ct-body rule sending to one destination."""
    (folder / "conf").mkdir(parents=True, exist_ok=True)
    (folder / "conf" / "node.toml").write_text(
        f'[inference]\nmodels_dir = "{ENGINES}"\n'
        '[assembly]\nquiet_period = 0.5\npoll_interval = 0.1\n'
        '[logging]\nlevel = "WARNING"\n'
        '[[routing.rules]]\nname = "ct"\nmodels = ["ct-body"]\ndestinations = ["dest"]\n'
        '[routing.rules.match]\nmodality = "CT"\n'
        f"[[delivery.destinations]]\n{destination}\n{retry}"
    )


@contextmanager
def storescp(out: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """DCMTK storescp writing every received object to a file of its own (+uf)."""
    exe = require_tool("storescp", "apt-get install dcmtk")
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([exe, "-aet", "RESULTS", "+uf", "-od", str(out), str(port)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def send_series(port: int, folder: Path, seed: str, slices: int = 16) -> list[Path]:
    """Write a synthetic CT series and send it with DCMTK storescu."""
    exe = require_tool("storescu", "apt-get install dcmtk")
    files = write_ct_series(folder, SeriesSpec(slices=slices, rows=128, columns=128, seed=seed))
    out = subprocess.run([exe, "-aec", "DICOM_NODE", "127.0.0.1", str(port), *map(str, files)], env=ENV,
                         capture_output=True)
    assert out.returncode == 0, out.stderr
    return files


def job_states(root: Path) -> list[str]:
    """The job states in the index of the node rooted at ``root`` (SQLite, or PostgreSQL when the tests run on it)."""
    with node_index(root) as index:
        conn = index.reader()
        try:
            return [r[0] for r in conn.execute("SELECT state FROM jobs")]
        finally:
            conn.close()


def reference_dice(seg: pydicom.Dataset, sources: list[Path]) -> float:
    """Dice of the SEG's mask against the NumPy reference of ct-body on the source HU."""
    datasets = [pydicom.dcmread(p) for p in sources]
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets])
    expected = body_mask(hu)
    pixels = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
        source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in datasets], segment_numbers=[1],
    )
    return dice(pixels[..., 0] > 0, expected)


def test_results_arrive_at_storescp_valid_and_exact(tmp_path: Path) -> None:
    dciodvfy = require_tool("dciodvfy", "apt-get install dicom3tools")
    dest_port, port = free_port(), free_port()
    write_conf(tmp_path, f'kind = "dimse"\nname = "dest"\nae_title = "RESULTS"\nhost = "127.0.0.1"\nport = {dest_port}')
    serve = ServeProcess(tmp_path / "var", port)
    serve.env.pop("DICOM_NODE__STORAGE__ROOT")
    with storescp(tmp_path / "arrived", dest_port):
        serve.start()
        try:
            sources = send_series(port, tmp_path / "ct", "e2e-storescp")
            assert wait_for(lambda: len(list((tmp_path / "arrived").iterdir())) == 2, timeout=90)
        finally:
            serve.stop()
    arrived = {str(pydicom.dcmread(p).SOPClassUID): p for p in (tmp_path / "arrived").iterdir()}
    assert set(arrived) == {SEG, SR}
    for path in arrived.values():
        out = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], errors
    assert reference_dice(pydicom.dcmread(arrived[SEG]), sources) >= 0.99
    assert job_states(tmp_path / "var") == ["done"]


def test_results_reach_orthanc_by_stow_rs_and_are_found_by_qido(tmp_path: Path) -> None:
    require_tool("Orthanc", "apt-get install orthanc orthanc-dicomweb")
    from dicomweb_client.api import DICOMwebClient

    from tests.peers.orthanc import find_dicomweb_plugin, run_orthanc

    if find_dicomweb_plugin() is None:
        require_tool("the Orthanc DICOMweb plugin", "apt-get install orthanc-dicomweb")
    port = free_port()
    with run_orthanc(tmp_path / "orthanc") as orthanc:
        write_conf(tmp_path, f'kind = "stowrs"\nname = "dest"\nurl = "{orthanc.dicomweb_url}"')
        serve = ServeProcess(tmp_path / "var", port)
        serve.env.pop("DICOM_NODE__STORAGE__ROOT")
        serve.start()
        try:
            sources = send_series(port, tmp_path / "ct", "e2e-orthanc", slices=8)
            assert wait_for(lambda: job_states(tmp_path / "var") == ["done"], timeout=90), job_states(tmp_path / "var")
        finally:
            serve.stop()
        study = str(pydicom.dcmread(sources[0], stop_before_pixels=True).StudyInstanceUID)
        client = DICOMwebClient(url=orthanc.dicomweb_url)
        found = client.search_for_instances(study_instance_uid=study)
        classes = sorted(item["00080016"]["Value"][0] for item in found)
    assert classes == [SEG, SR]


def test_destination_down_for_two_retry_intervals_gets_exactly_one_copy(tmp_path: Path) -> None:
    dest_port, port = free_port(), free_port()
    write_conf(
        tmp_path, f'kind = "dimse"\nname = "dest"\nae_title = "RESULTS"\nhost = "127.0.0.1"\nport = {dest_port}',
        retry="[delivery.retry]\nattempts = 10\ninitial = 1.0\nfactor = 1.0\ncap = 1.0\n",
    )
    serve = ServeProcess(tmp_path / "var", port)
    serve.env.pop("DICOM_NODE__STORAGE__ROOT")
    serve.start()
    try:
        send_series(port, tmp_path / "ct", "e2e-down", slices=8)
        assert wait_for(lambda: job_states(tmp_path / "var") == ["delivering"], timeout=60), job_states(tmp_path / "var")
        time.sleep(2.2)  # two retry intervals with the destination down
        with storescp(tmp_path / "arrived", dest_port):
            assert wait_for(lambda: job_states(tmp_path / "var") == ["done"], timeout=30), job_states(tmp_path / "var")
            time.sleep(1.5)  # a duplicate would arrive within the next retry interval
    finally:
        serve.stop()
    arrived = [pydicom.dcmread(p) for p in (tmp_path / "arrived").iterdir()]
    assert sorted(str(ds.SOPClassUID) for ds in arrived) == [SEG, SR], "exactly one copy of each result"
