"""Clara AIAA sessions: the documented requests, sent unchanged to a running node.

Sources of the examples (``tests/compat/aiaa/session_*.json``):

- Clara TLT-MI, "AIAA Server APIs": https://docs.nvidia.com/clara/tlt-mi/aiaa/server_apis.html
  (``PUT /session/?expiry=`` with an image, with ``-d @data.json`` holding ``{"dicom": {...}}`` or
  ``{"http": {"url", "params", "method"}}``; ``GET /session/{id}?image=``; ``DELETE``);
- the reference client: https://github.com/NVIDIA/ai-assisted-annotation-client/blob/master/py_client/client_api.py
  (``create_session``: multipart field ``image``, ``expiry=0`` by default, reads ``session_id`` from a 200;
  ``get_session``; ``close_session`` expects 200).

Real peers: the node runs on uvicorn; the DICOM session is retrieved by C-GET from Orthanc
(skipped without it, failed when ``DICOM_NODE_REQUIRE_PEERS=1``); the HTTP sessions fetch from an
HTTP server on loopback started here.
"""

from __future__ import annotations

import gzip
import io
import json
import threading
import urllib.request
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import nibabel as nib
import numpy as np
import pytest

from dicom_node.node import Node
from dicom_node.pixels.nifti import read_nifti
from dicom_node.pixels.volume import load_series
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.aiaa_examples import check, load, send
from tests.conftest import free_port, require_tool

ENGINES = Path(__file__).resolve().parents[1] / "engines"


def nifti_image() -> nib.Nifti1Image:
    """A 40x32x6 int16 volume with an oblique, anisotropic affine (non-identity direction)."""
    rng = np.random.default_rng(17)
    data = rng.integers(-1000, 1000, size=(40, 32, 6), dtype=np.int16)
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, -0.7, 2.5])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    return nib.Nifti1Image(data, affine)


def dicom_series(slices: int = 4, seed: str = "aiaa-session") -> list[bytes]:
    out = []
    for ds in ct_datasets(SeriesSpec(slices=slices, rows=48, columns=48, seed=seed)):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def zipped(files: list[bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, data in enumerate(files):
            zf.writestr(f"series/IM{i:04d}.dcm", data)
    return buf.getvalue()


class _Files(BaseHTTPRequestHandler):
    """Serves ``routes`` (path -> bytes) on loopback; records the query strings it was asked."""

    routes: ClassVar[dict[str, bytes]] = {}
    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        type(self).asked.append(query)
        body = self.routes.get(path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_files() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _node(start_node: Any, **sections: Any) -> Node:
    return start_node(inference={"models_dir": str(ENGINES), "backends": ["onnxruntime"]},
                      api={"outbound_allowlist": ["127.0.0.1"]}, **sections)


def _folder(node: Node, session_id: str) -> Path:
    return Path(node.config.storage.root).resolve() / "sessions" / session_id


def test_nifti_and_dicom_upload_sessions(start_node: Any) -> None:
    node = _node(start_node)
    base = f"http://127.0.0.1:{node.api.port}"
    image = nifti_image()
    plain = image.to_bytes()
    files = {"{{NIFTI_IMAGE}}": gzip.compress(plain), "{{NIFTI_IMAGE_PLAIN}}": plain,
             "{{DICOM_IMAGE}}": dicom_series(1)[0]}

    created = check(send(base, load("session_put_nifti.json"), {}, files), load("session_put_nifti.json"), {})
    assert 3599 <= created["expiry"] <= 3600
    values = {"SESSION_ID": created["session_id"]}
    info = check(send(base, load("session_get.json"), values, files), load("session_get.json"), values)
    assert info["image"] == "nifti" and info["kind"] == "upload" and info["instances"] == 0
    got = check(send(base, load("session_get_image.json"), values, files), load("session_get_image.json"), values)
    back = nib.Nifti1Image.from_bytes(gzip.decompress(got))
    assert np.array_equal(np.asarray(back.dataobj), np.asarray(image.dataobj))
    assert np.allclose(back.affine, image.affine)
    closed = check(send(base, load("session_delete.json"), values, files), load("session_delete.json"), values)
    assert closed == {"session_id": created["session_id"], "status": "closed"}
    assert not _folder(node, created["session_id"]).exists()
    assert send(base, load("session_get.json"), values, files).status_code == 404

    # expiry=0 (the reference client's default) is the node's own expiry, and a plain .nii is kept too.
    default = check(send(base, load("session_put_nifti_no_expiry.json"), {}, files),
                    load("session_put_nifti_no_expiry.json"), {})
    assert default["expiry"] == node.config.sources.session_expiry

    dicom = check(send(base, load("session_put_dicom_file.json"), {}, files), load("session_put_dicom_file.json"), {})
    values = {"SESSION_ID": dicom["session_id"]}
    info = check(send(base, load("session_get.json"), values, files), load("session_get.json"), values)
    assert info["image"] == "dicom" and info["instances"] == 1 and len(info["series"]) == 1
    got = check(send(base, load("session_get_image.json"), values, files), load("session_get_image.json"), values)
    assert read_nifti(got, 1 << 30, 1 << 26).array.shape == (1, 48, 48)


def test_upload_refusals(start_node: Any) -> None:
    node = _node(start_node)
    put = f"http://127.0.0.1:{node.api.port}/session/"
    for files, words in [({"image": ("x.txt", b"hello, not an image", "text/plain")}, "neither NIfTI"),
                         ({"image": ("x.nii.gz", gzip.compress(b"\x00" * 400), "application/octet-stream")}, "image:"),
                         ({"image": ("x.zip", b"PK\x03\x04broken", "application/zip")}, "zip")]:
        reply = httpx.put(put, files=files)
        assert reply.status_code == 400 and words in reply.json()["error"]["description"], reply.text
    assert httpx.put(put, content=b"{}", headers={"Content-Type": "application/json"}).status_code == 400
    assert httpx.put(put, content=b"not json").status_code == 400
    assert httpx.put(put, params={"expiry": "soon"}, files={"image": ("a", b"x", "text/plain")}).status_code in (400, 422)
    assert not list((Path(node.config.storage.root).resolve() / "sessions").iterdir())  # nothing left behind


def test_http_sessions(start_node: Any, http_files: str) -> None:
    node = _node(start_node)
    base = f"http://127.0.0.1:{node.api.port}"
    series = dicom_series(4)
    image = nifti_image()
    _Files.routes = {"/series.zip": zipped(series), "/image.nii.gz": gzip.compress(image.to_bytes())}
    _Files.asked.clear()
    values = {"ZIP_URL": f"{http_files}/series.zip", "NIFTI_URL": f"{http_files}/image.nii.gz"}

    created = check(send(base, load("session_put_http.json"), values, {}), load("session_put_http.json"), values)
    assert _Files.asked == ["series=1"]  # params became the query string
    ids = {"SESSION_ID": created["session_id"]}
    info = check(send(base, load("session_get.json"), ids, {}), load("session_get.json"), ids)
    assert info["kind"] == "upload" and info["source"] == "http:127.0.0.1" and info["instances"] == 4
    got = check(send(base, load("session_get_image.json"), ids, {}), load("session_get_image.json"), ids)
    # The session's image is the series' volume, in the geometry pixels.nifti reads back.
    paths = sorted(_folder(node, created["session_id"]).glob("*.dcm"))
    volume = load_series(paths, workers=0)
    read = read_nifti(got, 1 << 30, 1 << 26)
    assert np.array_equal(read.array, volume.array) and np.allclose(read.affine, volume.affine, atol=1e-4)

    nifti = check(send(base, load("session_put_http_nifti.json"), values, {}), load("session_put_http_nifti.json"), values)
    ids = {"SESSION_ID": nifti["session_id"]}
    got = check(send(base, load("session_get_image.json"), ids, {}), load("session_get_image.json"), ids)
    assert np.array_equal(np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(got)).dataobj), np.asarray(image.dataobj))

    check(send(base, load("session_put_http_metadata.json"), values, {}), load("session_put_http_metadata.json"), values)
    missing = httpx.put(f"{base}/session/", content=f'{{"http": {{"url": "{http_files}/absent.zip"}}}}')
    assert missing.status_code == 502 and "404" in missing.text
    for bad in ("\u00b5\u00d8\u0089\u00a6J", "ftp://127.0.0.1/series.zip", "http://exa mple/"):
        reply = httpx.put(f"{base}/session/", json={"http": {"url": bad}})
        assert reply.status_code == 400 and "http.url" in reply.text, (bad, reply.text)
    post = httpx.put(f"{base}/session/", content=f'{{"http": {{"url": "{http_files}/series.zip", "method": "POST"}}}}')
    assert post.status_code == 400 and "http.method" in post.text


# --- DICOM session from a real PACS (Orthanc, C-GET) ---------------------------------------------------------------

SCP_PORT = free_port()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[Any]]]:
    require_tool("Orthanc", "apt-get install orthanc orthanc-dicomweb")
    from tests.peers.orthanc import run_orthanc

    datasets = list(ct_datasets(SeriesSpec(slices=3, rows=48, columns=48, seed="aiaa-pacs")))
    # Orthanc answers C-GET only to a known AE (the node's calling AE title).
    extra = {"DicomModalities": {"node": {"AET": "DICOM_NODE", "Host": "127.0.0.1", "Port": SCP_PORT}}}
    with run_orthanc(tmp_path_factory.mktemp("orthanc"), extra=extra) as peer:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for ds in datasets:
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            request = urllib.request.Request(peer.http_url + "/instances", data=buf.getvalue(), method="POST",
                                             headers={"Content-Type": "application/dicom"})
            with opener.open(request, timeout=10) as response:
                assert response.status == 200
        yield peer, datasets


def test_dicom_session_from_orthanc(start_node: Any, orthanc: tuple[Any, list[Any]]) -> None:
    peer, datasets = orthanc
    remote = {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": peer.dicom_port,
              "acse_timeout": 10, "dimse_timeout": 30}
    node = _node(start_node, scp={"port": SCP_PORT}, sources={"remotes": [remote]})
    base = f"http://127.0.0.1:{node.api.port}"
    first = datasets[0]
    values = {"ORTHANC_PORT": str(peer.dicom_port), "PATIENT_ID": str(first.PatientID),
              "STUDY_UID": str(first.StudyInstanceUID), "SERIES_UID": str(first.SeriesInstanceUID)}
    created = check(send(base, load("session_put_dicom_pacs.json"), values, {}), load("session_put_dicom_pacs.json"),
                    values)
    ids = {"SESSION_ID": created["session_id"]}
    info = check(send(base, load("session_get.json"), ids, {}), load("session_get.json"), ids)
    assert info["kind"] == "dicom" and info["source"] == "pacs" and info["instances"] == 3
    assert info["series"][0]["series_instance_uid"] == values["SERIES_UID"]
    # The same session on the node's own path, and usable by session_id in predict.
    assert httpx.get(f"{base}/v1/sessions/{created['session_id']}").json()["status"] == "ready"
    reply = httpx.post(f"{base}/v1/models/ct-body:predict", json={"instances": [{"session_id": created["session_id"]}]},
                       timeout=120)
    assert reply.status_code == 200 and "labels" in reply.json()["predictions"][0], reply.text
    # The other query levels of the same body: the study, and the patient's studies.
    for level, keep in (("STUDY", ("patient_id", "study_uid")), ("PATIENT", ("patient_id",))):
        ids_only = {k: values[k.upper()] for k in keep}
        body = {"dicom": {"server_address": "127.0.0.1", "server_port": peer.dicom_port, "ae_title": "ORTHANC",
                          "query_level": level, **ids_only}}
        reply = httpx.put(f"{base}/session/", params={"expiry": 60}, content=json.dumps(body), timeout=120)
        assert reply.status_code == 200 and reply.json()["status"] == "ready", (level, reply.text)
        assert httpx.get(f"{base}/session/{reply.json()['session_id']}").json()["instances"] == 3
    check(send(base, load("session_put_dicom_unconfigured.json"), values, {}),
          load("session_put_dicom_unconfigured.json"), values)
    check(send(base, load("session_delete.json"), ids, {}), load("session_delete.json"), ids)


def test_zip_bounds(start_node: Any) -> None:
    node = start_node(inference={"models_dir": str(ENGINES)}, api={"max_multipart_parts": 2})
    put = f"http://127.0.0.1:{node.api.port}/session/"
    series = dicom_series(3, seed="aiaa-zip")
    reply = httpx.put(put, files={"image": ("s.zip", zipped(series), "application/zip")})
    assert reply.status_code == 400 and "more than 2" in reply.text, reply.text
    mixed = io.BytesIO()
    with zipfile.ZipFile(mixed, "w") as zf:
        zf.writestr("image.nii", nifti_image().to_bytes())
        zf.writestr("note.txt", "x")
    reply = httpx.put(put, files={"image": ("m.zip", mixed.getvalue(), "application/zip")})
    assert reply.status_code == 400 and "alone" in reply.text, reply.text
    ok = httpx.put(put, files={"image": ("s.zip", zipped(series[:2]), "application/zip")})
    assert ok.status_code == 200 and ok.json()["status"] == "ready", ok.text
    assert httpx.get(f"{put}{ok.json()['session_id']}").json()["instances"] == 2
