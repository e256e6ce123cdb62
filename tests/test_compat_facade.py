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
from dicom_node.objects import ObjectUrl
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import wait_for
from tests.objects_peers import ObjectPeer
from tests.receiver import WebhookReceiver

ENGINES = Path(__file__).resolve().parents[1] / "engines"
COMPAT = Path(__file__).resolve().parent / "compat" / "facade"
EXAMPLES = sorted(p for p in COMPAT.glob("*.json") if not p.name.startswith("bucket_"))
BUCKET_EXAMPLES = sorted(COMPAT.glob("bucket_*.json"))


def png_image() -> bytes:
    """A synthetic axial CT slice rendered as the facade's 8-bit PNG (window centre 0, width 2000 HU)."""
    from PIL import Image

    ds = next(ct_datasets(SeriesSpec(slices=1, rows=64, columns=64, seed="facade")))
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    gray = np.round(255 * np.clip((hu + 1000) / 2000, 0, 1)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "PNG")
    return buf.getvalue()


def dicom_series(slices: int = 1, seed: str = "facade") -> list[bytes]:
    """A synthetic CT series as DICOM Part 10 files."""
    out = []
    for ds in ct_datasets(SeriesSpec(slices=slices, rows=64, columns=64, seed=seed)):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def dicom_image() -> bytes:
    """One synthetic CT slice as DICOM Part 10."""
    return dicom_series()[0]


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
    for garbled in (FILES["{{DICOM_IMAGE}}"][:-1], FILES["{{DICOM_IMAGE}}"][:200]):  # cut in pixels, in meta
        bad = httpx.post(base + "/invocations", files={"image": ("x.dcm", garbled, "application/dicom")}, timeout=60)
        assert (bad.status_code, bad.text) == (400, "Cannot decode image data")
    refused = httpx.post(base + "/v1/invocations", files={"image": ("x.dcm", garbled, "application/dicom")}, timeout=60)
    assert refused.status_code == 415 and "not well framed" in refused.json()["error"]["description"]


# -- bucket endpoints (real emulators: fake-gcs-server with gcp-storage-emulator for writes, Azurite) -----------------

#: GCS: fake-gcs-server serves the reads, gcp-storage-emulator takes the writes (``gcs_write_emulator``,
#: tests/objects_peers.py: fake-gcs-server cannot take obstore's object PUT).
STORES = {"gs": ("gcs_write_emulator", "gcs_input_bucket", "gcs_output_bucket"),
          "az": ("azurite", "azure_input_container", "azure_output_container")}


def bucket_node(start_node: Any, peer: ObjectPeer, **objects: Any) -> Node:
    """A node reaching ``peer`` with the facade's default buckets set to the emulator's ``inputs`` and ``results``."""
    _, in_key, out_key = STORES[peer.scheme]
    return start_node(inference={"models_dir": str(ENGINES), "backends": ["onnxruntime"]},
                      api={"outbound_allowlist": ["127.0.0.1"]}, objects={**peer.section, **objects},
                      facade={in_key: "inputs", out_key: "results"})


def seed_inputs(peer: ObjectPeer) -> None:
    """Two images and a four-slice CT series, written through the emulator's own API."""
    peer.seed("images/slice-1.png", png_image())
    peer.seed("images/slice-2.png", png_image())
    for n, data in enumerate(dicom_series(4, "bucket"), start=1):
        peer.seed(f"studies/ct-1/{n:04d}.dcm", data)


def invocation(node: Node, rid: str) -> dict[str, Any]:
    return dict(httpx.get(f"http://127.0.0.1:{node.api.port}/v1/invocations/{rid}", timeout=30).json())


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def check_outputs(peer: ObjectPeer, result_path: str, names: list[str], stored: dict[str, Any]) -> None:
    """Each documented output is in the output bucket, readable, and the JSON is the invocation's result."""
    import pydicom
    from PIL import Image

    folder = ObjectUrl.parse(result_path)
    assert folder.bucket == "results" and folder.key.endswith("/")
    for name in names:
        data = peer.fetch(folder.key + name, bucket="results")
        assert data, f"{name} missing under {result_path}"
        if name == "prediction.json":
            written = json.loads(data)
            assert written["prediction"] == stored["prediction"] and written["result_path"] == result_path
            if peer.sent_types is not None:  # GCS: the emulator behind the shim is told octet-stream (GCS_JSON_PUT)
                assert peer.sent_types[f"/results/{folder.key}{name}"] == "application/json"
        elif name.endswith(".png"):
            mask = np.asarray(Image.open(io.BytesIO(data)))
            assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255} and mask.any()
        else:
            ds = pydicom.dcmread(io.BytesIO(data))
            assert ds.Modality == ("SEG" if name.endswith("seg.dcm") else "SR")


def run_bucket_example(example: dict[str, Any], peer: ObjectPeer, node: Node, receiver: WebhookReceiver) -> None:
    """Send one example, check the answer, wait for each invocation and check its outputs in the bucket."""
    values = {"WEBHOOK_URL": receiver.url, "INPUT_BUCKET": "inputs", "OUTPUT_BUCKET": "results"}
    expect = example["expect"]
    body = check(send(f"http://127.0.0.1:{node.api.port}", example, values, FILES), expect)
    if body is None or expect["status"] != 200:
        return
    for rid, result_path in zip(as_list(body["request_uuid"]), as_list(body["result_path"]), strict=True):
        assert wait_for(lambda rid=rid: invocation(node, rid)["state"] in ("done", "failed"), 60)
        row = invocation(node, rid)
        assert row["state"] == "done", row
        if "result_path" in expect:
            assert result_path == expect["result_path"]
        if expect.get("outputs"):
            check_outputs(peer, result_path, expect["outputs"], row["result"])
    if expect.get("webhook"):
        assert wait_for(lambda: len(receiver.posts) == 1, 30)
        assert json.loads(receiver.posts[0][1])["status"] == expect["webhook"]


@pytest.mark.parametrize("path", BUCKET_EXAMPLES, ids=[p.stem for p in BUCKET_EXAMPLES])
def test_documented_bucket_example(path: Path, request: pytest.FixtureRequest, start_node: Any,
                                   receiver: WebhookReceiver) -> None:
    example = json.loads(path.read_text(encoding="utf-8"))
    scheme = "az" if example["request"]["path"].endswith("_azure_uae") else "gs"
    peer: ObjectPeer = request.getfixturevalue(STORES[scheme][0])
    seed_inputs(peer)
    run_bucket_example(example, peer, bucket_node(start_node, peer), receiver)


@pytest.mark.parametrize("store", ["gs", "az"])
def test_bucket_dicom_folder_honours_slice_idx(store: str, request: pytest.FixtureRequest, start_node: Any) -> None:
    """slice_idx runs the series' chosen slices only: the summary and the SEG say so."""
    import pydicom

    peer: ObjectPeer = request.getfixturevalue(STORES[store][0])
    seed_inputs(peer)
    node = bucket_node(start_node, peer)
    path = "/bucket_invocations" + ("_azure_uae" if store == "az" else "")
    reply = httpx.post(f"http://127.0.0.1:{node.api.port}{path}", timeout=60, headers={
        "Input-Location": "studies/ct-1", "Write-To-GCS": "true", "Inference-Parameters": '{"slice_idx": [1, 2]}'})
    assert reply.status_code == 200, reply.text
    rid, result_path = reply.json()["request_uuid"][0], reply.json()["result_path"][0]
    assert wait_for(lambda: invocation(node, rid)["state"] in ("done", "failed"), 60)
    row = invocation(node, rid)
    series = row["result"]["prediction"]["series"]
    assert row["state"] == "done" and len(series) == 1 and series[0]["instances"] == 4, row
    assert row["input_url"] == f"{store}://inputs/studies/ct-1/"
    assert series[0]["prediction"]["slice_indices"] == [1, 2]
    assert series[0]["prediction"]["labels"][0]["rle"]["shape"][0] == 2
    # Stored and indexed in the node as a series job's results are, written to the bucket or not.
    base = f"http://127.0.0.1:{node.api.port}"
    study = str(pydicom.dcmread(io.BytesIO(dicom_series(4, "bucket")[0])).StudyInstanceUID)
    results = httpx.get(f"{base}/v1/studies/{study}/results", timeout=30).json()["results"]
    assert sorted(r["kind"] for r in results) == ["SEG", "SR"] and {r["job_id"] for r in results} == {rid}
    stored = httpx.get(f"{base}/v1/results/{series[0]['seg_sop_instance_uid']}", timeout=30).content
    seg = pydicom.dcmread(io.BytesIO(stored))
    assert seg.Modality == "SEG" and int(seg.NumberOfFrames) <= 2
    assert peer.fetch(ObjectUrl.parse(result_path).key + "series-1/seg.dcm") == stored


def test_bucket_refusals(request: pytest.FixtureRequest, start_node: Any) -> None:
    """Clear JSON errors, nothing queued: bucket not allowlisted, undeclared parameter, bad flag, undecodable file."""
    peer: ObjectPeer = request.getfixturevalue("gcs_emulator")
    seed_inputs(peer)
    peer.seed("notes/readme.png", b"not an image")
    node = bucket_node(start_node, peer)
    url = f"http://127.0.0.1:{node.api.port}/bucket_invocations"
    cases = [
        ({"Input-Location": "images/", "Input-Bucket-Name": "elsewhere"}, 403, "not in the allowlist"),
        ({"Input-Location": "images/", "Write-To-GCS": "true", "Output-Bucket-Name": "elsewhere"}, 403, "elsewhere"),
        ({"Input-Location": "images/", "Inference-Parameters": "{'iou': 0.5}"}, 400, "'iou'"),
        ({"Input-Location": "images/", "Write-To-GCS": "maybe"}, 400, "Write-To-GCS"),
        ({"Input-Location": "notes/readme.png"}, 415, "PNG"),
        ({"Input-Location": "../etc/passwd"}, 400, "Input-Location"),
    ]
    for headers, status, word in cases:
        reply = httpx.post(url, headers=headers, timeout=60)
        assert reply.status_code == status and word in reply.json()["error"]["description"], (headers, reply.text)
    assert not list(node.spool.tmp.glob("inv-*"))  # a refused single file leaves no upload behind
    jobs = httpx.get(f"http://127.0.0.1:{node.api.port}/v1/jobs", timeout=30).json()["jobs"]
    assert jobs == []  # nothing was queued by any refused request


def test_bucket_dicom_folder_with_a_cut_instance_fails_naming_it(request: pytest.FixtureRequest,
                                                                 start_node: Any) -> None:
    """A folder file cut short fails its invocation with the framing reason (the series would have a gap)."""
    peer: ObjectPeer = request.getfixturevalue("gcs_emulator")
    series = dicom_series(3, "cut")
    for n, data in enumerate(series, start=1):
        peer.seed(f"cut/{n:04d}.dcm", data[:-10] if n == 2 else data)
    peer.seed("cut/notes.txt", b"not DICOM, left out")
    node = bucket_node(start_node, peer)
    reply = httpx.post(f"http://127.0.0.1:{node.api.port}/bucket_invocations", headers={"Input-Location": "cut/"},
                       timeout=60)
    rid = reply.json()["request_uuid"][0]
    assert wait_for(lambda: invocation(node, rid)["state"] in ("done", "failed"), 60)
    row = invocation(node, rid)
    assert row["state"] == "failed" and "object 2 of the input" in row["error"] and "framed" in row["error"], row


def test_bucket_folder_over_the_byte_bound_is_refused(request: pytest.FixtureRequest, start_node: Any) -> None:
    """A DICOM folder larger than facade.max_folder_bytes is a 413 before anything is fetched or queued."""
    peer: ObjectPeer = request.getfixturevalue("gcs_emulator")
    peer.seed("big/0001.dcm", b"\0" * (1024 * 1024 + 1))
    node = start_node(inference={"models_dir": str(ENGINES), "backends": ["onnxruntime"]}, objects=peer.section,
                      facade={"gcs_input_bucket": "inputs", "max_folder_bytes": 1024 * 1024})
    reply = httpx.post(f"http://127.0.0.1:{node.api.port}/bucket_invocations", headers={"Input-Location": "big/"},
                       timeout=60)
    assert reply.status_code == 413 and "facade.max_folder_bytes" in reply.json()["error"]["description"]
    assert httpx.get(f"http://127.0.0.1:{node.api.port}/v1/jobs", timeout=30).json()["jobs"] == []


def test_bucket_wrong_credential_is_a_clear_error(request: pytest.FixtureRequest, start_node: Any) -> None:
    """Azurite checks Shared Key: a wrong account key is refused with the store's reason, no traceback."""
    peer: ObjectPeer = request.getfixturevalue("azurite")
    node = start_node(inference={"models_dir": str(ENGINES), "backends": ["onnxruntime"]},
                      objects=peer.wrong_section, facade={"azure_input_container": "inputs"})
    reply = httpx.post(f"http://127.0.0.1:{node.api.port}/bucket_invocations_azure_uae",
                       headers={"Input-Location": "images/"}, timeout=60)
    assert reply.status_code in (403, 502) and reply.json()["error"]["code"] in ("object_refused", "object_store")
    assert "denied" in reply.json()["error"]["description"] or "refused" in reply.json()["error"]["description"]


def test_mask_png_is_the_label_map_of_the_run_lengths() -> None:
    from PIL import Image

    from dicom_node.api.bucket_runner import mask_png

    one = {"labels": [{"rle": {"shape": [1, 2, 3], "order": "C", "counts": [2, 3, 1]}}]}
    png = mask_png(one)
    assert png is not None
    assert np.asarray(Image.open(io.BytesIO(png))).tolist() == [[0, 0, 255], [255, 255, 0]]
    two = {"labels": [one["labels"][0], {"rle": {"shape": [1, 2, 3], "order": "C", "counts": [0, 1, 5]}}]}
    assert np.asarray(Image.open(io.BytesIO(mask_png(two) or b""))).tolist() == [[2, 0, 1], [1, 1, 0]]
    assert mask_png({"labels": [{"rle": None}]}) is None  # too many runs to answer: no mask, the JSON says so


def test_facade_config_refuses_bad_names() -> None:
    from pydantic import ValidationError

    from dicom_node.config.facade import FacadeConfig

    assert FacadeConfig(output_prefix="/out/ai/").output_prefix == "out/ai"
    for bad in ({"gcs_input_bucket": "Bad Bucket"}, {"output_prefix": "../etc"}, {"output_prefix": "a//b"},
                {"max_folder_objects": 0}):
        with pytest.raises(ValidationError):
            FacadeConfig.model_validate(bad)


class FlakyStoreRunner:
    """A fake :class:`~dicom_node.invocations.Runner` (the store's failure cannot be timed against an emulator):
    its first run fails as a 503 from an object store would, the second succeeds."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, row: dict[str, object], upload: Path) -> dict[str, object]:
        self.calls += 1
        if self.calls == 1:
            return {"error": {"code": "object_store", "description": "Azure Blob Storage answered HTTP 503"},
                    "retry": True}
        return {"prediction": {"ok": True}, "modelVersionId": "1"}


def test_transient_store_failure_runs_the_invocation_again(start_node: Any) -> None:
    from dicom_node.invocations import InvocationService

    node = start_node(api={"enabled": False})  # the fake runner's service is the only one on this queue
    runner = FlakyStoreRunner()
    service = InvocationService(node.config, node.index, node.writer, node.spool.tmp, node.queue, node.outbound,
                                runner)
    service.start()
    service.submit({"id": "r-1", "examination_id": None, "model": "ct-body", "parameters": "{}", "webhook_url": None,
                    "filename": "ct-1/", "input_url": "az://inputs/studies/ct-1/", "output_url": None})
    assert wait_for(lambda: (service.get("r-1") or {}).get("state") == "done", 30)
    row = service.get("r-1") or {}
    assert runner.calls == 2 and json.loads(str(row["result"]))["prediction"] == {"ok": True}
