"""The Triton facade's documented example requests, sent unchanged against a running node (issue 16).

Every file under ``tests/compat/facade/`` is one example request (format: that folder's
README.md). The test fills the placeholders, sends the request as written to a real
uvicorn server of an in-process node, and checks the documented status code, content
type and answer shape; an example naming a webhook also waits for the real receiver to
get the signed result.

Source of the shapes: no public copy of the facade's documents was found (searched with
the code, pages, docs and issues corpora for ``bucket_invocations``,
``bucket_invocations_azure_uae``, ``Input-Location`` / ``Write-To-GCS``, ``Cannot decode
image data`` and ``Inference-Parameters`` + ``Webhook-Url`` + ``Examination-ID``: no
hit from the facade), so they follow issue 16's text: ``GET /ping``; ``POST /invocations``
(multipart ``image``; headers ``Inference-Parameters``, ``Webhook-Url``,
``Examination-ID``) answering 200 ``{filename, status: "sent", request_uuid,
examination_id}`` and ``Cannot decode image data`` as text for an undecodable upload.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import wait_for
from tests.receiver import WebhookReceiver

ENGINES = Path(__file__).resolve().parents[1] / "engines"
COMPAT = Path(__file__).resolve().parent / "compat" / "facade"
EXAMPLES = sorted(p for p in COMPAT.glob("*.json") if not p.name.startswith("bucket_"))


def png_image() -> bytes:
    """A synthetic axial CT slice rendered as the facade's 8-bit PNG (window centre 0, width 2000 HU)."""
    from PIL import Image

    ds = next(ct_datasets(SeriesSpec(slices=1, rows=64, columns=64, seed="facade")))
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    gray = np.round(255 * np.clip((hu + 1000) / 2000, 0, 1)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "PNG")
    return buf.getvalue()


def dicom_image() -> bytes:
    """One synthetic CT slice as DICOM Part 10."""
    buf = io.BytesIO()
    next(ct_datasets(SeriesSpec(slices=1, rows=64, columns=64, seed="facade"))).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def fill(text: str, values: dict[str, str]) -> str:
    """Replace each ``{{NAME}}`` placeholder; an unknown one fails the test (the file would not be sent as written)."""
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    assert "{{" not in text, f"unfilled placeholder in {text!r}"
    return text


def send(base: str, example: dict[str, Any], values: dict[str, str], files: dict[str, bytes]) -> httpx.Response:
    """Send one example request exactly as its file writes it (placeholders filled)."""
    req = example["request"]
    headers = {k: fill(v, values) for k, v in req.get("headers", {}).items()}
    multipart = None
    if "multipart" in req:
        multipart = {name: (part["filename"], files[part["content"]], part["content_type"])
                     for name, part in req["multipart"].items()}
    return httpx.request(req["method"], base + fill(req["path"], values), headers=headers, files=multipart, timeout=60)


def check(reply: httpx.Response, expect: dict[str, Any]) -> dict[str, Any] | None:
    """Assert the documented status, content type and shape; returns the JSON answer (None for text)."""
    assert reply.status_code == expect["status"], reply.text
    assert reply.headers["content-type"].split(";")[0] == expect["content_type"]
    if "text" in expect:
        assert reply.text == expect["text"]
        return None
    body = reply.json()
    assert set(body) == set(expect["fields"]), body
    if expect.get("fields_are_lists"):
        assert all(isinstance(v, list) for v in body.values()), body
    if "status_field" in expect:
        assert body["status"] == expect["status_field"], body
    for word in expect.get("mentions", []):
        assert word in json.dumps(body), (word, body)
    return dict(body)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


@pytest.fixture
def node(start_node: Any) -> Node:
    return start_node(inference={"models_dir": str(ENGINES), "backends": ["onnxruntime"]},
                      api={"outbound_allowlist": ["127.0.0.1"]})


FILES = {"{{PNG_IMAGE}}": png_image(), "{{DICOM_IMAGE}}": dicom_image(), "{{TEXT_FILE}}": b"meeting notes\n"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_documented_example(path: Path, node: Node, receiver: WebhookReceiver) -> None:
    example = json.loads(path.read_text(encoding="utf-8"))
    base = f"http://127.0.0.1:{node.api.port}"
    body = check(send(base, example, {"WEBHOOK_URL": receiver.url}, FILES), example["expect"])
    want = example["expect"].get("webhook")
    if body is None:
        assert not receiver.posts  # refused before anything was queued
        return
    if want is None:
        return
    assert wait_for(lambda: len(receiver.posts) == 1, 30)
    result = json.loads(receiver.posts[0][1])
    assert result["request_uuid"] == body["request_uuid"] and result["status"] == want, result
    assert result["examination_id"] == body["examination_id"] == example["request"]["headers"]["Examination-ID"]


def test_slice_idx_is_honoured(node: Node, receiver: WebhookReceiver) -> None:
    """A declared model-specific parameter changes the run: slice_idx past the one slice fails it, naming why."""
    example = json.loads((COMPAT / "invocations_dicom_slice_idx.json").read_text(encoding="utf-8"))
    example["request"]["headers"]["Inference-Parameters"] = '{"slice_idx": [3]}'
    base = f"http://127.0.0.1:{node.api.port}"
    check(send(base, example, {"WEBHOOK_URL": receiver.url}, FILES), example["expect"])
    assert wait_for(lambda: len(receiver.posts) == 1, 30)
    result = json.loads(receiver.posts[0][1])
    assert result["status"] == "failed" and "slice_idx" in result["error"]["description"], result


def test_both_path_sets_share_one_implementation(node: Node) -> None:
    """/v1/invocations answers 202 with the same fields; its refusal of the same text upload is JSON 415."""
    base = f"http://127.0.0.1:{node.api.port}"
    files = {"image": ("slice.png", FILES["{{PNG_IMAGE}}"], "image/png")}
    v1 = httpx.post(base + "/v1/invocations", files=files, timeout=60)
    facade = httpx.post(base + "/invocations", files=files, timeout=60)
    assert (v1.status_code, facade.status_code) == (202, 200)
    assert set(v1.json()) == set(facade.json())
    text = {"image": ("notes.png", b"meeting notes\n", "image/png")}
    refused = httpx.post(base + "/v1/invocations", files=text, timeout=60)
    assert refused.status_code == 415 and refused.json()["error"]["code"] == "unsupported_media_type"
    truncated = {"image": ("cut.png", FILES["{{PNG_IMAGE}}"][:60], "image/png")}
    cut = httpx.post(base + "/invocations", files=truncated, timeout=60)
    assert (cut.status_code, cut.text) == (400, "Cannot decode image data")
