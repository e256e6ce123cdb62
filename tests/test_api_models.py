"""Model endpoints: listing and detail on a real uvicorn server; admin upload, patch and delete."""

from __future__ import annotations

import shutil
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from dicom_node.api.app import create_app
from dicom_node.api.deps import ApiServices
from dicom_node.api.modelfiles import dump_toml, merge_patch
from dicom_node.node import Node
from tests.conftest import node_config

ENGINES = Path(__file__).resolve().parents[1] / "engines"


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    target = tmp_path / "engines"
    shutil.copytree(ENGINES, target, ignore=shutil.ignore_patterns("*.plan", "__pycache__"))
    return target


@pytest.fixture
def client(tmp_path: Path, models_dir: Path) -> TestClient:
    config = node_config(tmp_path / "node", api={"enabled": False}, inference={"models_dir": str(models_dir)})
    return TestClient(create_app(config, ApiServices.of(Node(config))))


def upload(name: str, toml: str, onnx: bytes | None) -> dict[str, Any]:
    files = {"model.toml": ("model.toml", toml.encode(), "application/toml")}
    if onnx is not None:
        files["model.onnx"] = ("model.onnx", onnx, "application/octet-stream")
    return {"files": files}


def test_list_and_detail_on_the_real_server(start_node: Callable[..., Node], models_dir: Path) -> None:
    node: Node = start_node(inference={"models_dir": str(models_dir)})
    base = f"http://127.0.0.1:{node.api.port}"

    def names(**q: str) -> list[str]:
        # Clara AIAA's answer shape (issue 17): a JSON list, each model with name, labels, description, version, type.
        listed = httpx.get(f"{base}/v1/models", params=q).json()
        shape = {"name", "labels", "description", "version", "type", "task", "backend", "state"}
        assert isinstance(listed, list) and all(set(m) - {"deepgrow"} == shape for m in listed), listed
        return [m["name"] for m in listed]

    segmentation = ["ct-body", "ct-body-png", "ct-lungs", "demo-annotation"]
    assert names() == [*segmentation, "demo-image-embedding", "demo-image-text"]
    assert names(task="embedding") == ["demo-image-embedding", "demo-image-text"]
    assert names(label="BODY") == ["ct-body", "ct-body-png"] and names(label="nothing") == []
    assert names(task="segmentation") == segmentation and names(task="classification") == []
    assert names(name="ct-lungs") == ["ct-lungs"]
    # Clara AIAA's filters (issue 12: both were ignored and every model listed).
    assert names(type="segmentation") == ["ct-body", "ct-body-png", "ct-lungs"]  # demo-annotation is AIAA's annotation type
    # Interactive models (a [guidance] table) are AIAA's annotation (DExtr3D) and deepgrow types.
    interactive = [n for n in names() if n == "demo-annotation"]
    assert names(type="classification") == [] and names(type="deepgrow") == names(type="annotation") == interactive
    assert names(model="ct-lungs") == ["ct-lungs"] and names(model="absent") == []
    assert names(type="segmentation", model="ct-body", label="body") == ["ct-body"]
    for query, words in [({"type": "nonsense"}, "type"), ({"colour": "red"}, "colour"),
                         ({"tpye": "segmentation", "labels": "x"}, "labels, tpye")]:
        r = httpx.get(f"{base}/v1/models", params=query)
        assert r.status_code == 400 and words in r.json()["error"]["description"], (query, r.text)
    detail = httpx.get(f"{base}/v1/models/ct-body").json()
    assert detail["backend"] == "onnxruntime" and detail["state"] == "ready" and detail["version"] == "1.0.0"
    assert "tensorrt" in detail["backends_unavailable"] and detail["spec"]["labels"][0]["name"] == "Body"
    assert len(detail["onnx_sha256"]) == 64
    missing = httpx.get(f"{base}/v1/models/absent")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_upload_validates_before_writing(client: TestClient, models_dir: Path) -> None:
    spec = (models_dir / "ct-body" / "model.toml").read_text().replace('name = "ct-body"', 'name = "ct-new"')
    onnx = (models_dir / "ct-body" / "model.onnx").read_bytes()
    r = client.put("/admin/models/ct-new", **upload("ct-new", spec.replace("ct-new", "ct-other", 1), onnx))
    assert r.status_code == 400 and "does not match" in r.json()["error"]["description"]
    assert client.put("/admin/models/ct-new", **upload("ct-new", "name = [", onnx)).status_code == 400
    bad_task = spec.replace('task = "segmentation"', 'task = "nonsense"')
    r = client.put("/admin/models/ct-new", **upload("ct-new", bad_task, onnx))
    assert r.status_code == 400 and r.json()["error"]["description"].startswith("task")
    assert client.put("/admin/models/ct-new", **upload("ct-new", spec, None)).status_code == 400
    assert client.put("/admin/models/Bad_Name", **upload("x", spec, onnx)).status_code == 400
    assert not (models_dir / "ct-new").exists()
    assert not any((models_dir / ".tmp").iterdir()) if (models_dir / ".tmp").exists() else True
    r = client.put("/admin/models/ct-new", **upload("ct-new", spec, onnx))
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "ct-new" and r.json()["state"] == "ready"
    assert (models_dir / "ct-new" / "model.onnx").read_bytes() == onnx
    assert client.get("/v1/models/ct-new").status_code == 200
    again = client.put("/admin/models/ct-new", **upload("ct-new", spec.replace('"1.0.0"', '"1.1.0"'), onnx))
    assert again.status_code == 200 and again.json()["version"] == "1.1.0"
    assert list((models_dir / ".tmp").iterdir()) == []


def test_upload_needs_content_length_and_multipart(client: TestClient) -> None:
    r = client.put("/admin/models/ct-x", content=iter([b"abc"]), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 411
    r = client.put("/admin/models/ct-x", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 415


class FakePredictor:
    """A stand-in for a cached predictor: records that it was closed."""

    closed = False

    def close(self) -> None:
        self.closed = True


def test_patch_persists_and_reloads(client: TestClient, models_dir: Path) -> None:
    models = client.app.state.services.models  # type: ignore[attr-defined]
    store = models.store()
    assert models.store() is store  # scanned once, not per request
    fake = FakePredictor()
    models._predictors["ct-body"] = fake
    r = client.patch("/admin/models/ct-body", json={"description": "patched", "postprocessing": {"threshold": 0.4}})
    assert r.status_code == 200, r.text
    assert r.json()["spec"]["postprocessing"]["threshold"] == 0.4 and r.json()["description"] == "patched"
    assert fake.closed and "ct-body" not in models._predictors
    assert models.store() is not store  # the admin change reloaded the store
    on_disk = tomllib.loads((models_dir / "ct-body" / "model.toml").read_text())
    assert on_disk["postprocessing"]["threshold"] == 0.4 and on_disk["labels"][0]["name"] == "Body"
    before = (models_dir / "ct-body" / "model.toml").read_text()
    assert client.patch("/admin/models/ct-body", json={"task": "nonsense"}).status_code == 400
    assert client.patch("/admin/models/ct-body", json={"name": "other"}).status_code == 400
    assert client.patch("/admin/models/ct-body", json={"onnx": "../x.onnx"}).status_code == 400
    assert (models_dir / "ct-body" / "model.toml").read_text() == before
    assert client.patch("/admin/models/absent", json={}).status_code == 404


def test_delete(client: TestClient, models_dir: Path) -> None:
    assert client.delete("/admin/models/ct-lungs").status_code == 204
    assert not (models_dir / "ct-lungs").exists()
    assert client.get("/v1/models/ct-lungs").status_code == 404
    assert client.delete("/admin/models/ct-lungs").status_code == 404


def test_merge_patch_and_toml_round_trip() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": None, "e": [1]}, "d": "x"}) == {
        "a": {"c": 2, "e": [1]}, "d": "x"}
    data = {"name": "m", "x": 1.5, "flag": True, "t": {"k-1": "q\"uote\n", "nested": {"z": [1, 2]}},
            "labels": [{"channel": 0, "color": [1, 2, 3]}], "key with space": "ü"}
    assert tomllib.loads(dump_toml(data)) == data


def test_upload_of_an_image_text_model_carries_its_text_tower(client: TestClient, models_dir: Path) -> None:
    """An [embedding.text] spec needs the tower's ONNX and tokenizer parts; the uploaded model then answers prompts."""
    source = ENGINES / "demo-image-text"
    spec = (source / "model.toml").read_text().replace('name = "demo-image-text"', 'name = "my-image-text"')
    base = upload("my-image-text", spec, (source / "model.onnx").read_bytes())["files"]
    r = client.put("/admin/models/my-image-text", files=base)
    assert r.status_code == 400 and "text.onnx" in r.json()["error"]["description"], r.text
    assert not (models_dir / "my-image-text").exists(), "nothing written before the upload is whole"
    tower = {"text.onnx": ("text.onnx", (source / "text.onnx").read_bytes(), "application/octet-stream"),
             "tokenizer.json": ("tokenizer.json", (source / "tokenizer.json").read_bytes(), "application/json")}
    r = client.put("/admin/models/my-image-text", files={**base, "text.onnx": tower["text.onnx"]})
    assert r.status_code == 400 and "tokenizer.json" in r.json()["error"]["description"], r.text
    assert client.put("/admin/models/my-image-text", files={**base, **tower}).status_code == 200
    assert sorted(p.name for p in (models_dir / "my-image-text").iterdir()) == [
        "model.onnx", "model.toml", "text.onnx", "tokenizer.json"]

    def prompt(endpoint: str) -> list[float]:
        r = client.post(f"/v1/projects/p/locations/l/endpoints/{endpoint}:predict",
                        json={"instances": [{"prompt_query": "pleural effusion"}]})
        assert r.status_code == 200, r.text
        return list(r.json()["predictions"][0]["contrastive_txt_emb"])

    assert prompt("my-image-text") == prompt("demo-image-text"), "the uploaded tower is the bundled one's"
