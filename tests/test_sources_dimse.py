"""DIMSE Query/Retrieve SCU against a real Orthanc: C-FIND at three levels, C-GET, C-MOVE, failures.

One Orthanc serves the module. It knows the node's SCP as modality "node"
(AE DICOM_NODE on a fixed loopback port), which lets it answer our C-FIND /
C-GET / C-MOVE and be told to C-MOVE to us. It holds two synthetic studies
loaded through its REST API: study A with a 5-slice and a 3-slice CT series,
study B with one 2-slice "MR"-labelled series.
"""

from __future__ import annotations

import io
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_node.config.sources import RemoteNode
from dicom_node.errors import SourceError
from dicom_node.sources.dimse import DimseSource
from dicom_node.sources.sink import RetrievalSink, Stored
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import free_port, require_tool, wait_for

SCP_PORT = free_port()


@dataclass
class Loaded:
    """What Orthanc holds: study -> series -> datasets (in slice order)."""

    studies: dict[str, dict[str, list[pydicom.Dataset]]]
    dicom_port: int

    def series(self, study: str) -> list[str]:
        return list(self.studies[study])

    def uids(self, study: str, series: str | None = None) -> set[str]:
        return {str(ds.SOPInstanceUID) for s, dss in self.studies[study].items() if series in (None, s) for ds in dss}


def _datasets(seed: str, slices: int, modality: str = "CT", study_of: pydicom.Dataset | None = None,
              number: int = 1) -> list[pydicom.Dataset]:
    dss = list(ct_datasets(SeriesSpec(slices=slices, rows=32, columns=32, seed=seed, modality=modality)))
    for ds in dss:
        if study_of is not None:  # a second series of the same study (and patient)
            ds.StudyInstanceUID = study_of.StudyInstanceUID
            ds.PatientID = study_of.PatientID
        ds.SeriesNumber = number
    return dss


def post_instances(http_url: str, datasets: list[pydicom.Dataset]) -> None:
    """Load datasets into Orthanc through REST POST /instances."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for ds in datasets:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        request = urllib.request.Request(http_url + "/instances", data=buf.getvalue(), method="POST",
                                         headers={"Content-Type": "application/dicom"})
        with opener.open(request, timeout=10) as response:
            assert response.status == 200


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    require_tool("Orthanc", "apt-get install orthanc orthanc-dicomweb")
    from tests.peers.orthanc import run_orthanc

    a1 = _datasets("dimse-a1", 5)
    a2 = _datasets("dimse-a2", 3, study_of=a1[0], number=2)
    b1 = _datasets("dimse-b1", 2, modality="MR")
    extra = {"DicomModalities": {"node": {"AET": "DICOM_NODE", "Host": "127.0.0.1", "Port": SCP_PORT}}}
    with run_orthanc(tmp_path_factory.mktemp("orthanc"), extra=extra) as peer:
        post_instances(peer.http_url, a1 + a2 + b1)
        studies: dict[str, dict[str, list[pydicom.Dataset]]] = {}
        for dss in (a1, a2, b1):
            studies.setdefault(str(dss[0].StudyInstanceUID), {})[str(dss[0].SeriesInstanceUID)] = dss
        yield Loaded(studies, peer.dicom_port)


def remote(port: int, **fields: Any) -> RemoteNode:
    return RemoteNode(**{"name": "orthanc", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": port,
                         "acse_timeout": 10, "dimse_timeout": 20, "network_timeout": 20, **fields})


@pytest.fixture
def node(start_node: Any, tmp_path: Path) -> Any:
    return start_node(tmp_path / "node", scp={"port": SCP_PORT}, api={"enabled": False})


def _study_a(orthanc: Loaded) -> str:
    return next(s for s, series in orthanc.studies.items() if len(series) == 2)


def _study_b(orthanc: Loaded) -> str:
    return next(s for s, series in orthanc.studies.items() if len(series) == 1)


def _rows(node: Any) -> list[Any]:
    conn = node.index.reader()
    try:
        return conn.execute("SELECT * FROM instances").fetchall()
    finally:
        conn.close()


def test_c_find_at_study_series_and_image_level_with_counts(orthanc: Loaded, node: Any) -> None:
    source = DimseSource(remote(orthanc.dicom_port), node)
    a, b = _study_a(orthanc), _study_b(orthanc)

    studies = {s.study_instance_uid: s for s in source.find_studies({}, limit=10)}
    assert set(studies) == {a, b}
    assert studies[a].instances == 8 and studies[a].modalities == ("CT",) and studies[a].study_date == "20260101"
    assert studies[b].instances == 2 and studies[b].modalities == ("MR",)
    # Matching keys by keyword; a comma list is a value list, as in QIDO-RS.
    assert [s.study_instance_uid for s in source.find_studies({"ModalitiesInStudy": "MR"}, 10)] == [b]
    assert len(source.find_studies({"ModalitiesInStudy": "MR,CT", "StudyDate": "20250101-20261231"}, 10)) == 2
    assert source.find_studies({"StudyDate": "20270101-"}, 10) == []
    # Paging is client side over a stable order.
    ordered = [s.study_instance_uid for s in source.find_studies({}, 10)]
    assert [s.study_instance_uid for s in source.find_studies({}, 1, offset=1)] == ordered[1:2]

    series = source.find_series(a)
    assert [(s.series_instance_uid, s.instances, s.modality) for s in series] == [
        (uid, len(dss), "CT") for uid, dss in orthanc.studies[a].items()]
    first = orthanc.series(a)[0]
    assert source.find_instances(a, first) == [str(ds.SOPInstanceUID) for ds in orthanc.studies[a][first]]


def test_c_get_of_a_series_lands_in_the_index_complete_and_readable(orthanc: Loaded, node: Any) -> None:
    a = _study_a(orthanc)
    series = orthanc.series(a)[0]
    source = DimseSource(remote(orthanc.dicom_port), node)
    with source.sink() as sink:
        result = source.retrieve(a, series, sink)
    assert set(result.stored) == orthanc.uids(a, series) and not result.duplicates and result.ok
    rows = _rows(node)
    assert {r["sop_instance_uid"] for r in rows} == orthanc.uids(a, series)
    assert {r["source"] for r in rows} == {"qr:orthanc"} and {r["calling_ae"] for r in rows} == {"orthanc"}
    originals = {str(ds.SOPInstanceUID): ds for ds in orthanc.studies[a][series]}
    for row in rows:
        stored = pydicom.dcmread(node.spool.path_for(row["path"]))
        assert stored.PixelData == originals[stored.SOPInstanceUID].PixelData
    assert wait_for(lambda: node.index.counts()["complete"] == 1, timeout=10)


def test_c_get_of_a_whole_study_then_again_gives_duplicates(orthanc: Loaded, node: Any) -> None:
    a = _study_a(orthanc)
    source = DimseSource(remote(orthanc.dicom_port), node)
    with source.sink() as sink:
        first = source.retrieve(a, None, sink)
    assert set(first.stored) == orthanc.uids(a) and first.ok
    assert wait_for(lambda: node.index.counts()["complete"] == 2, timeout=10)
    with source.sink() as sink:
        again = source.retrieve(a, None, sink)
    assert not again.stored and set(again.duplicates) == orthanc.uids(a)
    assert node.index.counts()["instances"] == 8


def test_c_get_of_some_instances_brings_only_those(orthanc: Loaded, node: Any) -> None:
    a = _study_a(orthanc)
    series = orthanc.series(a)[0]
    wanted = [str(ds.SOPInstanceUID) for ds in orthanc.studies[a][series][3:]]
    source = DimseSource(remote(orthanc.dicom_port), node)
    with source.sink() as sink:
        result = source.retrieve(a, series, sink, instances=wanted)
    assert sorted(result.stored) == sorted(wanted)
    assert {r["sop_instance_uid"] for r in _rows(node)} == set(wanted)


def test_c_move_to_the_node_scp(orthanc: Loaded, node: Any) -> None:
    a = _study_a(orthanc)
    source = DimseSource(remote(orthanc.dicom_port, retrieve="c-move"), node)
    with source.sink() as sink:
        result = source.retrieve(a, None, sink)
    assert set(result.stored) == orthanc.uids(a) and result.ok
    rows = _rows(node)
    # Moved instances arrive over Orthanc's own association to our SCP, then get the remote's label.
    assert {r["sop_instance_uid"] for r in rows} == orthanc.uids(a)
    assert {r["calling_ae"] for r in rows} == {"ORTHANC"} and {r["source"] for r in rows} == {"qr:orthanc"}
    assert wait_for(lambda: node.index.counts()["complete"] == 2, timeout=10)
    heard: list[Stored] = []
    with RetrievalSink(node, "orthanc", "qr:orthanc", on_stored=heard.append) as sink:
        again = source.retrieve(a, orthanc.series(a)[1], sink)
    assert not again.stored and set(again.duplicates) == orthanc.uids(a, orthanc.series(a)[1])
    # The sink's callback (a poller's seen set) hears of moved instances too.
    assert {(s.sop_instance_uid, s.outcome) for s in heard} == {(u, "duplicate") for u in again.duplicates}


class ListSink:
    """A sink that keeps its own store (as a retrieval session does): PS3.10 bytes in a dict."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def store_part10(self, chunks: Any) -> Stored:
        data = chunks if isinstance(chunks, bytes) else b"".join(chunks)
        uid = str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
        outcome = "duplicate" if uid in self.files else "stored"
        self.files[uid] = data
        return Stored(0, None, uid, outcome)


def test_c_move_hands_moved_files_to_a_sink_with_its_own_store(orthanc: Loaded, node: Any) -> None:
    b = _study_b(orthanc)
    source = DimseSource(remote(orthanc.dicom_port, retrieve="c-move"), node)
    sink = ListSink()
    result = source.retrieve(b, orthanc.series(b)[0], sink)
    assert set(result.stored) == set(sink.files) == orthanc.uids(b)


def test_c_move_to_an_unknown_destination_is_a_clear_error(orthanc: Loaded, node: Any) -> None:
    source = DimseSource(remote(orthanc.dicom_port, retrieve="c-move", move_destination="NOBODY"), node)
    with source.sink() as sink, pytest.raises(SourceError) as err:
        source.retrieve(_study_b(orthanc), None, sink)
    # Orthanc answers 0xC000 here (the standard's 0xA801 would be "move destination unknown").
    assert "C-MOVE to NOBODY failed at ORTHANC@127.0.0.1" in str(err.value) and "status 0x" in str(err.value)
    assert node.index.counts()["instances"] == 0


@pytest.mark.parametrize("method", ["c-get", "c-move"])
def test_unknown_study_is_reported_as_not_found(orthanc: Loaded, node: Any, method: str) -> None:
    source = DimseSource(remote(orthanc.dicom_port, retrieve=method), node)
    with source.sink() as sink, pytest.raises(SourceError) as err:
        source.retrieve("1.2.826.0.1.3680043.8.498.1", None, sink)
    assert "study 1.2.826.0.1.3680043.8.498.1 not found at ORTHANC@127.0.0.1" in str(err.value)
    assert not err.value.retryable
    assert node.index.counts()["instances"] == 0
    assert source.find_series("1.2.826.0.1.3680043.8.498.1") == []


def test_remote_down_is_a_retryable_error(node: Any) -> None:
    source = DimseSource(remote(free_port()), node)
    with pytest.raises(SourceError) as err:
        source.find_studies({}, 10)
    assert "cannot connect to ORTHANC@127.0.0.1" in str(err.value) and err.value.retryable


def test_rejected_association_names_the_reason(orthanc: Loaded, node: Any) -> None:
    source = DimseSource(remote(orthanc.dicom_port, ae_title="NOT_ORTHANC"), node)
    with pytest.raises(SourceError) as err:
        source.find_studies({}, 10)
    message = str(err.value)
    assert "association rejected by NOT_ORTHANC@127.0.0.1" in message and "Called AE title not recognised" in message
    assert "Rejected Permanent" in message and not err.value.retryable


def test_c_find_refused_for_an_unknown_calling_ae_maps_the_failure_status(orthanc: Loaded, node: Any) -> None:
    # Orthanc only answers C-FIND for modalities it knows (DicomAlwaysAllowFind is false).
    source = DimseSource(remote(orthanc.dicom_port, calling_ae="STRANGER"), node)
    with pytest.raises(SourceError) as err:
        source.find_studies({}, 10)
    assert "ORTHANC@127.0.0.1" in str(err.value) and "aborted the association during C-FIND" in str(err.value)
    assert "'STRANGER'" in str(err.value)


def test_bad_filters_and_uids_are_refused_before_any_network(node: Any) -> None:
    source = DimseSource(remote(free_port()), node)
    with pytest.raises(SourceError, match="not a DICOM keyword"):
        source.find_studies({"NoSuchKeyword": "x"}, 10)
    with pytest.raises(SourceError, match="not a valid UID"):
        source.find_series("../../etc/passwd")
    with pytest.raises(SourceError, match="needs their series UID"):
        source.retrieve("1.2.3", None, object(), instances=["1.2.3.4"])


@pytest.mark.parametrize("method", ["c-get", "c-move"])
def test_a_dimse_poller_retrieves_everything_once(orthanc: Loaded, start_node: Any, tmp_path: Path,
                                                  method: str) -> None:
    entry = {"name": "orthanc", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port,
             "retrieve": method, "dimse_timeout": 20}
    sources = {"remotes": [entry], "pollers": [{"name": "pacs", "kind": "dimse", "remote": "orthanc",
                                                "interval": 3600.0, "page_size": 1}]}
    node = start_node(tmp_path / "polled", scp={"port": SCP_PORT}, api={"enabled": False}, sources=sources)
    assert wait_for(lambda: node.pollers.status().get("pacs", {}).get("polls", 0) >= 1, timeout=30)
    assert node.pollers.status()["pacs"]["state"] == "idle", node.pollers.status()["pacs"]
    every = set().union(*(orthanc.uids(s) for s in orthanc.studies))
    rows = _rows(node)
    assert {r["sop_instance_uid"] for r in rows} == every
    assert {r["source"] for r in rows} == {"qr:orthanc"}
    assert wait_for(lambda: node.index.counts()["complete"] == 3, timeout=10)
    # The seen set holds every instance, so the next poll asks C-FIND only and retrieves nothing.
    report = node.pollers.run_cycle("pacs")
    assert report.ok and report.studies == 2 and report.arrived == []
    assert node.index.counts()["instances"] == len(every)


def test_c_find_and_c_get_over_tls(node: Any, tmp_path: Path) -> None:
    require_tool("Orthanc", "apt-get install orthanc")
    openssl = require_tool("openssl", "apt-get install openssl")
    from tests.peers.orthanc import run_orthanc

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    # One self-signed pair for both sides; Orthanc requires and checks our client certificate.
    extra = {"DicomTlsEnabled": True, "DicomTlsCertificate": str(cert), "DicomTlsPrivateKey": str(key),
             "DicomTlsTrustedCertificates": str(cert), "DicomTlsRemoteCertificateRequired": True,
             "DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True}
    dss = _datasets("dimse-tls", 2)
    study, series = str(dss[0].StudyInstanceUID), str(dss[0].SeriesInstanceUID)
    with run_orthanc(tmp_path / "orthanc-tls", extra=extra) as peer:
        post_instances(peer.http_url, dss)
        source = DimseSource(remote(peer.dicom_port, ca_file=cert, cert_file=cert, key_file=key), node)
        assert [s.instances for s in source.find_series(study)] == [2]
        with source.sink() as sink:
            assert len(source.retrieve(study, series, sink).stored) == 2
        untrusted = DimseSource(remote(peer.dicom_port, tls=True), node)
        with pytest.raises(SourceError) as err:
            untrusted.find_series(study)
        assert "cannot connect" in str(err.value) and "TLS" in str(err.value)
        plain = DimseSource(remote(peer.dicom_port), node)
        with pytest.raises(SourceError, match="aborted or timed out"):
            plain.find_series(study)  # plain DICOM to a TLS port: the handshake never comes
    assert node.index.counts()["instances"] == 2
