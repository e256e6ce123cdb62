"""``POST /v1/models/{name}:predict`` against a real uvicorn server started by the node."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.models.image_store import build_models_dir
from tests.models.reference import body_mask, dice
from tests.receiver import WadoServer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """ct-body next to the image model (which shares random-cnn's network)."""
    return build_models_dir(tmp_path / "models")


def start(start_node: Any, models_dir: Path, **api: Any) -> Node:
    return start_node(inference={"models_dir": str(models_dir), "backends": ["onnxruntime"]}, api=api)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def dicom_files(slices: int = 1, size: int = 64, seed: str = "predict", modality: str = "CT") -> list[bytes]:
    out = []
    for ds in ct_datasets(SeriesSpec(slices=slices, rows=size, columns=size, seed=seed, modality=modality)):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def predict(node: Node, model: str, instances: list[dict[str, Any]], **params: Any) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{node.api.port}/v1/models/{model}:predict",
                      json={"instances": instances, "parameters": params}, timeout=60)


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    values = np.repeat(np.arange(len(rle["counts"])) % 2 == 1, rle["counts"])
    return values.reshape(rle["shape"])


def hu_of(data: bytes) -> np.ndarray:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    return ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def test_ct_body_dicom_matches_numpy_reference(start_node: Any, models_dir: Path) -> None:
    node = start(start_node, models_dir)
    data = dicom_files()[0]
    r = predict(node, "ct-body", [{"input_bytes": b64(data)}])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "ct-body" and body["modelVersionId"] == "1.0.0"
    (label,) = body["predictions"][0]["labels"]
    mask = rle_decode(label["rle"])
    reference = body_mask(hu_of(data)[None])
    assert mask.shape == (1, 64, 64) and int(mask.sum()) == label["voxels"]
    assert dice(mask, reference) >= 0.99
    assert label["area_mm2"] == pytest.approx(label["voxels"] * 1.0)  # 1 mm pixels
    rows, cols = np.flatnonzero(mask[0].any(1)), np.flatnonzero(mask[0].any(0))
    assert label["bbox"] == [0, int(rows[0]), int(cols[0]), 1, int(rows[-1]) + 1, int(cols[-1]) + 1]


def test_png_on_image_model_matches_onnxruntime(start_node: Any, models_dir: Path) -> None:
    import onnxruntime as ort

    node = start(start_node, models_dir)
    image = (np.add.outer(np.arange(64), np.arange(64)) * 2 % 256).astype(np.uint8)
    r = predict(node, "image-cnn", [{"input_bytes": b64(png_bytes(image))}, {"input_bytes": {"b64": b64(png_bytes(255 - image))}}])
    assert r.status_code == 200, r.text
    session = ort.InferenceSession(str(ROOT / "tests/models/random-cnn/model.onnx"), providers=["CPUExecutionProvider"])
    for pred, img in zip(r.json()["predictions"], (image, 255 - image), strict=False):
        x = ((img.astype(np.float32) - 127.5) / 127.5)[None, None]
        logits = session.run(None, {"image": x})[0][0]
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        got = np.array([pred["probabilities"][f"Class {c}"] for c in "ABC"])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert pred["label"] == f"Class {'ABC'[int(expected.argmax())]}"


def test_bad_instances_fail_alone_in_order(start_node: Any, models_dir: Path) -> None:
    node = start(start_node, models_dir)
    good = dicom_files()[0]
    mr = dicom_files(seed="mr", modality="MR")[0]
    png = png_bytes(np.zeros((32, 32), np.uint8))
    r = predict(node, "ct-body", [
        {"input_bytes": b64(good)}, {"input_bytes": b64(png)}, {"input_bytes": b64(b"hello, not an image")},
        {"input_bytes": "%%%not base64"}, {"input_bytes": b64(mr)}, {"input_bytes": b64(good[:-2000])},
        {"nothing": 1}, {"input_bytes": b64(good)},
    ])
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert preds[0] == preds[7] and preds[0]["labels"][0]["voxels"] > 0
    codes = [p["error"]["code"] for p in preds[1:7]]
    assert codes == ["image_not_accepted", "unsupported_media_type", "invalid_instance", "contract", "undecodable",
                     "unsupported_field"]
    assert preds[6]["error"]["description"].startswith("nothing: not supported")
    assert "Send the DICOM instance" in preds[1]["error"]["description"]
    assert "Modality" in preds[4]["error"]["description"] or "MR" in preds[4]["error"]["description"]


def test_fields_the_node_does_not_read_are_named_errors(start_node: Any, models_dir: Path) -> None:
    """Issue 12: prompt_query next to an image was silently dropped; every unread field is now an instance error."""
    node = start(start_node, models_dir)
    good = b64(dicom_files()[0])
    r = predict(node, "ct-body", [
        {"input_bytes": good, "prompt_query": "a chest with pneumonia"}, {"prompt_query": "text only"},
        {"input_bytes": good, "gcs_uri": "gs://bucket/x.dcm"}, {"input_bytes": good, "bearer_token": "t"},
        {"input_bytes": good, "series_uid": "1.2.3"}, {"input_bytes": good},
    ])
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert "labels" in preds[5]
    errors = [p["error"] for p in preds[:5]]
    assert [e["code"] for e in errors] == ["unsupported_field"] * 2 + ["invalid_instance"] + ["unsupported_field"] * 2
    assert errors[0]["description"] == errors[1]["description"] == (
        "prompt_query: model 'ct-body' does not accept text: it has no text tower ([embedding.text] in its model.toml)")
    assert errors[2]["description"].startswith("input_bytes, gcs_uri: an instance takes one image input")
    assert errors[3]["description"].startswith("bearer_token: not used with input_bytes")
    assert errors[4]["description"].startswith("series_uid: not used with input_bytes")
    # A top-level field other than instances and parameters is a 400 naming it, not ignored.
    r = httpx.post(f"http://127.0.0.1:{node.api.port}/v1/models/ct-body:predict",
                   json={"instances": [{"input_bytes": good}], "parameter": {"threshold": 0.9}}, timeout=60)
    assert r.status_code == 400 and "parameter" in r.json()["error"]["description"], r.text


def test_caps_and_unknown_models(start_node: Any, models_dir: Path) -> None:
    node = start(start_node, models_dir, max_instances=2, max_pixels=1024)
    data = b64(dicom_files()[0])
    r = predict(node, "ct-body", [{"input_bytes": data}] * 3)
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_instances"
    assert "api.max_instances" in r.json()["error"]["description"] and "2" in r.json()["error"]["description"]
    r = predict(node, "ct-body", [{"input_bytes": data}])
    assert r.json()["predictions"][0]["error"]["code"] == "too_many_pixels"
    assert "api.max_pixels" in r.json()["predictions"][0]["error"]["description"]
    r = predict(node, "image-cnn", [{"input_bytes": b64(png_bytes(np.zeros((64, 64), np.uint8)))}])
    assert r.json()["predictions"][0]["error"]["code"] == "too_many_pixels"
    r = predict(node, "no-such-model", [{"input_bytes": data}])
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = predict(node, "ct-body", [{"input_bytes": data}], threshold=7)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_parameters"


@pytest.fixture
def wado() -> Iterator[WadoServer]:
    server = WadoServer(dicom_files(slices=3, seed="wado"))
    try:
        yield server
    finally:
        server.close()


def test_dicomweb_uri_fetched_from_allowlisted_server(start_node: Any, models_dir: Path, wado: Any) -> None:
    handler, wado = wado, wado.url
    node = start(start_node, models_dir, outbound_allowlist=["127.0.0.1"])
    files = dicom_files(slices=3, seed="wado")
    r = predict(node, "ct-body", [
        {"dicomweb_uri": f"{wado}/studies/1/series/2/instances/3", "bearer_token": "tok-123"},
        {"dicomweb_uri": f"{wado}/studies/1/series"},
        {"input_bytes": b64(files[0])},
        {"dicomweb_uri": f"{wado}/moved"},
    ])
    assert r.status_code == 200, r.text
    one, series, direct, moved = r.json()["predictions"]
    assert one == direct
    (label,) = series["labels"]
    assert label["rle"]["shape"] == [3, 64, 64]
    reference = body_mask(np.stack([hu_of(f) for f in files]))
    assert dice(rle_decode(label["rle"]), reference) >= 0.99
    assert moved["error"]["code"] == "fetch_failed" and "redirect" in moved["error"]["description"]
    assert {"path": "/studies/1/series/2/instances/3", "authorization": "Bearer tok-123"} in handler.seen
    assert all(s["authorization"] == "" for s in handler.seen if s["path"] != "/studies/1/series/2/instances/3")


def test_dicomweb_loopback_refused_without_allowlist(start_node: Any, models_dir: Path, wado: Any) -> None:
    handler, wado = wado, wado.url
    node = start(start_node, models_dir)
    r = predict(node, "ct-body", [
        {"dicomweb_uri": f"{wado}/studies/1"}, {"dicomweb_uri": "http://169.254.169.254/latest/meta-data"},
        {"dicomweb_uri": "file:///etc/passwd"}, {"dicomweb_uri": "http://10.0.0.7/dicom-web/studies/1"},
    ])
    assert r.status_code == 200, r.text
    errors = [p["error"] for p in r.json()["predictions"]]
    assert all(e["code"] == "fetch_failed" for e in errors)
    assert "loopback" in errors[0]["description"] and "api.outbound_allowlist" in errors[0]["description"]
    assert "169.254" in errors[1]["description"]
    assert "scheme" in errors[2]["description"]
    assert "private" in errors[3]["description"]
    assert handler.seen == []  # refused before connecting


def test_image_kinds_and_intensity_mapping() -> None:
    from dicom_node.api.inputs import InputRejected, decode_image, sniff

    gray16 = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 250)
    buf = io.BytesIO()
    Image.fromarray(gray16).save(buf, "PNG")
    decoded = decode_image(buf.getvalue(), 1 << 20)
    assert decoded.array.shape == (1, 16, 16) and decoded.spacing is None
    np.testing.assert_array_equal(decoded.array[0], gray16.astype(np.float32))  # 16-bit stored values, unscaled
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    kinds = {}
    for fmt in ("PNG", "JPEG", "TIFF", "BMP"):
        out = io.BytesIO()
        Image.fromarray(rgb).save(out, fmt)
        kinds[fmt] = sniff(out.getvalue())
        if fmt != "JPEG":  # lossless: ITU-R 601-2 luma of pure red 200 is 0.299 * 200
            assert decode_image(out.getvalue(), 1 << 20).array[0, 0, 0] == round(0.299 * 200)
    assert kinds == {"PNG": "png", "JPEG": "jpeg", "TIFF": "tiff", "BMP": "bmp"}
    assert sniff(dicom_files()[0]) == "dicom" and sniff(b"%PDF-1.7") is None
    with pytest.raises(InputRejected) as err:
        decode_image(buf.getvalue(), 255)
    assert err.value.code == "too_many_pixels"
