"""WADO-RS against a real node (uvicorn + the SCP): dicomweb-client's retrieve, metadata, frames, rendered and
bulkdata calls on a CT received by C-STORE and the SEG/SR of its job; Accept edge cases; STOW-RS answers."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import JPEGLSLossless

from dicom_node.archive import metadata
from dicom_node.archive.frames import layout
from dicom_node.archive.retrieve import Located
from dicom_node.dicomweb.multipart import media_type, split
from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import free_port, wait_for
from tests.receiver import multipart_related
from tests.scu import send_all

ENGINES = str(Path(__file__).resolve().parents[1] / "engines")
CT_RULE = {"name": "ct", "models": ["ct-body"], "destinations": [], "match": {"modality": "CT"}}
ELE, JLS = "1.2.840.10008.1.2.1", str(JPEGLSLossless)
DICOM_MP = 'multipart/related; type="application/dicom"'


def base(node: Node) -> str:
    return f"http://127.0.0.1:{node.api.port}/dicomweb"


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def parts(r: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    assert r.status_code == 200, r.text
    main, params = media_type(r.headers["content-type"])
    assert main == "multipart/related"
    return split(r.content, params["boundary"], 10000)


def jobs_done(node: Node) -> bool:
    conn = node.index.reader()
    try:
        return [r[0] for r in conn.execute("SELECT state FROM jobs")] == ["done"]
    finally:
        conn.close()


def test_wado_rs_with_dicomweb_client_on_a_received_ct_and_its_seg_and_sr(start_node) -> None:
    # dicomweb-client sends "Host: 127.0.0.1" without the port, so the node is told its public URL.
    port = free_port()
    node: Node = start_node(routing={"rules": [CT_RULE]}, inference={"models_dir": ENGINES},
                            api={"port": port, "public_url": f"http://127.0.0.1:{port}"})
    ct = list(ct_datasets(SeriesSpec(slices=4, rows=32, columns=32, seed="wado")))
    assert send_all(node.scp.port, ct) == [0] * 4
    assert wait_for(lambda: jobs_done(node), timeout=90)
    study, series = str(ct[0].StudyInstanceUID), str(ct[0].SeriesInstanceUID)
    results = httpx.get(f"http://127.0.0.1:{node.api.port}/v1/studies/{study}/results").json()["results"]
    seg = next(r for r in results if r["kind"] == "SEG")
    sr = next(r for r in results if r["kind"] == "SR")
    web = DICOMwebClient(url=base(node))

    everything = web.retrieve_study(study)
    assert sorted(d.SOPInstanceUID for d in everything) == sorted(
        [str(d.SOPInstanceUID) for d in ct] + [seg["sop_instance_uid"], sr["sop_instance_uid"]])
    # Every other retrieve and iterate method dicomweb-client has, so none of its calls is untried.
    assert sorted(d.SOPInstanceUID for d in web.retrieve_series(study, series)) == sorted(str(d.SOPInstanceUID) for d in ct)
    assert len(list(web.iter_study(study))) == 6 and len(list(web.iter_series(study, series))) == 4

    metadata = web.retrieve_series_metadata(study, series)
    assert len(metadata) == 4 and all("7FE00010" in m and "BulkDataURI" in m["7FE00010"] for m in metadata)
    assert not any("InlineBinary" in json.dumps(m) for m in metadata)
    study_meta = web.retrieve_study_metadata(study)
    assert len(study_meta) == 6
    sr_meta = web.retrieve_instance_metadata(study, sr["series_instance_uid"], sr["sop_instance_uid"])
    assert "0040A730" in sr_meta and "7FE00010" not in sr_meta  # ContentSequence, no pixels

    first = next(d for d in ct if d.InstanceNumber == 1)
    meta = web.retrieve_instance_metadata(study, series, str(first.SOPInstanceUID))
    assert Dataset.from_json(meta, lambda *_: b"").SOPInstanceUID == first.SOPInstanceUID
    assert web.retrieve_bulkdata(meta["7FE00010"]["BulkDataURI"]) == [first.PixelData]
    assert list(web.iter_bulkdata(meta["7FE00010"]["BulkDataURI"])) == [first.PixelData]
    assert list(web.iter_instance_frames(study, series, str(first.SOPInstanceUID), [1])) == [first.PixelData]
    frames = web.retrieve_instance_frames(study, series, str(first.SOPInstanceUID), [1])
    assert frames == [first.PixelData]

    png = web.retrieve_instance_rendered(study, series, str(first.SOPInstanceUID), media_types=("image/png",))
    assert Image.open(io.BytesIO(png)).size == (32, 32)
    jpeg = web.retrieve_instance_rendered(study, series, str(first.SOPInstanceUID),
                                          params={"window": "40,400,linear", "viewport": "16,16", "quality": "80"})
    assert jpeg[:2] == b"\xff\xd8" and Image.open(io.BytesIO(jpeg)).size == (16, 16)
    series_png = web.retrieve_series_rendered(study, series, media_types=("image/png",))
    assert Image.open(io.BytesIO(series_png)).size == (32, 32)
    frame = web.retrieve_instance_frames_rendered(study, series, str(first.SOPInstanceUID), [1],
                                                  media_types=("image/png",))
    assert frame[:4] == b"\x89PNG"
    seg_png = web.retrieve_instance_rendered(study, seg["series_instance_uid"], seg["sop_instance_uid"],
                                             media_types=("image/png",))
    assert Image.open(io.BytesIO(seg_png)).mode == "L"
    seg_ds = web.retrieve_instance(study, seg["series_instance_uid"], seg["sop_instance_uid"])
    assert seg_ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg_ds.pixel_array.any()
    # Frames of a multi-frame 1-bit instance, sliced from the stored Pixel Data by offset.
    n = int(seg_ds.NumberOfFrames)
    size = int(seg_ds.Rows) * int(seg_ds.Columns) // 8
    seg_frames = web.retrieve_instance_frames(study, seg["series_instance_uid"], seg["sop_instance_uid"], [n, 1])
    assert seg_frames == [seg_ds.PixelData[(n - 1) * size:n * size], seg_ds.PixelData[:size]]
    seg_meta = web.retrieve_instance_metadata(study, seg["series_instance_uid"], seg["sop_instance_uid"])
    assert web.retrieve_bulkdata(seg_meta["7FE00010"]["BulkDataURI"]) == [seg_ds.PixelData]  # the whole value

    url = f"{base(node)}/studies/{study}"
    sr_rendered = httpx.get(f"{url}/series/{sr['series_instance_uid']}/instances/{sr['sop_instance_uid']}/rendered")
    assert sr_rendered.status_code == 406 and "structured report" in sr_rendered.json()["error"]["description"]
    seg_path = f"{url}/series/{seg['series_instance_uid']}/instances/{seg['sop_instance_uid']}"
    refused = httpx.get(seg_path, headers={"accept": f"{DICOM_MP}; transfer-syntax={JLS}"})
    assert refused.status_code == 406 and ELE in refused.json()["error"]["description"]
    for path in ("thumbnail", f"series/{series}/thumbnail", f"series/{series}/instances/{first.SOPInstanceUID}/thumbnail"):
        thumb = httpx.get(f"{url}/{path}", headers={"accept": "image/png"})
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png", path
    out_of_range = httpx.get(f"{url}/series/{series}/instances/{first.SOPInstanceUID}/frames/1,2")
    assert out_of_range.status_code == 400 and "frame 2 is out of range" in out_of_range.json()["error"]["description"]
    assert httpx.get(f"{url}/series/{series}/instances/{first.SOPInstanceUID}/frames/x").status_code == 400
    assert httpx.get(f"{url}/series/{series}/instances/{first.SOPInstanceUID}/rendered",
                     params={"window": "40"}).status_code == 400
    assert httpx.get(f"{base(node)}/studies/1.2.3/metadata").status_code == 404


def test_accept_negotiation_on_a_jpeg_ls_instance(start_node) -> None:
    node: Node = start_node()
    ds = next(iter(ct_datasets(SeriesSpec(slices=1, rows=32, columns=32, seed="jls"))))
    original = ds.pixel_array.copy()
    ds.compress(JPEGLSLossless, generate_instance_uid=False)
    web = DICOMwebClient(url=base(node))
    web.store_instances([ds])
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    url = f"{base(node)}/studies/{study}/series/{series}/instances/{sop}"

    def get(accept: str, path: str = "") -> httpx.Response:
        return httpx.get(url + path, headers={"accept": accept})

    # transfer-syntax=* is as stored; no transfer-syntax is the media type's default, Explicit VR LE (decoded).
    for accept, syntax in ((f"{DICOM_MP}; transfer-syntax=*", JLS), (DICOM_MP, ELE), ("*/*", JLS),
                           (f"{DICOM_MP}; transfer-syntax={ELE}", ELE),
                           (f"{DICOM_MP}; transfer-syntax={ELE}; q=0.2, {DICOM_MP}; transfer-syntax={JLS}; q=0.9", JLS),
                           (f"{DICOM_MP}; transfer-syntax={JLS}; q=0, */*", ELE)):
        (headers, body), = parts(get(accept))
        assert media_type(headers["content-type"])[1]["transfer-syntax"] == syntax, accept
        got = pydicom.dcmread(io.BytesIO(body))
        assert str(got.file_meta.TransferSyntaxUID) == syntax
        np.testing.assert_array_equal(got.pixel_array, original)
    refused = get(f"{DICOM_MP}; transfer-syntax=1.2.3.4")
    assert refused.status_code == 406
    reason = refused.json()["error"]["description"]
    assert "1.2.3.4" in reason and JLS in reason and ELE in reason

    stored = web.retrieve_instance_frames(study, series, sop, [1], media_types=(("image/jls", JLS),))
    assert stored[0][:4] == b"\xff\xd8\xff\xf7"  # a JPEG-LS codestream, as stored
    native = web.retrieve_instance_frames(study, series, sop, [1], media_types=(("application/octet-stream", ELE),))
    assert native[0] == original.tobytes()
    (headers, body), = parts(get('multipart/related; type="application/octet-stream"', "/frames/1"))
    assert body == original.tobytes() and "transfer-syntax=1.2.840.10008.1.2.1" in headers["content-type"]
    (headers, _), = parts(get('multipart/related; type="application/octet-stream"; transfer-syntax=*', "/frames/1"))
    assert f"transfer-syntax={JLS}" in headers["content-type"]
    assert get('multipart/related; type="image/jp2"', "/frames/1").status_code == 406

    meta = get("application/json", "/metadata")
    assert meta.status_code == 200 and meta.headers["content-type"] == "application/json"
    assert get("application/dicom+json", "/metadata").headers["content-type"] == "application/dicom+json"
    assert get("text/html", "/metadata").status_code == 406
    assert get("image/gif", "/rendered").status_code == 406
    assert get("image/png, image/jpeg;q=0.5", "/rendered").headers["content-type"] == "image/png"


def test_stow_rs_retrieve_urls_work_and_failures_carry_reasons(start_node) -> None:
    node: Node = start_node()
    a = list(ct_datasets(SeriesSpec(slices=2, rows=16, columns=16, seed="stow-a")))
    b = list(ct_datasets(SeriesSpec(slices=1, rows=16, columns=16, seed="stow-b")))
    study = str(a[0].StudyInstanceUID)
    body, ctype = multipart_related([encode(a[0]), encode(a[1]), encode(b[0])], "b0undary")
    r = httpx.post(f"{base(node)}/studies/{study}", content=body, headers={"content-type": ctype})
    assert r.status_code == 202 and "1 of 3 instance(s) not stored" in r.headers["warning"]
    doc = r.json()
    failed = doc["00081198"]["Value"]
    assert failed[0]["00081155"]["Value"] == [str(b[0].SOPInstanceUID)] and failed[0]["00081197"]["Value"] == [0xA900]
    urls = [item["00081190"]["Value"][0] for item in doc["00081199"]["Value"]]
    for instance_url in urls:
        (headers, payload), = parts(httpx.get(instance_url))
        assert str(pydicom.dcmread(io.BytesIO(payload)).SOPInstanceUID) in instance_url
    assert len(parts(httpx.get(doc["00081190"]["Value"][0]))) == 2
    # Without a study in the URL, the study's Retrieve URL is given when every stored instance is of one study.
    body, ctype = multipart_related([encode(b[0])], "b0undary")
    r = httpx.post(f"{base(node)}/studies", content=body, headers={"content-type": ctype})
    assert r.status_code == 200 and "warning" not in r.headers
    assert r.json()["00081190"]["Value"] == [f"{base(node)}/studies/{b[0].StudyInstanceUID}"]


def test_bulk_data_over_the_threshold_goes_by_uri_also_inside_sequences(start_node) -> None:
    port = free_port()
    node: Node = start_node(api={"port": port, "public_url": f"http://127.0.0.1:{port}"})
    ds = next(iter(ct_datasets(SeriesSpec(slices=1, rows=16, columns=16, seed="bulk"))))
    big, nested = bytes(range(256)) * 8, bytes(reversed(range(256))) * 6
    ds.add_new(0x00091010, "OB", big)  # over 1 KiB: by URI
    ds.add_new(0x00091011, "OB", b"tiny")  # under: inline
    item = Dataset()
    item.add_new(0x00091012, "OB", nested)
    ds.add_new(0x00091020, "SQ", [item])
    web = DICOMwebClient(url=base(node))
    web.store_instances([ds])
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    meta = web.retrieve_instance_metadata(study, series, sop)
    assert "InlineBinary" in meta["00091011"] and "BulkDataURI" in meta["00091010"]
    inner = meta["00091020"]["Value"][0]["00091012"]["BulkDataURI"]
    assert inner.endswith("/bulkdata/00091020/0/00091012")
    assert web.retrieve_bulkdata(meta["00091010"]["BulkDataURI"]) == [big]
    assert web.retrieve_bulkdata(inner) == [nested]
    plain = httpx.get(inner, headers={"accept": "application/octet-stream"})
    assert plain.status_code == 200 and plain.content == nested
    wrong = httpx.get(inner.replace("/0/", "/3/"))
    assert wrong.status_code == 400 and "no item 3" in wrong.json()["error"]["description"]


def test_a_frame_layout_is_read_once_per_file_version(tmp_path: Path) -> None:
    path = tmp_path / "i.dcm"
    ds = next(ct_datasets(SeriesSpec(slices=1, rows=8, columns=8, seed="layout-cache")))
    ds.save_as(path, enforce_file_format=True)
    item = Located(path, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                   str(ds.SOPClassUID), "received")
    first = layout(item)
    assert layout(item) is first and first.frame_bytes == 8 * 8 * 2
    # The same name holding another file (a replaced duplicate) is read again, not served from the cache.
    bigger = next(ct_datasets(SeriesSpec(slices=1, rows=16, columns=16, seed="layout-cache")))
    bigger.save_as(path, enforce_file_format=True)
    again = layout(item)
    assert again is not first and again.frame_bytes == 16 * 16 * 2


def _pydicom_json(ds: Dataset, bulk_base: str, path: tuple[str, ...] = ()) -> dict[str, object]:
    """The metadata JSON as built before the plain-element path: every element through pydicom."""
    out: dict[str, object] = {}
    for elem in ds:
        key = f"{int(elem.tag):08X}"
        if elem.VR == "SQ":
            items = [_pydicom_json(item, bulk_base, (*path, key, str(i))) for i, item in enumerate(elem.value)]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        elif metadata._is_bulk(elem):
            out[key] = {"vr": elem.VR, "BulkDataURI": f"{bulk_base}/{'/'.join((*path, key))}"}
        else:
            out[key] = elem.to_json_dict(None, metadata.BULK_THRESHOLD)
    return out


def test_metadata_json_equals_pydicoms_on_every_test_file() -> None:
    """Converting plain elements from raw bytes changes no byte of the metadata of pydicom's and pydicom-data's files
    (charsets, implicit VR, big endian, private tags, sequences, deferred values, malformed values)."""
    import warnings

    from pydicom.data import get_testdata_files

    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(get_testdata_files()):
            try:
                expected_ds = pydicom.dcmread(name, stop_before_pixels=True, defer_size=metadata.BULK_THRESHOLD)
                ds = pydicom.dcmread(name, stop_before_pixels=True, defer_size=metadata.BULK_THRESHOLD)
            except Exception:  # noqa: BLE001 - not a DICOM file (charset samples, DICOMDIR blobs)
                continue
            try:
                expected = json.dumps(_pydicom_json(expected_ds, "u"))
            except Exception as exc:  # noqa: BLE001 - a file pydicom cannot convert: the node must fail alike
                with pytest.raises(type(exc)):
                    metadata.dataset_json(ds, "u")
                continue
            assert json.dumps(metadata.dataset_json(ds, "u")) == expected, name
            checked += 1
    assert checked >= 100
