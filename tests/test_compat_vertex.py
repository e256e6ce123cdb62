"""Vertex AI predict's documented example requests, sent unchanged against a running node (issue 16).

Every file under ``tests/compat/vertex/`` is one example request (format and placeholders: that
folder's README.md). The test fills the placeholders, sends the request as written to a real
uvicorn server of an in-process node serving the bundled demo models, and checks the documented
status code and field sets: the PredictResponse envelope, and per instance, in order, either the
embedding fields or ``{"error": {"description"}}``.

Sources of the shapes:

- https://developers.google.com/health-ai-developer-foundations/cxr-foundation/serving-api
- https://developers.google.com/health-ai-developer-foundations/derm-foundation/serving-api
- CXR Foundation's ``serving/vertex_schemata/instance.yaml`` / ``prediction.yaml`` and Derm
  Foundation's (GitHub Google-Health/cxr-foundation and Google-Health/derm-foundation)
- https://cloud.google.com/vertex-ai/docs/reference/rest/v1/PredictResponse
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.objects_peers import ObjectPeer
from tests.receiver import WadoServer

ENGINES = Path(__file__).resolve().parents[1] / "engines"
COMPAT = Path(__file__).resolve().parent / "compat" / "vertex"
EXAMPLES = sorted(COMPAT.glob("*.json"))
ENDPOINTS = {"1234567890": "demo-image-text", "2345678901": "demo-image-embedding"}
TOKEN = "ya29.test-bearer-token"


def image(kind: str) -> bytes:
    """A 64x64 gray gradient with a bright disc, as PNG or JPEG."""
    yy, xx = np.mgrid[:64, :64]
    gray = (xx * 2 + ((yy - 32) ** 2 + (xx - 32) ** 2 < 200) * 100).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, kind)
    return buf.getvalue()


def dicom_slice() -> bytes:
    buf = io.BytesIO()
    next(ct_datasets(SeriesSpec(slices=1, rows=64, columns=64, seed="vertex"))).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def fill(value: Any, values: dict[str, str]) -> Any:
    """Placeholders replaced in every string of a JSON value."""
    if isinstance(value, str):
        for key, sub in values.items():
            value = value.replace("{{" + key + "}}", sub)
        return value
    if isinstance(value, list):
        return [fill(v, values) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, values) for k, v in value.items()}
    return value


@pytest.fixture
def wado() -> Iterator[WadoServer]:
    server = WadoServer([dicom_slice()])
    try:
        yield server
    finally:
        server.close()


def _node(start_node: Any, **sections: dict[str, Any]) -> Node:
    return start_node(inference={"models_dir": str(ENGINES), "backends": ["onnxruntime"]},
                      api={"vertex_endpoints": ENDPOINTS, "outbound_allowlist": ["127.0.0.1"]}, **sections)


def _base(node: Node) -> str:
    assert node.api is not None
    return f"http://127.0.0.1:{node.api.port}"


def _check(answer: httpx.Response, expect: dict[str, Any], name: str) -> dict[str, Any]:
    assert answer.status_code == expect["status"], f"{name}: {answer.status_code} {answer.text[:500]}"
    assert answer.headers["content-type"].startswith("application/json"), name
    body = answer.json()
    assert sorted(body) == sorted(expect["fields"]), name
    for key, value in expect.get("values", {}).items():
        assert body[key] == value, (name, key)
    if "error_contains" in expect:
        assert expect["error_contains"] in body["error"]["description"], name
    if "predictions" in expect:
        got = [sorted(p) for p in body["predictions"]]
        assert got == [sorted(p) for p in expect["predictions"]], (name, body["predictions"])
        for i, pred in enumerate(body["predictions"]):
            if "error" in pred:
                assert isinstance(pred["error"]["description"], str) and pred["error"]["description"], name
                assert expect["errors"][str(i)] in pred["error"]["description"], (name, pred)
            else:
                assert all(isinstance(v, list) and v and all(isinstance(x, float) for x in v) for v in pred.values())
        meta = body["metadata"]
        assert meta["instances"] == len(body["predictions"]) and meta["maxInstances"] == 32, name
        assert meta["errors"] == sum("error" in p for p in body["predictions"]), name
    return body


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_documented_example(example: Path, start_node: Any, wado: WadoServer, request: pytest.FixtureRequest) -> None:
    spec = json.loads(example.read_text())
    text = example.read_text()
    values = {"PROJECT_ID": "my-project", "LOCATION": "us-central1", "ENDPOINT_ID": "1234567890",
              "DERM_ENDPOINT_ID": "2345678901", "BEARER_TOKEN": TOKEN, "DICOMWEB_URL": wado.url,
              "PNG_BASE64": base64.b64encode(image("PNG")).decode(),
              "JPEG_BASE64": base64.b64encode(image("JPEG")).decode()}
    sections: dict[str, dict[str, Any]] = {}
    if "{{BUCKET}}" in text:
        gcs: ObjectPeer = request.getfixturevalue("gcs_emulator")
        gcs.seed("cxr/image.png", image("PNG"))
        gcs.seed("derm/image.png", image("PNG"))
        values["BUCKET"] = "inputs"
        sections["objects"] = gcs.section
    node = _node(start_node, **sections)
    req = fill(spec["request"], values)
    answer = httpx.request(req["method"], f"{_base(node)}{req['path']}", json=req["json"],
                           timeout=60)
    _check(answer, fill(spec["expect"], values), example.stem)
    if "{{DICOMWEB_URL}}" in text:
        assert wado.seen and wado.seen[-1]["authorization"] == f"Bearer {TOKEN}"


def test_one_implementation_behind_both_paths(start_node: Any) -> None:
    """The same instances give the same predictions on the node's path and on Vertex's."""
    node = _node(start_node)
    base = _base(node)
    body = {"instances": [{"input_bytes": base64.b64encode(image("PNG")).decode(), "prompt_query": "effusion"},
                          {"prompt_query": "x" * 2000}]}
    ours = httpx.post(f"{base}/v1/models/demo-image-text:predict", json=body, timeout=60).json()
    theirs = httpx.post(f"{base}/v1/projects/p/locations/l/endpoints/1234567890:predict", json=body, timeout=60).json()
    assert ours["predictions"] == theirs["predictions"]
    assert "max_chars = 1024" in ours["predictions"][1]["error"]["description"]
    vectors = ours["predictions"][0]
    assert len(vectors["general_img_emb"]) == 256 and len(vectors["contrastive_txt_emb"]) == 128
    assert abs(np.linalg.norm(vectors["contrastive_img_emb"]) - 1) < 1e-5


def test_gcs_uri_failures_are_instance_errors(start_node: Any, gcs_emulator: ObjectPeer) -> None:
    """Each gcs_uri failure is that instance's error, naming the reason; the token is never echoed."""
    gcs_emulator.seed("cxr/notes.txt", b"not an image")
    node = _node(start_node, objects=gcs_emulator.section)
    url = f"{_base(node)}/v1/projects/p/locations/l/endpoints/1234567890:predict"
    body = {"instances": [
        {"gcs_uri": "gs://not-allowed-bucket/cxr/image.png", "bearer_token": TOKEN},
        {"gcs_uri": "s3://inputs/cxr/image.png"},
        {"gcs_uri": "gs://inputs/cxr/notes.txt", "bearer_token": TOKEN},
        {"gcs_uri": "gs://inputs/absent.png"},
    ]}
    answer = httpx.post(url, json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    errors = [p["error"] for p in answer.json()["predictions"]]
    assert [e["code"] for e in errors] == ["fetch_failed", "invalid_instance", "unsupported_media_type", "not_found"]
    assert "not-allowed-bucket" in errors[0]["description"]
    assert TOKEN not in answer.text


def test_openapi_documents_the_vertex_path_and_the_cap(start_node: Any) -> None:
    """The OpenAPI document carries the Vertex path, the instance shapes and the micro-batch cap."""
    doc = httpx.get(f"{_base(_node(start_node))}/openapi.json", timeout=30).json()
    vertex = doc["paths"]["/v1/projects/{project}/locations/{location}/endpoints/{endpoint}:predict"]["post"]
    ours = doc["paths"]["/v1/models/{name}:predict"]["post"]
    for op in (vertex, ours):
        assert "api.max_instances" in op["description"] and "tensors.max_batch" in op["description"]
        assert {"200", "400", "404"} <= set(op["responses"])
    text = json.dumps(doc["components"]["schemas"])
    assert all(f'"{field}"' in text for field in ("gcs_uri", "prompt_query", "dicomweb_uri", "input_bytes"))
    envelope = doc["components"]["schemas"]["PredictResponse"]["properties"]
    assert set(envelope) == {"predictions", "deployedModelId", "model", "modelVersionId", "modelDisplayName",
                             "metadata"}


def test_a_requests_instances_share_one_micro_batch(start_node: Any) -> None:
    """Eight images and eight prompts of one request ride in one image batch and one text batch.

    The batcher is given a long delay, so only the request's own flush (after all of its items)
    dispatches: instances racing each other into the batcher would show up as more batches.
    """
    node = start_node(inference={"models_dir": str(ENGINES), "backends": ["onnxruntime"], "max_batch_delay_ms": 1000})
    png = base64.b64encode(image("PNG")).decode()
    body = {"instances": [{"input_bytes": png, "prompt_query": f"nodule {i}"} for i in range(8)]}
    url = f"{_base(node)}/v1/projects/p/locations/l/endpoints/demo-image-text:predict"
    assert httpx.post(url, json=body, timeout=60).status_code == 200  # opens the predictor
    predictor = node.models.predictor("demo-image-text")
    assert predictor.text is not None
    image_before, text_before = predictor.stats(), predictor.text.batcher.stats()
    answer = httpx.post(url, json=body, timeout=60)
    assert answer.status_code == 200 and all(len(p) == 3 for p in answer.json()["predictions"]), answer.text[:300]
    image_after, text_after = predictor.stats(), predictor.text.batcher.stats()
    assert (image_after.items - image_before.items, image_after.batches - image_before.batches) == (8, 1)
    assert (text_after.items - text_before.items, text_after.batches - text_before.batches) == (8, 1)
