"""A CT slice sent as a windowed PNG: predict and invocations reach the bundled ct-body-png model."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
from pathlib import Path

import httpx
import numpy as np
from models.reference import body_mask, dice
from PIL import Image

from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import wait_for
from tests.receiver import WebhookReceiver

ENGINES = str(Path(__file__).resolve().parents[1] / "engines")


def windowed_png() -> tuple[bytes, np.ndarray]:
    """One synthetic CT slice rendered with window centre 0 / width 2000 HU, and its HU."""
    ds = next(iter(ct_datasets(SeriesSpec(slices=1, rows=128, columns=128, seed="png"))))
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    gray = np.round(255 * np.clip((hu + 1000) / 2000, 0, 1)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="PNG")
    return buf.getvalue(), hu


def rle_decode(rle: dict) -> np.ndarray:
    flat = np.zeros(int(np.prod(rle["shape"])), dtype=bool)
    pos, value = 0, False
    for count in rle["counts"]:
        flat[pos:pos + count] = value
        pos, value = pos + count, not value
    return flat.reshape(rle["shape"])


def test_predict_png_matches_the_reference(start_node) -> None:
    node: Node = start_node(inference={"models_dir": ENGINES})
    png, hu = windowed_png()
    r = httpx.post(f"http://127.0.0.1:{node.api.port}/v1/models/ct-body-png:predict", timeout=60,
                   json={"instances": [{"input_bytes": base64.b64encode(png).decode()}]})
    assert r.status_code == 200, r.text
    label = r.json()["predictions"][0]["labels"][0]
    mask = rle_decode(label["rle"])
    assert dice(mask[0], body_mask(hu[None])[0]) >= 0.99


def test_png_invocation_defaults_to_the_image_model_and_signs_the_webhook(start_node, tmp_path: Path) -> None:
    hook = WebhookReceiver()
    try:
        node: Node = start_node(inference={"models_dir": ENGINES}, api={"port": 0, "outbound_allowlist": ["127.0.0.1"]})
        png, hu = windowed_png()
        r = httpx.post(f"http://127.0.0.1:{node.api.port}/v1/invocations", files={"image": ("slice.png", png, "image/png")},
                       headers={"Webhook-Url": hook.url, "Examination-ID": "EX-1"})
        assert r.status_code == 202, r.text
        assert wait_for(lambda: len(hook.posts) == 1, timeout=60)
    finally:
        hook.close()
    headers, body = hook.posts[0]
    signature = {k.lower(): v for k, v in headers.items()}["x-signature-sha256"]
    secret = (node.spool.root / "webhook.key").read_text().strip().encode()
    assert hmac.compare_digest(signature, "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest())
    result = json.loads(body)
    assert result["status"] == "done" and result["model"] == "ct-body-png" and result["examination_id"] == "EX-1"
    mask = rle_decode(result["prediction"]["labels"][0]["rle"])
    assert dice(mask[0], body_mask(hu[None])[0]) >= 0.99
