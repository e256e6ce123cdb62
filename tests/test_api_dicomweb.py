"""DICOMweb against a real uvicorn server: STOW-RS with dicomweb-client, routing to a real job, WADO-RS of the SEG."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pydicom
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import wait_for
from tests.receiver import multipart_related

ENGINES = str(Path(__file__).resolve().parents[1] / "engines")
CT_RULE = {"name": "ct", "models": ["ct-body"], "destinations": [], "match": {"modality": "CT"}}
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def base(node: Node) -> str:
    return f"http://127.0.0.1:{node.api.port}"


def client(node: Node) -> DICOMwebClient:
    return DICOMwebClient(url=f"{base(node)}/dicomweb")


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def multipart(parts: list[bytes], boundary: str = "b0undary") -> tuple[bytes, str]:
    return multipart_related(parts, boundary)


def jobs(node: Node) -> list[dict]:
    conn = node.index.reader()
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM jobs")]
    finally:
        conn.close()


def test_stow_rs_then_job_then_wado_rs_of_the_seg(start_node) -> None:
    node: Node = start_node(routing={"rules": [CT_RULE]}, inference={"models_dir": ENGINES})
    datasets = list(ct_datasets(SeriesSpec(slices=6, rows=48, columns=48, seed="stow")))
    study = str(datasets[0].StudyInstanceUID)
    response = client(node).store_instances(datasets)
    assert len(response.ReferencedSOPSequence) == 6 and "FailedSOPSequence" not in response
    # dicomweb-client sends "Host: 127.0.0.1" without the port; the URL follows the Host header.
    assert f"/dicomweb/studies/{study}/series/{datasets[0].SeriesInstanceUID}/instances/{datasets[0].SOPInstanceUID}" in {
        r.RetrieveURL[r.RetrieveURL.index("/dicomweb"):] for r in response.ReferencedSOPSequence}
    conn = node.index.reader()
    assoc = dict(conn.execute("SELECT * FROM associations").fetchone())
    sources = {r[0] for r in conn.execute("SELECT source FROM instances")}
    conn.close()
    assert assoc["calling_ae"] == "STOW-RS" and assoc["state"] == "released" and assoc["instances"] == 6
    assert sources == {"stowrs"}
    assert wait_for(lambda: [j["state"] for j in jobs(node)] == ["done"], timeout=60), jobs(node)
    results = httpx.get(f"{base(node)}/v1/studies/{study}/results").json()["results"]
    seg = next(r for r in results if r["kind"] == "SEG")
    web = client(node)
    series = web.retrieve_series(study, seg["series_instance_uid"])
    instance = web.retrieve_instance(study, seg["series_instance_uid"], seg["sop_instance_uid"])
    for ds in (series[0], instance):
        assert ds.SOPClassUID == SEG_CLASS and ds.SOPInstanceUID == seg["sop_instance_uid"]
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == datasets[0].SeriesInstanceUID
        assert ds.pixel_array.any()
    originals = web.retrieve_series(study, str(datasets[0].SeriesInstanceUID))
    assert sorted(d.SOPInstanceUID for d in originals) == sorted(d.SOPInstanceUID for d in datasets)
    np.testing.assert_array_equal(
        next(d for d in originals if d.SOPInstanceUID == datasets[0].SOPInstanceUID).pixel_array, datasets[0].pixel_array)


def test_stow_rs_study_mismatch_partial_and_all_failed(start_node) -> None:
    node: Node = start_node()
    a = list(ct_datasets(SeriesSpec(slices=2, rows=16, columns=16, seed="a")))
    b = list(ct_datasets(SeriesSpec(slices=1, rows=16, columns=16, seed="b")))
    study = str(a[0].StudyInstanceUID)
    body, ctype = multipart([encode(a[0]), encode(a[1]), encode(b[0])])
    r = httpx.post(f"{base(node)}/dicomweb/studies/{study}", content=body, headers={"content-type": ctype})
    assert r.status_code == 202 and r.headers["content-type"].startswith("application/dicom+json")
    doc = r.json()
    assert doc["00081190"]["Value"] == [f"{base(node)}/dicomweb/studies/{study}"]
    assert len(doc["00081199"]["Value"]) == 2
    failed = doc["00081198"]["Value"]
    assert [f["00081155"]["Value"][0] for f in failed] == [str(b[0].SOPInstanceUID)]
    assert failed[0]["00081197"]["Value"] == [0xA900] == [43264]
    body, ctype = multipart([encode(b[0])])
    r = httpx.post(f"{base(node)}/dicomweb/studies/{study}", content=body, headers={"content-type": ctype})
    assert r.status_code == 409 and "00081199" not in r.json()
    assert node.index.counts()["instances"] == 2
    assert list(node.spool.tmp.iterdir()) == []


def test_stow_rs_refusals(start_node) -> None:
    node: Node = start_node(api={"max_multipart_parts": 2})
    ds = list(ct_datasets(SeriesSpec(slices=3, rows=16, columns=16, seed="r")))
    url = f"{base(node)}/dicomweb/studies"
    r = httpx.post(url, content=b"x", headers={"content-type": "application/dicom"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    body, ctype = multipart([encode(d) for d in ds])
    r = httpx.post(url, content=body, headers={"content-type": ctype})
    assert r.status_code == 413 and "parts" in r.json()["error"]["description"]
    body, ctype = multipart([b"not dicom at all" * 20])
    r = httpx.post(url, content=body, headers={"content-type": ctype})
    assert r.status_code == 409 and r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    r = httpx.post(url, content=body[:-10], headers={"content-type": ctype})
    assert r.status_code == 400
    chunked = httpx.post(url, content=iter([b"--b\r\n\r\n", b"x" * (node.config.api.max_body_bytes + 10)]),
                         headers={"content-type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert chunked.status_code == 413
    assert list(node.spool.tmp.iterdir()) == []
    conn = node.index.reader()
    states = {r[0] for r in conn.execute("SELECT state FROM associations")}
    conn.close()
    assert "active" not in states


def test_wado_rs_406_and_404(start_node) -> None:
    node: Node = start_node()
    ds = list(ct_datasets(SeriesSpec(slices=1, rows=16, columns=16, seed="w")))
    client(node).store_instances(ds)
    path = f"{base(node)}/dicomweb/studies/{ds[0].StudyInstanceUID}/series/{ds[0].SeriesInstanceUID}"
    assert httpx.get(path, headers={"accept": "application/json"}).status_code == 406
    assert httpx.get(path, headers={"accept": 'multipart/related; type="application/dicom"; '
                                              'transfer-syntax=1.2.840.10008.1.2.4.50'}).status_code == 406
    ok = httpx.get(path, headers={"accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("multipart/related")
    missing = httpx.get(f"{path}/instances/1.2.3")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{base(node)}/dicomweb/studies/1.2/series/x.y").status_code == 400
