"""Clara AIAA inference, annotation and polygon examples, sent unchanged against a running node (issue 17).

Every ``infer_*``, ``dextr3d_*``, ``deepgrow_*``, ``mask2polygon_*`` and ``fixpolygon_*`` file under
``tests/compat/aiaa/`` is one example request (format: that folder's README.md). The test fills the
placeholders, sends it as written to the real uvicorn server of an in-process node and checks the
documented status, content type and answer shape (the NIfTI mask on the input's grid, the
multipart ``params`` + file parts the reference clients parse, polygons).

Sources:
- AIAA Server APIs, Clara Train 4.1: https://docs.nvidia.com/clara/clara-train-sdk/aiaa/server_apis.html
  (and the 3.x pages, https://docs.nvidia.com/clara/tlt-mi/clara-train-sdk-v3.1/aiaa/server_apis.html):
  ``POST /v1/segmentation?model=...&output=image`` with ``-F "params={}" -F "image=@spleen.nii.gz"``;
- the reference clients, https://github.com/NVIDIA/ai-assisted-annotation-client: ``py_client/client_api.py``
  (``datapoint`` field, ``session_id``, status 440, multipart answers with ``params``),
  ``py_client/aas_tests.json`` (the fixpolygon test polygon), ``cpp-client/src/client.cpp``.

What was read and what was not: the stored copies of the AIAA page end after the segmentation
example, so the segmentation curl (``-F "params={}" -F "image=@spleen.nii.gz;type=application/x-gzip"``,
``output=image``) is verbatim; the dextr3d, deepgrow, inference, mask2polygon and fixpolygon requests
follow that same pattern with the ``params`` keys the reference clients send (``points``;
``foreground``/``background``/``current_point``; ``more_points``; ``poly``, ``*_index``,
``vertex_offset``, ``propagate_neighbor``), and their ``curl`` lines are written in that shape.
"""

from __future__ import annotations

import email.parser
import gzip
import io
import json
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pytest

from dicom_node.node import Node
from dicom_node.pixels.volume import load_series
from dicom_node.synthetic import SeriesSpec, write_ct_series

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ROOT / "engines"
COMPAT = Path(__file__).resolve().parent / "compat" / "aiaa"
PREFIXES = ("infer_", "dextr3d_", "deepgrow_", "mask2polygon_", "fixpolygon_")
EXAMPLES = sorted(p for p in COMPAT.glob("*.json") if p.name.startswith(PREFIXES))
F = np.diag([-1.0, -1.0, 1.0, 1.0])
#: (i, j, k, 1) <-> (s, r, c, 1).
P = np.eye(4)[[2, 1, 0, 3]]


def ct_files(tmp: Path, seed: str = "aiaa") -> list[Path]:
    """A synthetic 8-slice 64x64 CT series on disk (elliptic body, two lungs)."""
    return write_ct_series(tmp, SeriesSpec(slices=8, rows=64, columns=64, seed=seed))


def nifti_of(files: list[Path]) -> bytes:
    """The series as dcm2niix writes one: int16 HU, i = column, j = row, k = slice, RAS affine; built here
    with nibabel alone from the DICOM geometry (PS3.3 C.7.6.2.1.1), independent of the node's writer."""
    volume = load_series(files, workers=0)
    image = nib.Nifti1Image(np.rint(volume.array).astype(np.int16).transpose(2, 1, 0).copy(), F @ volume.affine @ P)
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes())


def mask_nifti() -> bytes:
    """An 8-slice 64x64 label: a disc on slices 2..5, empty elsewhere."""
    xx, yy = np.mgrid[0:64, 0:64]
    disc = ((xx - 30) ** 2 + (yy - 34) ** 2 <= 15**2).astype(np.uint8)
    data = np.zeros((64, 64, 8), np.uint8)
    data[:, :, 2:6] = disc[:, :, None]
    return gzip.compress(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0])).to_bytes())


def png_image() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((256, 256), 90, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def fill(text: str, values: dict[str, str]) -> str:
    """Replace each ``{{NAME}}``; an unknown one fails the test (the file would not be sent as written)."""
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    assert "{{" not in text, f"unfilled placeholder in {text!r}"
    return text


def send(base: str, example: dict[str, Any], values: dict[str, str], files: dict[str, bytes]) -> httpx.Response:
    """Send one example exactly as its file writes it: plain fields as form fields (curl -F name=value),
    file parts with their filename and type (curl -F name=@file;type=...)."""
    req = example["request"]
    fields, uploads = {}, []
    for name, part in req.get("multipart", {}).items():
        if "value" in part:
            fields[name] = fill(part["value"], values)
        else:
            uploads.append((name, (part["filename"], files[part["content"]], part["content_type"])))
    url, headers = base + fill(req["path"], values), dict(req.get("headers", {}))
    if uploads:
        return httpx.request(req["method"], url, headers=headers, data=fields, files=uploads, timeout=120)
    # Fields alone: curl -F still sends multipart/form-data (httpx would send a urlencoded form).
    boundary = "aiaa-example-boundary"
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                    for k, v in fields.items()) + f"--{boundary}--\r\n".encode()
    headers["content-type"] = f"multipart/form-data; boundary={boundary}"
    return httpx.request(req["method"], url, headers=headers, content=body, timeout=120)


def parts(reply: httpx.Response) -> dict[str, tuple[str | None, bytes]]:
    """The parts of a multipart/form-data answer by field name: (filename, payload), as the clients' cgi parser reads them."""
    head = f"Content-Type: {reply.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser().parsebytes(head + reply.content)
    assert message.is_multipart()
    out = {}
    for part in message.get_payload():
        out[part.get_param("name", header="content-disposition")] = (part.get_filename(), part.get_payload(decode=True))
    return out


def check(reply: httpx.Response, expect: dict[str, Any], sent_nifti: bytes) -> None:
    """The documented status, content type and shape of one answer."""
    assert reply.status_code == expect["status"], reply.text[:500]
    content_type = reply.headers["content-type"].split(";")[0]
    assert content_type == expect["content_type"], reply.headers["content-type"]
    body: Any = None
    mask: bytes | None = None
    if content_type == "application/json":
        body = reply.json()
    elif content_type == "multipart/form-data":
        found = parts(reply)
        assert set(found) == {"params", "image"}, set(found)
        assert found["params"][0] is None and found["image"][0]  # a form field and a file, as the clients sort them
        body, mask = json.loads(found["params"][1]), found["image"][1]
    else:
        mask = reply.content
    if "fields" in expect:
        assert set(body) == set(expect["fields"]), body
    for word in expect.get("mentions", []):
        assert word in json.dumps(body), (word, body)
    if "nifti" in expect:
        assert mask is not None
        out = nib.Nifti1Image.from_bytes(gzip.decompress(mask))
        assert out.get_data_dtype() == np.uint8
        if expect["nifti"] == "same_grid":
            ref = nib.Nifti1Image.from_bytes(gzip.decompress(sent_nifti))
            assert out.shape == ref.shape
            np.testing.assert_allclose(out.affine, ref.affine, atol=1e-5)
        data = np.asarray(out.dataobj)
        for x, y, z in expect.get("mask_at", []):
            assert data[x, y, z] > 0, (x, y, z)
        for x, y, z in expect.get("mask_not_at", []):
            assert data[x, y, z] == 0, (x, y, z)
    if expect.get("png"):
        assert mask is not None and mask.startswith(b"\x89PNG")
    if "polygons_per_slice" in expect:
        assert len(body) == expect["polygons_per_slice"]
        assert [bool(s) for s in body] == [False, False, True, True, True, True, False, False]
        assert all(len(v) == 2 and all(isinstance(c, int) for c in v) for s in body for poly in s for v in poly)
    if "moved" in expect:
        node = body
        for index in expect["moved"]["path"]:
            node = node[index]
        assert node == expect["moved"]["to"], node


@pytest.fixture
def node(start_node: Any) -> Node:
    return start_node(inference={"models_dir": str(ENGINES), "backends": ["onnxruntime"]})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    files = ct_files(tmp_path_factory.mktemp("aiaa-ct"))
    return {"{{NIFTI_IMAGE}}": nifti_of(files), "{{DICOM_IMAGE}}": files[3].read_bytes(),
            "{{NIFTI_MASK}}": mask_nifti(), "{{PNG_IMAGE}}": png_image(),
            **{f"series{n}": f.read_bytes() for n, f in enumerate(files)}}


def open_session(base: str, inputs: dict[str, bytes]) -> str:
    """A /v1/sessions upload of the CT series (the node's existing session service)."""
    files = [("file", (f"{n}.dcm", inputs[f"series{n}"], "application/dicom")) for n in range(8)]
    reply = httpx.put(base + "/v1/sessions", files=files, timeout=60)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["session_id"])


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_documented_example(path: Path, node: Node, inputs: dict[str, bytes]) -> None:
    example = json.loads(path.read_text(encoding="utf-8"))
    base = f"http://127.0.0.1:{node.api.port}"
    values = {"SEGMENTATION_MODEL": "ct-body", "ANNOTATION_MODEL": "demo-annotation"}
    if "{{SESSION_ID}}" in example["request"]["path"]:
        values["SESSION_ID"] = open_session(base, inputs)
    if "{{NIFTI_SESSION_ID}}" in example["request"]["path"]:
        reply = httpx.put(base + "/session/?expiry=600", files={"image": ("image.nii.gz", inputs["{{NIFTI_IMAGE}}"])},
                          timeout=60)
        assert reply.status_code == 200, reply.text
        values["NIFTI_SESSION_ID"] = str(reply.json()["session_id"])
    check(send(base, example, values, inputs), example["expect"], inputs["{{NIFTI_IMAGE}}"])


def test_examples_cover_every_route() -> None:
    """Each AIAA route of this half has at least one example file (a new route needs one)."""
    paths = {json.loads(p.read_text())["request"]["path"].split("?")[0] for p in EXAMPLES}
    assert paths == {"/v1/segmentation", "/v1/inference", "/v1/dextr3d", "/v1/deepgrow", "/v1/mask2polygon",
                     "/v1/fixpolygon"}


def test_docs_show_both_path_sets(node: Node) -> None:
    """One implementation, two path sets: /docs's schema lists the AIAA paths next to the node's own."""
    base = f"http://127.0.0.1:{node.api.port}"
    paths = httpx.get(base + "/openapi.json", timeout=30).json()["paths"]
    for path in ("/v1/segmentation", "/v1/inference", "/v1/dextr3d", "/v1/deepgrow", "/v1/mask2polygon",
                 "/v1/fixpolygon", "/v1/models/{name}:predict"):
        assert "post" in paths[path], path
    assert httpx.get(base + "/docs", timeout=30).status_code == 200


def test_bad_images_are_refused_by_name(node: Node, inputs: dict[str, bytes]) -> None:
    """Not an image, a gzip bomb, too many voxels, a DICOM outside the contract, no image: 4xx naming why."""
    import pydicom

    base = f"http://127.0.0.1:{node.api.port}/v1/segmentation?model=ct-body&output=json"

    def post(data: bytes | None) -> httpx.Response:
        files = {"image": ("x.nii.gz", data, "application/octet-stream")} if data is not None else None
        if files is None:
            return httpx.post(base, files={"params": (None, "{}")}, timeout=60)
        return httpx.post(base, data={"params": "{}"}, files=files, timeout=60)

    reply = post(b"meeting notes\n" * 40)
    assert reply.status_code == 415 and reply.json()["error"]["code"] == "unsupported_media_type", reply.text
    reply = post(gzip.compress(b"\0" * (80 << 20)))  # gzip, no NIfTI header: refused after 540 inflated bytes
    assert reply.status_code in (400, 413), reply.text
    big = nib.Nifti1Image(np.zeros((512, 512, 300), np.uint8), np.eye(4))  # 78.6 M voxels > api.max_pixels (64 Mi)
    reply = post(gzip.compress(big.to_bytes()))
    assert reply.status_code == 413 and "api.max_pixels" in reply.json()["error"]["description"], reply.text
    mr = pydicom.dcmread(io.BytesIO(inputs["{{DICOM_IMAGE}}"]))
    mr.Modality = "MR"
    buf = io.BytesIO()
    mr.save_as(buf, enforce_file_format=True)
    reply = post(buf.getvalue())
    assert reply.status_code == 422 and reply.json()["error"]["code"] == "contract", reply.text
    reply = post(None)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "image_required", reply.text
    reply = httpx.post(base, data={"params": "[1, 2]"}, files={"image": ("x.nii.gz", inputs["{{NIFTI_IMAGE}}"])},
                       timeout=60)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_params", reply.text


def test_inference_of_a_classification_model_answers_json(start_node: Any, inputs: dict[str, bytes]) -> None:
    """/v1/inference runs any model: a classifier answers its probabilities as JSON (there is no mask to send)."""
    node = start_node(inference={"models_dir": str(ROOT / "tests" / "models"), "backends": ["onnxruntime"]})
    base = f"http://127.0.0.1:{node.api.port}"
    files = {"image": ("image.nii.gz", inputs["{{NIFTI_IMAGE}}"], "application/x-gzip")}
    reply = httpx.post(base + "/v1/inference?model=random-cnn", data={"params": "{}"}, files=files, timeout=60)
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json", reply.text
    body = reply.json()
    assert body["model"] == "random-cnn" and len(body["slices"]) == 8
    assert set(body["slices"][0]["probabilities"]) == {"Class A", "Class B", "Class C"}
    reply = httpx.post(base + "/v1/inference?model=random-cnn&output=image", data={"params": "{}"}, files=files,
                       timeout=60)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "no_image", reply.text
    reply = httpx.post(base + "/v1/segmentation?model=random-cnn", data={"params": "{}"}, files=files, timeout=60)
    assert reply.status_code == 400 and "use /v1/inference" in reply.json()["error"]["description"], reply.text
