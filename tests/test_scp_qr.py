"""The node's Study Root Q/R SCP for its result objects, against DCMTK findscu/getscu/movescu and pynetdicom.

Results are produced for real: two synthetic CT studies go in by C-STORE and
the ct-body model runs on each (ONNX Runtime, CPU), so each study holds one SEG
and one SR written by the node's writers and recorded in the ``results`` table.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.dsutils import split_dataset

from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import free_port, node_config, require_tool, wait_for
from tests.receiver import SCP_AE, RecordingSCP
from tests.scu import send_all

ENV = dict(os.environ, TCP_NODELAY="1")
ENGINES = str(Path(__file__).resolve().parents[1] / "engines")
RULE = {"name": "ct", "models": ["ct-body"], "destinations": [], "match": {"modality": "CT"}}
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
GET = "1.2.840.10008.5.1.4.1.2.2.3"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SR = "1.2.840.10008.5.1.4.1.1.88.34"
CT = "1.2.840.10008.5.1.4.1.1.2"
PEERS = ["TEST_SCU", "FINDSCU", "GETSCU", "MOVESCU", "VIEWER", "ORTHANC"]


class Archive:
    """The running node, its receiver peer, and what the index says the results are."""

    def __init__(self, node: Node, receiver: RecordingSCP, studies: dict[str, Dataset], orthanc_port: int) -> None:
        self.node = node
        self.receiver = receiver
        #: Where a test may start Orthanc: registered with the node as known peer ORTHANC.
        self.orthanc_port = orthanc_port
        self.port = str(node.scp.port)
        #: seed -> first source CT dataset of that study
        self.studies = studies
        conn = node.index.reader()
        try:
            self.rows = [dict(r) for r in conn.execute("SELECT * FROM results")]
        finally:
            conn.close()

    def study(self, seed: str) -> str:
        return str(self.studies[seed].StudyInstanceUID)

    def result(self, seed: str, kind: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["study_instance_uid"] == self.study(seed) and r["kind"] == kind)

    def path(self, row: dict[str, Any]) -> Path:
        return self.node.config.storage.root / row["path"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    receiver = RecordingSCP().start()
    orthanc_port = free_port()
    config = node_config(
        tmp_path_factory.mktemp("qr") / "node",
        routing={"rules": [RULE]}, inference={"models_dir": ENGINES}, api={"enabled": False},
        scp={"allowed_peers": [{"ae_title": ae} for ae in PEERS]},
        delivery={"known_peers": [{"ae_title": SCP_AE, "host": "127.0.0.1", "port": receiver.port},
                                  {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc_port}]},
    )
    node = Node(config)
    node.start()
    try:
        studies = {}
        for seed in ("qra", "qrb"):
            ct = list(ct_datasets(SeriesSpec(slices=4, rows=48, columns=48, seed=seed)))
            assert send_all(node.scp.port, ct) == [0] * 4
            studies[seed] = ct[0]

        def results() -> int:
            conn = node.index.reader()
            try:
                return int(conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])
            finally:
                conn.close()

        assert wait_for(lambda: results() == 4, timeout=90), "the jobs did not write SEG and SR for both studies"
        yield Archive(node, receiver, studies, orthanc_port)
    finally:
        node.stop()
        receiver.stop()


# -- helpers ---------------------------------------------------------------------------

def findscu(archive: Archive, out: Path, *keys: str, calling: str = "FINDSCU") -> tuple[int, list[Dataset]]:
    """Run ``findscu -S -X``; returns its exit code and the extracted response identifiers."""
    tool = require_tool("findscu", "apt-get install dcmtk")
    out.mkdir(parents=True, exist_ok=True)
    args = [tool, "-S", "-X", "-od", str(out), "-aet", calling, "-aec", "DICOM_NODE", "127.0.0.1", archive.port]
    for key in keys:
        args += ["-k", key]
    proc = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=60)
    return proc.returncode, [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def scu(calling: str = "VIEWER") -> AE:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    for model in (FIND, MOVE, GET):
        ae.add_requested_context(model)
    return ae


def identifier(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def post_json(url: str, body: dict[str, Any]) -> Any:
    """POST JSON to a loopback REST API (no proxy) and decode the answer."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


def dataset_bytes(path: Path) -> bytes:
    """The dataset of a Part 10 file as stored, without preamble and file meta."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


# -- C-FIND ----------------------------------------------------------------------------

def test_findscu_study_level_returns_both_studies_with_counts(archive: Archive, tmp_path: Path) -> None:
    rc, found = findscu(archive, tmp_path / "all", "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                        "NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries", "ModalitiesInStudy",
                        "PatientID", "StudyDate", "AccessionNumber", "RetrieveAETitle", "PatientBirthDate")
    assert rc == 0
    by_uid = {str(ds.StudyInstanceUID): ds for ds in found}
    assert set(by_uid) == {archive.study("qra"), archive.study("qrb")}
    for seed in ("qra", "qrb"):
        ds = by_uid[archive.study(seed)]
        assert ds.QueryRetrieveLevel == "STUDY"
        assert int(ds.NumberOfStudyRelatedInstances) == 2 and int(ds.NumberOfStudyRelatedSeries) == 2
        assert list(ds.ModalitiesInStudy) == ["SEG", "SR"]
        assert ds.PatientID == archive.studies[seed].PatientID
        assert ds.StudyDate == archive.studies[seed].StudyDate and ds.RetrieveAETitle == "DICOM_NODE"
        assert "PatientBirthDate" in ds  # asked for, answered (empty when the objects lack it)

    # Single value, wildcard, list of UIDs and date range matching (PS3.4 C.2.2.2).
    _, one = findscu(archive, tmp_path / "pid", "QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID=SYNTH-qrb")
    assert [str(ds.StudyInstanceUID) for ds in one] == [archive.study("qrb")]
    _, wild = findscu(archive, tmp_path / "wild", "QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID=synth*")
    assert wild == [], "LO matching is case-sensitive"
    _, wild = findscu(archive, tmp_path / "wild2", "QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID=SYN?H-qr*")
    assert len(wild) == 2
    _, names = findscu(archive, tmp_path / "pn", "QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientName=synthetic^*")
    assert len(names) == 2, "PN matching ignores case"
    _, listed = findscu(archive, tmp_path / "list", "QueryRetrieveLevel=STUDY",
                        f"StudyInstanceUID={archive.study('qra')}\\9.9.9")
    assert [str(ds.StudyInstanceUID) for ds in listed] == [archive.study("qra")]
    _, dated = findscu(archive, tmp_path / "in", "QueryRetrieveLevel=STUDY", "StudyInstanceUID", "StudyDate=20250101-")
    assert len(dated) == 2
    _, none = findscu(archive, tmp_path / "out", "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                      "StudyDate=19000101-19991231")
    assert none == []
    _, modality = findscu(archive, tmp_path / "mod", "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                          "ModalitiesInStudy=CT")
    assert modality == [], "only the node's results are answered, not the received CT"


def test_findscu_series_and_image_levels(archive: Archive, tmp_path: Path) -> None:
    study = archive.study("qra")
    rc, series = findscu(archive, tmp_path / "series", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study}",
                         "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances", "SeriesNumber",
                         "SeriesDescription", "NumberOfStudyRelatedInstances")
    assert rc == 0
    by_modality = {ds.Modality: ds for ds in series}
    assert set(by_modality) == {"SEG", "SR"}
    for kind, ds in by_modality.items():
        row = archive.result("qra", kind)
        assert ds.SeriesInstanceUID == row["series_instance_uid"] and ds.StudyInstanceUID == study
        assert int(ds.NumberOfSeriesRelatedInstances) == 1 and int(ds.NumberOfStudyRelatedInstances) == 2
        stored = pydicom.dcmread(archive.path(row), stop_before_pixels=True)
        assert ds.SeriesNumber == stored.SeriesNumber and ds.SeriesDescription == stored.SeriesDescription

    _, seg_only = findscu(archive, tmp_path / "seg", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study}",
                          "SeriesInstanceUID", "Modality=SEG")
    assert [ds.SeriesInstanceUID for ds in seg_only] == [archive.result("qra", "SEG")["series_instance_uid"]]

    seg = archive.result("qra", "SEG")
    rc, images = findscu(archive, tmp_path / "image", "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}",
                         f"SeriesInstanceUID={seg['series_instance_uid']}", "SOPInstanceUID", "SOPClassUID",
                         "InstanceNumber")
    assert rc == 0 and len(images) == 1
    assert images[0].SOPInstanceUID == seg["sop_instance_uid"] and images[0].SOPClassUID == SEG
    assert images[0].SeriesInstanceUID == seg["series_instance_uid"] and images[0].InstanceNumber is not None


def _find_statuses(archive: Archive, ds: Dataset) -> list[tuple[int, Dataset | None]]:
    assoc = scu().associate("127.0.0.1", int(archive.port), ae_title="DICOM_NODE")
    assert assoc.is_established
    try:
        return [(int(status.Status), ident) for status, ident in assoc.send_c_find(ds, FIND)]
    finally:
        assoc.release()


def test_bad_identifiers_are_refused_with_a_reason(archive: Archive) -> None:
    for ds in (identifier("PATIENT", PatientID=""), identifier("SERIES", SeriesInstanceUID=""),
               identifier("IMAGE", StudyInstanceUID=archive.study("qra"), SOPInstanceUID=""),
               identifier("SERIES", StudyInstanceUID=f"{archive.study('qra')}\\{archive.study('qrb')}")):
        assert [s for s, _ in _find_statuses(archive, ds)] == [0xA900]
    assoc = scu().associate("127.0.0.1", int(archive.port), ae_title="DICOM_NODE")
    try:
        # C-GET and C-MOVE need the unique key of their level: no "retrieve everything".
        statuses = [int(s.Status) for s, _ in assoc.send_c_get(identifier("STUDY", StudyInstanceUID=""), GET)]
        assert statuses == [0xA900]
    finally:
        assoc.release()


def test_cancelled_find_ends_with_fe00(archive: Archive) -> None:
    """C-CANCEL-RQ right behind the C-FIND-RQ: the SCP answers Cancel (PS3.4 C.4.1.3.1, 0xFE00)."""
    assoc = scu().associate("127.0.0.1", int(archive.port), ae_title="DICOM_NODE")
    assert assoc.is_established
    try:
        context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == FIND)
        # pynetdicom sends the C-FIND-RQ when send_c_find is called, so the cancel follows it at once.
        responses = assoc.send_c_find(identifier("STUDY", StudyInstanceUID="", PatientID=""), FIND, msg_id=7)
        assoc.send_c_cancel(7, context.context_id)
        statuses = [int(status.Status) for status, _ in responses]
        assert statuses[-1] == 0xFE00 and len(statuses) <= 2
    finally:
        assoc.release()


def test_calling_ae_not_on_the_allowlist_cannot_query(archive: Archive, tmp_path: Path) -> None:
    rc, found = findscu(archive, tmp_path / "no", "QueryRetrieveLevel=STUDY", "StudyInstanceUID", calling="INTRUDER")
    assert rc != 0 and found == []
    assoc = scu("INTRUDER").associate("127.0.0.1", int(archive.port), ae_title="DICOM_NODE")
    assert assoc.is_rejected


# -- C-GET -----------------------------------------------------------------------------

def test_getscu_retrieves_seg_and_sr_intact(archive: Archive, tmp_path: Path) -> None:
    getscu = require_tool("getscu", "apt-get install dcmtk")
    out = tmp_path / "got"
    out.mkdir()
    proc = subprocess.run(
        [getscu, "-S", "+B", "-aec", "DICOM_NODE", "-od", str(out), "-pdu", "4096", "127.0.0.1", archive.port,
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={archive.study('qrb')}"],
        env=ENV, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    got = {pydicom.dcmread(p).SOPInstanceUID: p for p in out.iterdir()}
    expected = {archive.result("qrb", kind)["sop_instance_uid"]: archive.result("qrb", kind) for kind in ("SEG", "SR")}
    assert set(got) == set(expected)
    for uid, row in expected.items():
        # +B writes the received dataset to disk bit-preserving: it must be the stored one, byte for byte.
        assert dataset_bytes(got[uid]) == dataset_bytes(archive.path(row))
        received, stored = pydicom.dcmread(got[uid]), pydicom.dcmread(archive.path(row))
        assert received.file_meta.TransferSyntaxUID == stored.file_meta.TransferSyntaxUID
        assert received == stored and received.SOPInstanceUID == uid


def _get_scu(sop_classes: tuple[str, ...], on_store: Any,
             syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)) -> tuple[AE, list, list]:
    ae = AE(ae_title="VIEWER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(GET)
    for sop_class in sop_classes:
        ae.add_requested_context(sop_class, list(syntaxes))
    roles = [build_role(sop_class, scp_role=True) for sop_class in sop_classes]
    return ae, roles, [(evt.EVT_C_STORE, on_store)]


def test_c_get_sends_the_stored_bytes_and_counts(archive: Archive) -> None:
    received: dict[str, bytes] = {}

    def on_store(event: Any) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        return 0x0000

    ae, roles, handlers = _get_scu((SEG, SR), on_store)
    assoc = ae.associate("127.0.0.1", int(archive.port), ae_title="DICOM_NODE", ext_neg=roles, evt_handlers=handlers)
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_get(identifier("STUDY", StudyInstanceUID=archive.study("qra")), GET))
    finally:
        assoc.release()
    statuses = [int(s.Status) for s, _ in responses]
    assert statuses == [0xFF00, 0x0000]
    final = responses[-1][0]
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations,
            final.NumberOfWarningSuboperations) == (2, 0, 0)
    assert responses[0][0].NumberOfRemainingSuboperations == 1
    for kind in ("SEG", "SR"):
        row = archive.result("qra", kind)
        assert received[row["sop_instance_uid"]] == dataset_bytes(archive.path(row)), f"{kind} bytes differ"


def test_c_get_to_an_implicit_only_peer_is_transcoded_with_the_same_uids(archive: Archive) -> None:
    received: list[tuple[str, Dataset]] = []

    def on_store(event: Any) -> int:
        ds = event.dataset
        received.append((str(event.context.transfer_syntax), ds))
        return 0x0000

    seg = archive.result("qra", "SEG")
    ae, roles, handlers = _get_scu((SEG,), on_store, (ImplicitVRLittleEndian,))
    assoc = ae.associate("127.0.0.1", int(archive.port), ae_title="DICOM_NODE", ext_neg=roles, evt_handlers=handlers)
    assert assoc.is_established
    try:
        query = identifier("IMAGE", StudyInstanceUID=archive.study("qra"), SeriesInstanceUID=seg["series_instance_uid"],
                           SOPInstanceUID=seg["sop_instance_uid"])
        statuses = [int(s.Status) for s, _ in assoc.send_c_get(query, GET)]
    finally:
        assoc.release()
    assert statuses == [0x0000]
    [(syntax, ds)] = received
    stored = pydicom.dcmread(archive.path(seg))
    assert stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and syntax == ImplicitVRLittleEndian
    assert ds.SOPInstanceUID == stored.SOPInstanceUID and ds.SeriesInstanceUID == stored.SeriesInstanceUID
    ds.file_meta = stored.file_meta.copy()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    assert (ds.pixel_array == stored.pixel_array).all()


def test_c_get_without_a_fitting_context_fails_with_a702(archive: Archive) -> None:
    ae, roles, handlers = _get_scu((CT,), lambda event: 0x0000)
    assoc = ae.associate("127.0.0.1", int(archive.port), ae_title="DICOM_NODE", ext_neg=roles, evt_handlers=handlers)
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_get(identifier("STUDY", StudyInstanceUID=archive.study("qra")), GET))
    finally:
        assoc.release()
    status, ident = responses[-1]
    assert int(status.Status) == 0xA702 and status.NumberOfFailedSuboperations == 2
    expected = {archive.result("qra", k)["sop_instance_uid"] for k in ("SEG", "SR")}
    assert set(ident.FailedSOPInstanceUIDList) == expected


def test_c_get_refused_store_is_reported_b000_and_cancel_stops(archive: Archive) -> None:
    seg_uid = archive.result("qra", "SEG")["sop_instance_uid"]
    assoc_box: list = []

    def refuse_seg(event: Any) -> int:
        return 0xA700 if event.request.AffectedSOPInstanceUID == seg_uid else 0x0000

    ae, roles, handlers = _get_scu((SEG, SR), refuse_seg)
    assoc = ae.associate("127.0.0.1", int(archive.port), ae_title="DICOM_NODE", ext_neg=roles, evt_handlers=handlers)
    try:
        responses = list(assoc.send_c_get(identifier("STUDY", StudyInstanceUID=archive.study("qra")), GET))
    finally:
        assoc.release()
    status, ident = responses[-1]
    assert int(status.Status) == 0xB000
    assert (status.NumberOfCompletedSuboperations, status.NumberOfFailedSuboperations) == (1, 1)
    assert list(ident.FailedSOPInstanceUIDList) == [seg_uid] or ident.FailedSOPInstanceUIDList == seg_uid

    # A C-CANCEL-RQ sent while the first sub-operation is being stored ends the C-GET with 0xFE00.
    def cancel_then_store(event: Any) -> int:
        assoc_box[0].send_c_cancel(1, context_box[0])
        return 0x0000

    ae, roles, handlers = _get_scu((SEG, SR), cancel_then_store)
    assoc = ae.associate("127.0.0.1", int(archive.port), ae_title="DICOM_NODE", ext_neg=roles, evt_handlers=handlers)
    context_box = [next(cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == GET)]
    assoc_box.append(assoc)
    try:
        responses = list(assoc.send_c_get(identifier("STUDY", StudyInstanceUID=archive.study("qra")), GET, msg_id=1))
    finally:
        assoc.release()
    status = responses[-1][0]
    assert int(status.Status) == 0xFE00
    assert (status.NumberOfCompletedSuboperations, status.NumberOfRemainingSuboperations) == (1, 1)


# -- C-MOVE ----------------------------------------------------------------------------

def test_movescu_to_a_known_peer_delivers_the_results(archive: Archive) -> None:
    movescu = require_tool("movescu", "apt-get install dcmtk")
    before = len(archive.receiver.received)
    proc = subprocess.run(
        [movescu, "-S", "-aec", "DICOM_NODE", "-aem", SCP_AE, "127.0.0.1", archive.port,
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={archive.study('qrb')}"],
        env=ENV, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    arrived = archive.receiver.received[before:]
    expected = {archive.result("qrb", k)["sop_instance_uid"] for k in ("SEG", "SR")}
    assert {r.sop_instance_uid for r in arrived} == expected
    assert {r.calling_ae for r in arrived} == {"DICOM_NODE"}
    for r in arrived:
        row = next(x for x in archive.rows if x["sop_instance_uid"] == r.sop_instance_uid)
        stored = pydicom.dcmread(archive.path(row))
        assert r.dataset.SOPInstanceUID == stored.SOPInstanceUID and r.dataset.StudyInstanceUID == stored.StudyInstanceUID


def test_c_move_counts_and_unknown_destination(archive: Archive) -> None:
    before = len(archive.receiver.received)
    assoc = scu("VIEWER").associate("127.0.0.1", int(archive.port), ae_title="DICOM_NODE")
    assert assoc.is_established
    try:
        seg = archive.result("qra", "SEG")
        move = identifier("SERIES", StudyInstanceUID=archive.study("qra"), SeriesInstanceUID=seg["series_instance_uid"])
        responses = list(assoc.send_c_move(move, SCP_AE, MOVE))
        unknown = list(assoc.send_c_move(identifier("STUDY", StudyInstanceUID=archive.study("qra")), "NOBODY", MOVE))
    finally:
        assoc.release()
    final = responses[-1][0]
    assert int(final.Status) == 0x0000 and final.NumberOfCompletedSuboperations == 1
    assert archive.receiver.uids()[before:] == [seg["sop_instance_uid"]]
    assert [int(s.Status) for s, _ in unknown] == [0xA801]
    assert len(archive.receiver.received) == before + 1


def test_orthanc_queries_the_node_and_pulls_the_results_by_c_move(archive: Archive, tmp_path: Path) -> None:
    """A real PACS (Orthanc) finds the node's results with C-FIND and pulls them with C-MOVE to itself."""
    require_tool("Orthanc", "apt-get install orthanc")
    from tests.peers.orthanc import run_orthanc

    study = archive.study("qrb")
    modalities = {"node": ["DICOM_NODE", "127.0.0.1", int(archive.port)]}
    with run_orthanc(tmp_path / "orthanc", aet="ORTHANC", dicom_port=archive.orthanc_port,
                     extra={"DicomModalities": modalities}) as orthanc:
        query = post_json(f"{orthanc.http_url}/modalities/node/query",
                          {"Level": "Series", "Query": {"StudyInstanceUID": study, "Modality": ""}})["ID"]
        answers = [orthanc.get(f"/queries/{query}/answers/{n}/content?simplify")
                   for n in range(len(orthanc.get(f"/queries/{query}/answers")))]
        assert sorted(a["Modality"] for a in answers) == ["SEG", "SR"]
        assert {a["SeriesInstanceUID"] for a in answers} == {archive.result("qrb", k)["series_instance_uid"]
                                                               for k in ("SEG", "SR")}
        post_json(f"{orthanc.http_url}/queries/{query}/retrieve", {"TargetAet": "ORTHANC", "Synchronous": True})
        for kind in ("SEG", "SR"):
            assert orthanc.has_instance(archive.result("qrb", kind)["sop_instance_uid"]), kind
