"""``POST /v1/invocations`` end to end: a real uvicorn server, a real HTTP webhook receiver checking the HMAC."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import wait_for
from tests.receiver import WebhookReceiver as Receiver

ENGINES = Path(__file__).resolve().parents[1] / "engines"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def start(start_node: Any, **api: Any) -> Node:
    return start_node(inference={"models_dir": str(ENGINES), "backends": ["onnxruntime"]},
                      api={"outbound_allowlist": ["127.0.0.1"], **api})


def dicom_bytes() -> bytes:
    buf = io.BytesIO()
    next(ct_datasets(SeriesSpec(slices=1, rows=64, columns=64, seed="invoke"))).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def invoke(node: Node, data: bytes, headers: dict[str, str], filename: str = "scan.dcm", **query: str) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{node.api.port}/v1/invocations", params=query, headers=headers,
                      files={"image": (filename, data, "application/octet-stream")}, timeout=30)


def status(node: Node, request_uuid: str) -> dict[str, Any]:
    return httpx.get(f"http://127.0.0.1:{node.api.port}/v1/invocations/{request_uuid}").json()


def verify(node: Node, headers: dict[str, str], body: bytes) -> bool:
    secret = (node.config.storage.root / "webhook.key").read_bytes().strip()  # as the README says
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["X-Signature-SHA256"], expected)


def test_invocation_end_to_end_signed_webhook(start_node: Any, receiver: Receiver) -> None:
    node = start(start_node)
    key = node.config.storage.root / "webhook.key"
    assert key.stat().st_mode & 0o777 == 0o600
    r = invoke(node, dicom_bytes(), {"Webhook-Url": receiver.url, "Examination-ID": "EX-42"})
    assert r.status_code == 202, r.text
    answer = r.json()
    assert answer["status"] == "sent" and answer["filename"] == "scan.dcm" and answer["examination_id"] == "EX-42"
    assert wait_for(lambda: len(receiver.posts) == 1, 20)
    headers, body = receiver.posts[0]
    assert verify(node, headers, body)
    assert not verify(node, headers, body + b" ")
    payload = json.loads(body)
    assert payload["request_uuid"] == answer["request_uuid"] and payload["status"] == "done"
    assert payload["model"] == "ct-body" and payload["modelVersionId"] == "1.0.0"
    assert payload["prediction"]["labels"][0]["voxels"] > 1000
    assert wait_for(lambda: status(node, answer["request_uuid"])["webhook"]["state"] == "delivered", 5)
    st = status(node, answer["request_uuid"])
    assert st["state"] == "done" and st["result"] == payload and st["webhook"]["attempts"] == 1
    assert not list(node.spool.tmp.glob("inv-*"))  # the upload is gone once done


def test_png_on_ct_model_fails_with_reason_in_webhook(start_node: Any, receiver: Receiver) -> None:
    from PIL import Image

    node = start(start_node)
    buf = io.BytesIO()
    Image.new("L", (32, 32)).save(buf, "PNG")
    r = invoke(node, buf.getvalue(), {"Webhook-Url": receiver.url}, filename="x.png", model="ct-lungs")
    assert r.status_code == 202, r.text
    assert wait_for(lambda: len(receiver.posts) == 1, 20)
    payload = json.loads(receiver.posts[0][1])
    assert payload["status"] == "failed" and payload["model"] == "ct-lungs"
    assert payload["error"]["code"] == "image_not_accepted"
    assert status(node, r.json()["request_uuid"])["state"] == "failed"


def test_webhook_retried_with_backoff(start_node: Any) -> None:
    receiver = Receiver(fail=2)
    try:
        node = start(start_node)
        r = invoke(node, dicom_bytes(), {"Webhook-Url": receiver.url})
        rid = r.json()["request_uuid"]
        assert wait_for(lambda: status(node, rid)["webhook"]["state"] == "delivered", 20)
        assert len(receiver.posts) == 3 and status(node, rid)["webhook"]["attempts"] == 3
        assert len({b for _, b in receiver.posts}) == 1  # every retry sends the same signed bytes
        assert all(verify(node, h, b) for h, b in receiver.posts)
    finally:
        receiver.close()


def test_pending_webhook_resumes_after_restart(start_node: Any, tmp_path: Path) -> None:
    receiver = Receiver(fail=1)
    try:
        node = start(start_node, )
        rid = invoke(node, dicom_bytes(), {"Webhook-Url": receiver.url}).json()["request_uuid"]
        assert wait_for(lambda: status(node, rid)["webhook"]["attempts"] == 1, 20)
        node.stop()
        again = start(start_node)  # same storage root
        assert wait_for(lambda: status(again, rid)["webhook"]["state"] == "delivered", 20)
        assert len(receiver.posts) == 2
    finally:
        receiver.close()


def test_text_upload_is_415(start_node: Any) -> None:
    node = start(start_node)
    r = invoke(node, b"just some text\n", {}, filename="notes.dcm")
    assert r.status_code == 415 and "DICOM" in r.json()["error"]["description"]
    r = httpx.post(f"http://127.0.0.1:{node.api.port}/v1/invocations", content=b"raw", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_single_quoted_parameters(start_node: Any) -> None:
    node = start(start_node)
    r = invoke(node, dicom_bytes(), {"Inference-Parameters": "{'threshold': 0.9}"})
    assert r.status_code == 202, r.text
    rid = r.json()["request_uuid"]
    assert wait_for(lambda: status(node, rid)["state"] == "done", 20)
    st = status(node, rid)
    assert st["parameters"] == {"threshold": 0.9} and st["webhook"]["state"] == "none"
    for bad in ("__import__('os').system('true')", "{'threshold': 7}", "{'nope': 1}", "[1, 2]"):
        r = invoke(node, dicom_bytes(), {"Inference-Parameters": bad})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_parameters", bad


@pytest.mark.parametrize(("url", "why"), [
    ("http://169.254.169.254/latest/meta-data", "169.254"),
    ("http://10.20.30.40/hook", "private"),
    ("http://127.0.0.1:9/hook", "loopback"),
    ("file:///etc/passwd", "scheme"),
    ("http://user:pw@example.org/hook", "user info"),
])
def test_webhook_ssrf_refused(start_node: Any, url: str, why: str) -> None:
    node = start(start_node, outbound_allowlist=[])
    r = invoke(node, dicom_bytes(), {"Webhook-Url": url})
    assert r.status_code == 400 and r.json()["error"]["code"] == "webhook_refused"
    assert why in r.json()["error"]["description"]


def test_unknown_invocation_is_404(start_node: Any) -> None:
    node = start(start_node)
    r = httpx.get(f"http://127.0.0.1:{node.api.port}/v1/invocations/00000000-0000-0000-0000-000000000000")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
