"""STOW-RS (and C-STORE) delivery into a real Orthanc with its DICOMweb plugin.

Orthanc runs on loopback with ephemeral ports, a temporary storage folder and
HTTP Basic authentication (one registered user), started by
:func:`peers.orthanc.run_orthanc`. Arrival is checked through Orthanc's REST
API (``/tools/lookup``) and through QIDO-RS with dicomweb-client.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from peers.orthanc import OrthancPeer, find_dicomweb_plugin, run_orthanc
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.config.delivery import DimseDestination, StowDestination
from dicom_node.delivery.deliverer import Deliverer
from dicom_node.delivery.stowrs import build_session
from dicom_node.index.writer import IndexWriter
from dicom_node.net.auth import BasicAuth, BearerAuth
from dicom_node.net.retry import RetryPolicy
from dicom_node.synthetic import SeriesSpec, ct_datasets, synthetic_uid
from tests.conftest import free_port, peers_required, require_tool

pytestmark = pytest.mark.peers

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
USER, PASSWORD = "node", "s3cret-pw"


def _seg_like(ct: Dataset, seed: str) -> Dataset:
    """A SEG-class object in the CT's study (headers only; delivery does not need a full SEG)."""
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    uid = synthetic_uid(seed, "seg")
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = SEG, uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID"):
        setattr(ds, keyword, getattr(ct, keyword))
    ds.SOPClassUID, ds.SOPInstanceUID = SEG, uid
    ds.SeriesInstanceUID = synthetic_uid(seed, "seg-series")
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SEG", 99, 1
    return ds


def write_objects(folder: Path, seed: str) -> list[Path]:
    """A CT instance and a SEG-like object as Part 10 files."""
    folder.mkdir(parents=True, exist_ok=True)
    ct = next(ct_datasets(SeriesSpec(slices=1, rows=16, columns=16, seed=seed)))
    paths = []
    for n, ds in enumerate((ct, _seg_like(ct, seed))):
        path = folder / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPeer]:
    require_tool("Orthanc", "apt-get install orthanc orthanc-dicomweb")
    if find_dicomweb_plugin() is None:
        reason = "Orthanc DICOMweb plugin not installed: apt-get install orthanc-dicomweb"
        if peers_required():
            pytest.fail(f"required peer missing: {reason}")
        pytest.skip(reason)
    with run_orthanc(tmp_path_factory.mktemp("orthanc"), users={USER: PASSWORD}) as peer:
        yield peer


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[IndexWriter]:
    w = IndexWriter(tmp_path / "index.sqlite")
    w.start()
    yield w
    w.stop()


def _stow(orthanc: OrthancPeer, password: str = PASSWORD, name: str = "archive") -> StowDestination:
    return StowDestination(name=name, url=orthanc.dicomweb_url, auth=BasicAuth(type="basic", username=USER, password=password), timeout=10)


def test_stow_rs_stores_seg_and_ct_and_qido_finds_them(orthanc: OrthancPeer, writer: IndexWriter, tmp_path: Path) -> None:
    paths = write_objects(tmp_path / "r", "stow")
    result = Deliverer([_stow(orthanc)], RetryPolicy()).deliver(paths, "archive", writer.run)
    assert [o.state for o in result.objects] == ["sent", "sent"], [o.detail for o in result.objects]
    originals = [pydicom.dcmread(p) for p in paths]
    assert all(orthanc.has_instance(str(ds.SOPInstanceUID)) for ds in originals)
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    client = DICOMwebClient(orthanc.dicomweb_url, session=session)
    found = client.search_for_instances(study_instance_uid=str(originals[0].StudyInstanceUID))
    got = {item["00080018"]["Value"][0] for item in found}
    assert got == {str(ds.SOPInstanceUID) for ds in originals}
    # A second delivery of the same objects sends nothing.
    again = Deliverer([_stow(orthanc)], RetryPolicy()).deliver(paths, "archive", writer.run)
    assert [o.state for o in again.objects] == ["already_sent", "already_sent"]


def test_wrong_credentials_401_are_dead_lettered(orthanc: OrthancPeer, writer: IndexWriter, tmp_path: Path) -> None:
    paths = write_objects(tmp_path / "r", "unauth")
    result = Deliverer([_stow(orthanc, password="wrong")], RetryPolicy()).deliver(paths, "archive", writer.run)
    assert [o.state for o in result.objects] == ["dead", "dead"]
    assert "HTTP 401" in result.objects[0].detail and result.objects[0].attempts == 1
    assert not orthanc.has_instance(str(pydicom.dcmread(paths[0]).SOPInstanceUID))


def test_unknown_path_404_is_dead_lettered(orthanc: OrthancPeer, writer: IndexWriter, tmp_path: Path) -> None:
    dest = StowDestination(name="bad", url=orthanc.http_url + "/no-such-root",
                           auth=BasicAuth(type="basic", username=USER, password=PASSWORD), timeout=10)
    result = Deliverer([dest], RetryPolicy()).deliver(write_objects(tmp_path / "r", "404")[:1], "bad", writer.run)
    assert result.objects[0].state == "dead" and "HTTP 404" in result.objects[0].detail


def test_connection_refused_is_retried(writer: IndexWriter, tmp_path: Path) -> None:
    dest = StowDestination(name="down", url=f"http://127.0.0.1:{free_port()}/dicom-web", timeout=5)
    result = Deliverer([dest], RetryPolicy(initial=30)).deliver(write_objects(tmp_path / "r", "down"), "down", writer.run)
    assert [o.state for o in result.objects] == ["pending", "pending"]
    assert "ConnectionError" in result.objects[0].detail and result.next_attempt_at is not None


class _Busy(BaseHTTPRequestHandler):
    """A STOW-RS origin that is overloaded: 503 with Retry-After (RFC 9110 10.2.3) to every POST."""

    retry_after = "120"
    posts = 0

    def do_POST(self) -> None:  # noqa: N802 (the name http.server dispatches to)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).posts += 1
        self.send_response(503)
        self.send_header("Retry-After", type(self).retry_after)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
        return


@pytest.mark.parametrize(("header", "wait"), [("120", 120.0), ("1", 30.0)])
def test_503_retry_after_schedules_no_earlier_than_the_server_asks(writer: IndexWriter, tmp_path: Path,
                                                                   header: str, wait: float) -> None:
    _Busy.retry_after, _Busy.posts = header, 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dest = StowDestination(name="busy", url=f"http://127.0.0.1:{server.server_address[1]}/dicom-web", timeout=5)
        deliverer = Deliverer([dest], RetryPolicy(initial=30, cap=600), clock=lambda: 1000.0)
        result = deliverer.deliver(write_objects(tmp_path / "r", "busy"), "busy", writer.run)
    finally:
        server.shutdown()
        server.server_close()
    assert _Busy.posts == 1
    assert [(o.state, o.next_attempt_at) for o in result.objects] == [("pending", 1000.0 + wait)] * 2
    assert "HTTP 503" in result.objects[0].detail


def test_c_store_into_orthanc(orthanc: OrthancPeer, writer: IndexWriter, tmp_path: Path) -> None:
    dest = DimseDestination(name="orthanc-dimse", ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port, acse_timeout=5)
    paths = write_objects(tmp_path / "r", "dimse-orthanc")
    result = Deliverer([dest], RetryPolicy()).deliver(paths, "orthanc-dimse", writer.run)
    assert result.count("sent") == 2, [o.detail for o in result.objects]
    assert all(orthanc.has_instance(str(pydicom.dcmread(p).SOPInstanceUID)) for p in paths)


def test_session_carries_bearer_token_and_follows_no_redirects(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("abc.def\n", encoding="utf-8")
    dest = StowDestination(name="t", url="https://pacs.example.org/dicom-web", auth=BearerAuth(type="bearer", token_file=token_file))
    session = build_session(dest)
    assert session.headers["Authorization"] == "Bearer abc.def"
    assert session.max_redirects == 0 and session.trust_env is False
