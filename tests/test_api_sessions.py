"""Retrieval sessions (``PUT|GET|DELETE /v1/sessions``, predict by ``session_id``) on a real uvicorn server."""

from __future__ import annotations

import base64
import io
import socket
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from dicom_node.api.server import ApiFrontend
from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import free_port, node_config, require_tool, wait_for
from tests.models.image_store import build_models_dir
from tests.receiver import WadoServer, multipart_related


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return build_models_dir(tmp_path / "models")


def dicom_files(slices: int = 4, size: int = 48, seed: str = "session", modality: str = "CT") -> list[bytes]:
    out = []
    for ds in ct_datasets(SeriesSpec(slices=slices, rows=size, columns=size, seed=seed, modality=modality)):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def related(parts: list[bytes], boundary: str = "s3ss10n") -> tuple[bytes, str]:
    return multipart_related(parts, boundary)


def url(node: Node, path: str) -> str:
    return f"http://127.0.0.1:{node.api.port}{path}"


def put_upload(node: Node, parts: list[bytes], expiry: float | None = None) -> httpx.Response:
    body, ctype = related(parts)
    params = {"expiry": expiry} if expiry is not None else {}
    return httpx.put(url(node, "/v1/sessions"), content=body, headers={"Content-Type": ctype}, params=params, timeout=60)


def predict(node: Node, instances: list[dict[str, Any]], model: str = "ct-body") -> list[dict[str, Any]]:
    r = httpx.post(url(node, f"/v1/models/{model}:predict"), json={"instances": instances}, timeout=120)
    assert r.status_code == 200, r.text
    return list(r.json()["predictions"])


def session_dir(node: Node, session_id: str) -> Path:
    return Path(node.config.storage.root).resolve() / "sessions" / session_id


def start(start_node: Any, models_dir: Path, root: Path | None = None, **sections: Any) -> Node:
    api = {"outbound_allowlist": ["127.0.0.1"], **sections.pop("api", {})}
    return start_node(root, inference={"models_dir": str(models_dir), "backends": ["onnxruntime"]}, api=api, **sections)


@pytest.fixture
def series_files() -> list[bytes]:
    return dicom_files(slices=4, seed="lifecycle")


@pytest.fixture
def wado(series_files: list[bytes]) -> Iterator[str]:
    server = WadoServer(series_files)
    try:
        yield f"{server.url}/studies/1/series"
    finally:
        server.close()


def test_upload_session_lifecycle(start_node: Any, models_dir: Path, series_files: list[bytes], wado: str,
                                  storage_backend: dict[str, str]) -> None:
    node = start(start_node, models_dir, storage=storage_backend)
    r = put_upload(node, series_files)
    assert r.status_code == 200, r.text
    created = r.json()
    sid = created["session_id"]
    assert created["status"] == "ready" and created["reason"] is None
    assert created["expiry"] == node.config.sources.session_expiry
    folder = session_dir(node, sid)
    assert len(list(folder.glob("*.dcm"))) == 4
    info = httpx.get(url(node, f"/v1/sessions/{sid}")).json()
    import pydicom

    first = pydicom.dcmread(io.BytesIO(series_files[0]))
    assert info["status"] == "ready" and info["kind"] == "upload" and info["instances"] == 4
    assert info["series"] == [{"study_instance_uid": first.StudyInstanceUID, "series_instance_uid": first.SeriesInstanceUID,
                               "modality": "CT", "instances": 4}]
    # Nothing of the session reached the routed spool or the instance index.
    assert node.index.counts()["instances"] == 0

    by_session, by_series, by_uid = predict(node, [
        {"session_id": sid}, {"dicomweb_uri": wado}, {"session_id": sid, "series_uid": first.SeriesInstanceUID}])
    assert "labels" in by_session, by_session
    assert by_session == by_series == by_uid
    assert by_session["labels"][0]["voxels"] > 0 and by_session["labels"][0]["rle"]["shape"] == [4, 48, 48]

    r = httpx.delete(url(node, f"/v1/sessions/{sid}"))
    assert r.status_code == 200 and r.json()["status"] == "closed"
    assert not folder.exists()
    r = httpx.get(url(node, f"/v1/sessions/{sid}"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert httpx.delete(url(node, f"/v1/sessions/{sid}")).status_code == 404
    (gone,) = predict(node, [{"session_id": sid}])
    assert gone["error"]["code"] == "session_unavailable" and "unknown, deleted or expired" in gone["error"]["description"]


def test_form_upload_bad_parts_and_series_choice(start_node: Any, models_dir: Path) -> None:
    node = start(start_node, models_dir)
    a, b = dicom_files(slices=2, seed="form-a"), dicom_files(slices=1, seed="form-b")
    files = [("file", (f"{i}.dcm", data, "application/dicom")) for i, data in enumerate(a + b)]
    files.append(("notes", ("notes.txt", b"not DICOM at all", "text/plain")))
    r = httpx.put(url(node, "/v1/sessions"), files=files, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready" and body["reason"].startswith("1 instance(s) not stored")
    sid = body["session_id"]
    info = httpx.get(url(node, f"/v1/sessions/{sid}")).json()
    assert info["instances"] == 3 and sorted(s["instances"] for s in info["series"]) == [1, 2]
    (ambiguous, unknown_series) = predict(node, [{"session_id": sid}, {"session_id": sid, "series_uid": "1.2.3"}])
    assert ambiguous["error"]["code"] == "session_unavailable" and "holds 2 series" in ambiguous["error"]["description"]
    assert "holds no series" in unknown_series["error"]["description"]
    one = next(s for s in info["series"] if s["instances"] == 1)["series_instance_uid"]
    (single, direct) = predict(node, [{"session_id": sid, "series_uid": one},
                                      {"input_bytes": base64.b64encode(b[0]).decode()}])
    assert "labels" in single and single == direct

    # Nothing storable: refused, and no session (or folder) is left behind.
    before = set((Path(node.config.storage.root).resolve() / "sessions").iterdir())
    r = httpx.put(url(node, "/v1/sessions"), files=[("f", ("x.dcm", b"\0" * 300, "application/dicom"))])
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_dicom_stored", r.text
    r = put_upload(node, [])
    assert r.status_code == 400, r.text
    assert set((Path(node.config.storage.root).resolve() / "sessions").iterdir()) == before


def test_expiry_sweeps_and_restart_keeps_sessions(tmp_path: Path, start_node: Any, models_dir: Path,
                                                  storage_backend: dict[str, str]) -> None:
    root = tmp_path / "restart"
    config = node_config(root, inference={"models_dir": str(models_dir), "backends": ["onnxruntime"]},
                         storage=storage_backend)
    first = Node(config, frontend=ApiFrontend)
    first.start()
    try:
        files = dicom_files(slices=2, seed="restart")
        keep = put_upload(first, files, expiry=600).json()
        short = put_upload(first, files, expiry=1.5).json()
        soon = put_upload(first, files[:1], expiry=4).json()
        assert keep["status"] == short["status"] == soon["status"] == "ready"
        # The sweeper of a running node removes the expired session and its files.
        assert wait_for(lambda: not session_dir(first, short["session_id"]).exists(), timeout=6)
        assert httpx.get(url(first, f"/v1/sessions/{short['session_id']}")).status_code == 404
        before = predict(first, [{"session_id": keep["session_id"]}])[0]
        # A retrieval the node never finished (as after a crash): the row says "retrieving", no thread runs it.
        cut = first.sessions.open("dicomweb", "web", {}, 600)
    finally:
        first.stop()
    assert session_dir(first, soon["session_id"]).exists()
    second = start(start_node, models_dir, root=root, storage=storage_backend)
    info = httpx.get(url(second, f"/v1/sessions/{keep['session_id']}")).json()
    assert info["status"] == "ready" and info["instances"] == 2
    assert predict(second, [{"session_id": keep["session_id"]}])[0] == before
    cut_info = httpx.get(url(second, f"/v1/sessions/{cut['id']}")).json()
    assert cut_info["status"] == "failed" and "interrupted by a restart" in cut_info["reason"]
    # Sweeping resumes after the restart: the session that expires later goes too.
    assert wait_for(lambda: not session_dir(second, soon["session_id"]).exists(), timeout=8)
    assert session_dir(second, keep["session_id"]).exists()


class _SlowWado(BaseHTTPRequestHandler):
    """A WADO-RS server that sends all but the last part of a series, then holds the rest until ``release`` is set.

    The parts are large (the client reads 1 MiB chunks) so the first ones reach the session before the hold.
    """

    files: ClassVar[list[bytes]] = []
    release: ClassVar[threading.Event] = threading.Event()

    def do_GET(self) -> None:
        body, ctype = related(self.files, "SlOw")
        hold = body.rindex(b"--SlOw", 0, len(body) - 10) + len(b"--SlOw")
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:hold])
        self.wfile.flush()
        self.release.wait(30)
        self.wfile.write(body[hold:])

    def log_message(self, *args: Any) -> None:
        """Quiet."""


def test_delete_during_retrieval_stops_it(start_node: Any, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Handler(_SlowWado):
        files = dicom_files(slices=4, size=512, seed="slow")
        release = threading.Event()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        node = start(start_node, models_dir, sources={"pollers": [
            {"name": "slow", "kind": "dicomweb", "url": f"http://127.0.0.1:{server.server_address[1]}", "enabled": False}]})
        r = httpx.put(url(node, "/v1/sessions"), json={"dicomweb": {"node": "slow", "study_uid": "1.2.3"}})
        assert r.status_code == 202, r.text
        sid = r.json()["session_id"]
        assert wait_for(lambda: httpx.get(url(node, f"/v1/sessions/{sid}")).json()["instances"] >= 1, timeout=10)
        assert httpx.get(url(node, f"/v1/sessions/{sid}")).json()["status"] == "retrieving"
        monkeypatch.setattr("dicom_node.sources.sessions.MAX_ACTIVE_RETRIEVALS", 1)
        busy = httpx.put(url(node, "/v1/sessions"), json={"dicomweb": {"node": "slow", "study_uid": "1.2.4"}})
        assert busy.status_code == 429 and busy.json()["error"]["code"] == "busy", busy.text
        assert httpx.delete(url(node, f"/v1/sessions/{sid}")).status_code == 200
        assert not session_dir(node, sid).exists()
        Handler.release.set()
        assert wait_for(lambda: not node.sessions._active, timeout=10)  # the retrieval ended
        assert not session_dir(node, sid).exists()
        assert httpx.get(url(node, f"/v1/sessions/{sid}")).status_code == 404
    finally:
        Handler.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback socket that records whether anyone connected."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    sock.settimeout(0.5)
    try:
        yield sock
    finally:
        sock.close()


def test_refusals(start_node: Any, models_dir: Path, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    node = start(start_node, models_dir, sources={
        "remotes": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": port}],
        "pollers": [{"name": "old", "kind": "dimse", "remote": "pacs", "enabled": False}],  # no poll connects
        "max_session_expiry": 100.0,
    })
    put = url(node, "/v1/sessions")
    for expiry in ("0", "-5", "101", "nan", "abc"):
        r = httpx.put(put, params={"expiry": expiry}, json={"dicom": {"node": "pacs", "study_uid": "1.2.3"}})
        assert r.status_code == 400 and "expiry" in r.json()["error"]["description"], (expiry, r.text)
    study = {"study_uid": "1.2.840.1", "series_uid": "1.2.840.1.2"}
    refused = [
        ({"dicom": {"server_address": "127.0.0.1", "server_port": port, "ae_title": "OTHER", **study}}, 403, "not a configured"),
        ({"dicom": {"server_address": "10.9.8.7", "server_port": 104, "ae_title": "PACS", **study}}, 403, "not a configured"),
        ({"dicom": {"server_address": "127.0.0.1", "server_port": port + 1, "ae_title": "PACS", **study}}, 403, "not a configured"),
        ({"dicom": {"node": "nope", **study}}, 403, "not a configured"),
        ({"dicom": {"node": "pacs", "server_address": "10.9.8.7", "server_port": 104, "ae_title": "PACS", **study}}, 400, "disagree"),
        ({"dicom": {"server_address": "127.0.0.1", **study}}, 400, "server_port"),
        ({"dicom": {"node": "pacs", "study_uid": "not-a-uid"}}, 400, "study_uid"),
        ({"dicom": {"node": "pacs", "query_level": "SERIES", "study_uid": "1.2.3"}}, 400, "series_uid"),
        ({"dicom": {"node": "pacs"}}, 400, "patient_id"),
        ({"dicomweb": {"node": "nope", **study}}, 403, "not a configured"),
        ({"dicomweb": {"node": "old", **study}}, 400, "dimse source"),
        ({"dicom": {"node": "pacs", **study}, "dicomweb": {"node": "old"}}, 400, "exactly one"),
        ({}, 400, "exactly one"),
        ({"dicom": {"node": "pacs", "colour": "red"}}, 400, "colour"),
    ]
    for body, status, words in refused:
        r = httpx.put(put, json=body)
        assert r.status_code == status and words in r.json()["error"]["description"], (body, r.text)
    with pytest.raises(socket.timeout):
        listener.accept()  # no refused request opened a connection to the remote's port
    r = httpx.put(put, content=b"hello", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    for junk in (b"{not json", b"\xc9", b"[1, 2]"):
        r = httpx.put(put, content=junk, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", (junk, r.text)
    for sid in ("0" * 32, "../../etc", "x" * 200):
        r = httpx.get(url(node, f"/v1/sessions/{sid}"))
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", sid
    (unknown, wrong, both) = predict(node, [{"session_id": "0" * 32}, {"session_id": 5},
                                            {"session_id": "0" * 32, "input_bytes": "AAAA"}])
    assert unknown["error"]["code"] == "session_unavailable"
    assert wrong["error"]["code"] == both["error"]["code"] == "invalid_instance"


def test_scopes(start_node: Any, models_dir: Path) -> None:
    import hashlib

    def key(name: str, secret: str, scopes: list[str]) -> dict[str, Any]:
        return {"name": name, "sha256": hashlib.sha256(secret.encode()).hexdigest(), "scopes": scopes}

    node = start(start_node, models_dir, api={"api_keys": [key("reader", "r" * 32, ["read"]),
                                                           key("submitter", "s" * 32, ["submit", "read"])]})
    body, ctype = related(dicom_files(slices=1, seed="scopes"))
    put = url(node, "/v1/sessions")
    assert httpx.put(put, content=body, headers={"Content-Type": ctype}).status_code == 401
    r = httpx.put(put, content=body, headers={"Content-Type": ctype, "X-API-Key": "r" * 32})
    assert r.status_code == 403 and "submit" in r.json()["error"]["description"]
    r = httpx.put(put, content=body, headers={"Content-Type": ctype, "X-API-Key": "s" * 32})
    assert r.status_code == 200, r.text
    sid = r.json()["session_id"]
    assert httpx.get(url(node, f"/v1/sessions/{sid}"), headers={"X-API-Key": "r" * 32}).status_code == 200
    assert httpx.delete(url(node, f"/v1/sessions/{sid}"), headers={"X-API-Key": "r" * 32}).status_code == 403
    assert httpx.delete(url(node, f"/v1/sessions/{sid}"), headers={"X-API-Key": "s" * 32}).status_code == 200


# --- Retrieval from real peers: Orthanc over DICOMweb (WADO-RS) and DIMSE (C-GET, C-MOVE) ---------------------------

SCP_PORT = free_port()


def _datasets(seed: str, slices: int, study_of: Any = None, number: int = 1) -> list[Any]:
    dss = list(ct_datasets(SeriesSpec(slices=slices, rows=48, columns=48, seed=seed)))
    for ds in dss:
        if study_of is not None:  # a second series of the same study and patient
            ds.StudyInstanceUID, ds.PatientID = study_of.StudyInstanceUID, study_of.PatientID
        ds.SeriesNumber = number
    return dss


@dataclass
class Pacs:
    """The module's Orthanc and what it holds.

    One patient: a study with a 4-slice and a 2-slice CT series, and an earlier study
    with a 3-slice series (``other_study``, ``other_series``). ``instances`` maps each
    series to its SOP Instance UIDs.
    """

    peer: Any
    study: str
    series: list[str]
    patient_id: str
    other_study: str
    other_series: str
    instances: dict[str, list[str]]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    require_tool("Orthanc", "apt-get install orthanc orthanc-dicomweb")
    from tests.peers.orthanc import run_orthanc

    one = _datasets("pacs-1", 4)
    two = _datasets("pacs-2", 2, study_of=one[0], number=2)
    earlier = _datasets("pacs-3", 3, number=3)
    for ds in earlier:  # another study of the same patient
        ds.PatientID, ds.PatientName = one[0].PatientID, one[0].PatientName
    assert earlier[0].StudyInstanceUID != one[0].StudyInstanceUID
    extra = {"DicomModalities": {"node": {"AET": "DICOM_NODE", "Host": "127.0.0.1", "Port": SCP_PORT}}}
    with run_orthanc(tmp_path_factory.mktemp("orthanc"), extra=extra) as peer:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for ds in one + two + earlier:
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            request = urllib.request.Request(peer.http_url + "/instances", data=buf.getvalue(), method="POST",
                                             headers={"Content-Type": "application/dicom"})
            with opener.open(request, timeout=10) as response:
                assert response.status == 200
        instances: dict[str, list[str]] = {}
        for ds in one + two + earlier:
            instances.setdefault(str(ds.SeriesInstanceUID), []).append(str(ds.SOPInstanceUID))
        yield Pacs(peer, str(one[0].StudyInstanceUID), [str(one[0].SeriesInstanceUID), str(two[0].SeriesInstanceUID)],
                   str(one[0].PatientID), str(earlier[0].StudyInstanceUID), str(earlier[0].SeriesInstanceUID),
                   instances)


def pacs_node(start_node: Any, models_dir: Path, pacs: Pacs) -> Node:
    port = pacs.peer.dicom_port
    remote = {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": port, "acse_timeout": 10, "dimse_timeout": 30}
    return start(start_node, models_dir, scp={"port": SCP_PORT}, sources={
        "remotes": [{"name": "orthanc", **remote}, {"name": "orthanc-move", "retrieve": "c-move", **remote},
                    {"name": "down", "ae_title": "DOWN", "host": "127.0.0.1", "port": free_port(), "acse_timeout": 3}],
        "pollers": [{"name": "web", "kind": "dicomweb", "url": pacs.peer.dicomweb_url, "enabled": False}],
    })


def settled(node: Node, created: httpx.Response, timeout: float = 30) -> dict[str, Any]:
    assert created.status_code == 202, created.text
    assert created.json()["status"] == "retrieving"
    sid = created.json()["session_id"]
    info: dict[str, Any] = {}

    def done() -> bool:
        info.update(httpx.get(url(node, f"/v1/sessions/{sid}")).json())
        return info["status"] != "retrieving"

    assert wait_for(done, timeout=timeout, interval=0.1), info
    return info


def test_dicomweb_session_from_orthanc(start_node: Any, models_dir: Path, pacs: Pacs) -> None:
    node = pacs_node(start_node, models_dir, pacs)
    put = url(node, "/v1/sessions")
    series = settled(node, httpx.put(put, json={"dicomweb": {"node": "web", "study_uid": pacs.study,
                                                             "series_uid": pacs.series[0]}}))
    assert series["status"] == "ready" and series["kind"] == "dicomweb" and series["source"] == "web", series
    assert [(s["series_instance_uid"], s["instances"]) for s in series["series"]] == [(pacs.series[0], 4)]
    study = settled(node, httpx.put(put, json={"dicomweb": {"node": "web", "study_uid": pacs.study}}))
    assert sorted((s["series_instance_uid"], s["instances"]) for s in study["series"]) == sorted(
        [(pacs.series[0], 4), (pacs.series[1], 2)])
    direct = f"{pacs.peer.dicomweb_url}/studies/{pacs.study}/series/{pacs.series[0]}"
    a, b, c = predict(node, [{"session_id": series["session_id"]}, {"dicomweb_uri": direct},
                             {"session_id": study["session_id"], "series_uid": pacs.series[0]}])
    assert "labels" in a and a == b == c
    missing = settled(node, httpx.put(put, json={"dicomweb": {"node": "web", "study_uid": "1.2.3.4.5"}}))
    assert missing["status"] == "failed" and missing["reason"], missing
    (not_ready,) = predict(node, [{"session_id": missing["session_id"]}])
    assert "is failed" in not_ready["error"]["description"]
    assert node.index.counts()["instances"] == 0  # sessions stay out of the routed spool


def test_dicom_session_from_orthanc(start_node: Any, models_dir: Path, pacs: Pacs) -> None:
    node = pacs_node(start_node, models_dir, pacs)
    put = url(node, "/v1/sessions")
    by_address = settled(node, httpx.put(put, params={"expiry": 120}, json={"dicom": {
        "server_address": "127.0.0.1", "server_port": pacs.peer.dicom_port, "ae_title": "ORTHANC",
        "query_level": "series", "study_uid": pacs.study, "series_uid": pacs.series[0]}}))
    assert by_address["status"] == "ready" and by_address["source"] == "orthanc", by_address
    assert [(s["series_instance_uid"], s["instances"], s["modality"]) for s in by_address["series"]] == [
        (pacs.series[0], 4, "CT")]
    patient = settled(node, httpx.put(put, json={"dicom": {"node": "orthanc", "patient_id": pacs.patient_id}}))
    assert patient["status"] == "ready" and patient["instances"] == 9 and len(patient["series"]) == 3, patient
    moved = settled(node, httpx.put(put, json={"dicom": {"node": "orthanc-move", "study_uid": pacs.study,
                                                         "series_uid": pacs.series[1]}}))
    assert moved["status"] == "ready" and moved["instances"] == 2, moved
    direct = f"{pacs.peer.dicomweb_url}/studies/{pacs.study}/series/{pacs.series[0]}"
    a, b, c = predict(node, [{"session_id": by_address["session_id"]}, {"dicomweb_uri": direct},
                             {"session_id": patient["session_id"], "series_uid": pacs.series[0]}])
    assert "labels" in a and a == b == c
    down = settled(node, httpx.put(put, json={"dicom": {"node": "down", "study_uid": pacs.study}}))
    assert down["status"] == "failed" and "retrieval failed" in down["reason"], down
    assert httpx.delete(url(node, f"/v1/sessions/{by_address['session_id']}")).status_code == 200
    assert not session_dir(node, by_address["session_id"]).exists()


def session_instances(node: Node, session_id: str) -> list[tuple[str, str, str]]:
    """(study, series, SOP Instance UID) of every instance a session stored, sorted."""
    conn = node.index.reader()
    try:
        rows = conn.execute("SELECT study_instance_uid, series_instance_uid, sop_instance_uid FROM session_instances"
                            " WHERE session_id = ?", (session_id,)).fetchall()
    finally:
        conn.close()
    return sorted((r[0], r[1], r[2]) for r in rows)


@pytest.mark.parametrize("kind, source", [("dicomweb", "web"), ("dicom", "orthanc"), ("dicom", "orthanc-move")])
def test_session_retrieves_only_the_narrowest_identifier(start_node: Any, models_dir: Path, pacs: Pacs,
                                                         kind: str, source: str) -> None:
    """query_level PATIENT with a series_uid retrieves that series only (issue 12: it fetched the whole patient)."""
    node = pacs_node(start_node, models_dir, pacs)
    put = url(node, "/v1/sessions")
    wanted = pacs.series[1]
    expected = sorted((pacs.study, wanted, sop) for sop in pacs.instances[wanted])

    def session(**fields: str) -> dict[str, Any]:
        return settled(node, httpx.put(put, json={kind: {"node": source, **fields}}))

    # The series alone with a patient-level query: its study is looked up (SERIES-level C-FIND / QIDO-RS).
    by_series = session(query_level="PATIENT", patient_id=pacs.patient_id, series_uid=wanted)
    assert by_series["status"] == "ready", by_series
    assert session_instances(node, by_series["session_id"]) == expected
    # With its study too; and an instance alone retrieves that instance only.
    with_study = session(query_level="PATIENT", patient_id=pacs.patient_id, study_uid=pacs.study, series_uid=wanted)
    assert session_instances(node, with_study["session_id"]) == expected
    sop = pacs.instances[pacs.other_series][1]
    one = session(query_level="PATIENT", patient_id=pacs.patient_id, sop_instance_uid=sop)
    assert session_instances(node, one["session_id"]) == [(pacs.other_study, pacs.other_series, sop)], one
    # A study with a patient-level query: that study only, not the patient's earlier one.
    study = session(query_level="PATIENT", patient_id=pacs.patient_id, study_uid=pacs.other_study)
    assert {s["series_instance_uid"] for s in study["series"]} == {pacs.other_series}, study
    # A series the source does not hold fails with a reason that names it.
    absent = session(query_level="PATIENT", patient_id=pacs.patient_id, series_uid="1.2.826.0.1.3680043.99.1")
    assert absent["status"] == "failed" and "series 1.2.826.0.1.3680043.99.1 was not found" in absent["reason"], absent


def test_session_levels_and_identifiers() -> None:
    """The plan a request body makes: the narrowest identifier wins; a narrower level needs its identifier."""
    from dicom_node.sources.sessions_plan import SessionRefused
    from dicom_node.sources.sessions_request import plan_of

    series, study, sop = "1.2.3.4", "1.2.3", "1.2.3.4.5"
    assert plan_of({"query_level": "PATIENT", "patient_id": "P", "series_uid": series}).level == "SERIES"
    assert plan_of({"query_level": "patient", "patient_id": "P", "study_uid": study}).level == "STUDY"
    plan = plan_of({"query_level": "STUDY", "study_uid": study, "sop_instance_uid": sop})
    assert (plan.level, plan.study_uid, plan.series_uid, plan.sop_instance_uid) == ("IMAGE", study, None, sop)
    assert plan_of({"query_level": "INSTANCE", "sop_instance_uid": sop}).level == "IMAGE"
    assert plan_of({"patient_id": "P"}).patient_id == "P"
    assert plan_of({"patient_id": "P", "series_uid": series}).patient_id is None
    for body, words in [({"query_level": "SERIES", "study_uid": study}, "needs series_uid"),
                        ({"query_level": "IMAGE", "series_uid": series}, "needs sop_instance_uid"),
                        ({"query_level": "PATIENT"}, "needs patient_id"),
                        ({"query_level": "FRAME", "study_uid": study}, "query_level must be one of"),
                        ({"sop_instance_uid": "x.y"}, "sop_instance_uid is not a valid DICOM UID")]:
        with pytest.raises(SessionRefused) as info:
            plan_of(body)
        assert info.value.status == 400 and words in str(info.value), body
