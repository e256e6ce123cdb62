"""Clara AIAA model administration and model list: the documented requests, sent unchanged to a running node.

Sources of the examples (``tests/compat/aiaa/admin_*.json``, ``models_*.json``):

- Clara Train 4.1, "AIAA Server APIs": https://docs.nvidia.com/clara/clara-train-sdk/aiaa/server_apis.html
  (``GET``/``PUT``/``DELETE /admin/model/{model}``, ``-F "config=@config_aiaa.json;type=application/json"
  -F "data=@model..."``);
- Clara TLT-MI, "AIAA Server APIs": https://docs.nvidia.com/clara/tlt-mi/aiaa/server_apis.html (``PATCH``
  with ``-d @config_aiaa.json``; ``GET /v1/models``, ``?label=spleen&type=segmentation``, ``?model=``);
- the model config: Clara Train 3.1, "Model Config",
  https://docs.nvidia.com/clara/clara-train-archive/3.1/aiaa/model_config.html;
- the list's shape: 3D Slicer's AIAA plugin iterates the answer as a list and reads ``name``, ``type``
  and ``labels`` (https://github.com/NVIDIA/ai-assisted-annotation-client, ``slicer-plugin/.../SegmentEditorEffect.py``).

The config examples load the node's bundled ``ct-body`` ONNX graph under AIAA's documented model
name, so the translated spec is shown to run: its prediction equals ``ct-body``'s.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest

from dicom_node.aiaa import config as aiaa
from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from inference.spec import ModelSpec
from tests.aiaa_examples import COMPAT, check, load, send

ENGINES = Path(__file__).resolve().parents[1] / "engines"
MODEL = "clara_ct_seg_spleen_amp"  # the documented example's name


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    target = tmp_path / "engines"
    shutil.copytree(ENGINES, target, ignore=shutil.ignore_patterns("*.plan", "__pycache__"))
    return target


def _files(models_dir: Path) -> dict[str, bytes]:
    config = json.loads((COMPAT / "config_aiaa.json").read_text())
    patched = {**config, "description": "patched: " + config["description"]}
    return {
        "{{CONFIG_AIAA}}": (COMPAT / "config_aiaa.json").read_bytes(),
        "{{CONFIG_AIAA_PATCHED}}": json.dumps(patched, indent=2).encode(),
        "{{CONFIG_AIAA_RESAMPLING}}": (COMPAT / "config_aiaa_resampling.json").read_bytes(),
        "{{ONNX_MODEL}}": (models_dir / "ct-body" / "model.onnx").read_bytes(),
    }


def _predict(base: str, model: str) -> dict[str, Any]:
    ds = next(ct_datasets(SeriesSpec(slices=1, rows=64, columns=64, seed="aiaa-admin")))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    reply = httpx.post(f"{base}/v1/models/{model}:predict", timeout=120,
                       json={"instances": [{"input_bytes": base64.b64encode(buf.getvalue()).decode()}]})
    assert reply.status_code == 200, reply.text
    return dict(reply.json()["predictions"][0])


def test_documented_admin_and_list_examples(start_node: Any, models_dir: Path) -> None:
    node: Node = start_node(inference={"models_dir": str(models_dir), "backends": ["onnxruntime"]})
    base = f"http://127.0.0.1:{node.api.port}"
    values, files = {"MODEL": MODEL}, _files(models_dir)

    loaded = check(send(base, load("admin_put_model.json"), values, files), load("admin_put_model.json"), values)
    assert loaded == {"name": MODEL, "labels": ["spleen"], "type": "segmentation", "version": "3",
                      "description": json.loads(files["{{CONFIG_AIAA}}"])["description"]}
    for name in ("models_all.json", "models_label_type.json", "models_specific.json"):
        check(send(base, load(name), values, files), load(name), values)

    # GET answers the config as loaded; a model.toml model's config is drawn from its spec.
    got = check(send(base, load("admin_get_model.json"), values, files), load("admin_get_model.json"), values)
    assert got == json.loads(files["{{CONFIG_AIAA}}"])
    builtin = check(send(base, load("admin_get_builtin_model.json"), values, files),
                    load("admin_get_builtin_model.json"), values)
    assert builtin["type"] == "segmentation" and builtin["labels"] == ["Body"]

    # The translated spec runs the same graph with the same decision as ct-body.
    spec = httpx.get(f"{base}/v1/models/{MODEL}").json()["spec"]
    assert spec["postprocessing"] == {"output": None, "activation": "none", "decision": "threshold", "threshold": 0.25}
    assert spec["tensors"]["inputs"] == [{"name": "ct", "dtype": "float32", "dims": [1, -1, -1]}]
    ours, theirs = _predict(base, MODEL), _predict(base, "ct-body")
    (mine,), (body,) = ours["labels"], theirs["labels"]
    assert (mine["name"], body["name"]) == ("spleen", "Body") and mine["voxels"] > 0
    assert {**mine, "name": "Body"} == body  # same channel, voxels, bbox and run lengths

    patched = check(send(base, load("admin_patch_model.json"), values, files), load("admin_patch_model.json"), values)
    assert patched["description"].startswith("patched: ")
    assert httpx.get(f"{base}/admin/model/{MODEL}").json()["description"].startswith("patched: ")
    listed = httpx.get(f"{base}/v1/models", params={"model": MODEL}).json()
    assert listed[0]["description"].startswith("patched: ")

    before = sorted(p.name for p in (models_dir / MODEL).iterdir())
    check(send(base, load("admin_put_unmappable.json"), values, files), load("admin_put_unmappable.json"), values)
    assert sorted(p.name for p in (models_dir / MODEL).iterdir()) == before  # nothing written
    assert httpx.get(f"{base}/admin/model/{MODEL}").json()["description"].startswith("patched: ")

    # One model store: the node's own PATCH edits the same model, and GET then draws the config from the spec.
    assert httpx.patch(f"{base}/admin/models/{MODEL}", json={"description": "edited as TOML"}).status_code == 200
    drawn = httpx.get(f"{base}/admin/model/{MODEL}").json()
    assert drawn["description"] == "edited as TOML" and drawn["labels"] == ["spleen"] and "writer" not in drawn

    check(send(base, load("admin_delete_model.json"), values, files), load("admin_delete_model.json"), values)
    assert httpx.get(f"{base}/admin/model/{MODEL}").status_code == 404
    assert httpx.get(f"{base}/v1/models", params={"model": MODEL}).json() == []
    assert not (models_dir / MODEL).exists()
    assert send(base, load("admin_delete_model.json"), values, files).status_code == 404


def test_admin_routes_need_an_admin_host(start_node: Any, models_dir: Path) -> None:
    node: Node = start_node(inference={"models_dir": str(models_dir)}, api={"admin_hosts": ["10.9.8.0/24"]})
    base = f"http://127.0.0.1:{node.api.port}"
    values, files = {"MODEL": MODEL}, _files(models_dir)
    for name in ("admin_put_model.json", "admin_get_model.json", "admin_patch_model.json", "admin_delete_model.json"):
        reply = send(base, load(name), values, files)
        assert reply.status_code == 403 and "not allowed from this address" in reply.text, (name, reply.text)
    assert not (models_dir / MODEL).exists()
    assert httpx.get(f"{base}/v1/models").status_code == 200  # reading needs no admin host


def test_model_file_and_config_refusals(start_node: Any, models_dir: Path) -> None:
    node: Node = start_node(inference={"models_dir": str(models_dir)})
    put = f"http://127.0.0.1:{node.api.port}/admin/model/{MODEL}"
    config = (COMPAT / "config_aiaa.json").read_bytes()

    def upload(data: bytes, filename: str, cfg: bytes = config) -> httpx.Response:
        return httpx.put(put, files={"config": ("config_aiaa.json", cfg, "application/json"),
                                     "data": (filename, data, "application/octet-stream")})

    for data, filename, words in [(b"PK\x03\x04torchscript", "model.ts", "TorchScript"),
                                  (b"ftrt\x00\x00\x00\x00plan", "model.plan", "TensorRT plan"),
                                  (b"\x0a\x05graph", "model.trt.pb", "not an ONNX file"),
                                  (b"", "model.onnx", "empty")]:
        reply = upload(data, filename)
        assert reply.status_code == 400 and words in reply.json()["error"]["description"], (filename, reply.text)
    onnx = (models_dir / "ct-body" / "model.onnx").read_bytes()
    for cfg, field in [(b"{not json", "config"), (b"[1]", "config"), (json.dumps({"type": "pipeline"}).encode(), "type"),
                       (json.dumps({"type": "segmentation", "labels": [1]}).encode(), "labels")]:
        reply = upload(onnx, "model.onnx", cfg)
        assert reply.status_code == 400 and reply.json()["error"]["description"].startswith(field), reply.text
    assert httpx.put(put, files={"data": ("model.onnx", onnx, "application/octet-stream")}).status_code == 400
    assert not (models_dir / MODEL).exists()


def _spec(config: dict[str, Any]) -> ModelSpec:
    return ModelSpec.model_validate(aiaa.to_spec("m", config))


BASE: dict[str, Any] = {"version": "3", "type": "segmentation", "labels": ["liver", "tumor"]}


def test_translation_maps_the_documented_sections() -> None:
    spec = _spec({**BASE, "pre_transforms": [
        {"name": "LoadNifti", "args": {"fields": "image"}},
        {"name": "ScaleIntensityRange", "args": {"a_min": -21, "a_max": 189, "b_min": 0, "b_max": 1, "clip": True}}],
        "inference": {"image": "image", "name": "TRTISInference",
                      "args": {"scanning_window": True, "batch_size": 2, "roi": [96, 128, 32]}},
        "post_transforms": [{"name": "Activations", "args": {"softmax": True}}, {"name": "ArgmaxAcrossChannels"}]})
    assert spec.task == "segmentation" and spec.version == "3"
    assert spec.preprocessing.mode == "3d" and spec.preprocessing.sliding_window is not None
    assert spec.preprocessing.sliding_window.roi == (32, 128, 96)  # AIAA's [x, y, z] -> (slices, rows, cols)
    assert spec.preprocessing.intensity.model_dump() == {"kind": "window", "center": 84.0, "width": 210.0}
    assert (spec.postprocessing.activation, spec.postprocessing.decision) == ("softmax", "argmax")
    assert [(lab.channel, lab.name) for lab in spec.labels] == [(1, "liver"), (2, "tumor")]  # 0 is background
    assert spec.tensors.inputs[0].dims == [1, 32, 128, 96] and spec.tensors.outputs[0].dims == [3, 32, 128, 96]
    assert spec.tensors.max_batch == 2 and spec.input.geometry.volume
    normalized = _spec({**BASE, "pre_transforms": [{"name": "NormalizeIntensityd",
                                                    "args": {"subtrahend": 40, "divisor": 80}}]})
    assert normalized.preprocessing.intensity.model_dump() == {"kind": "normalize", "mean": 40.0, "std": 80.0,
                                                               "clip": None}
    assert normalized.preprocessing.mode == "2d" and normalized.postprocessing.threshold == 0.5


def test_translation_of_interactive_types() -> None:
    deepgrow = _spec({**BASE, "type": "deepgrow", "labels": ["organ"], "pre_transforms": [
        {"name": "AddGuidanceSignald", "args": {"sigma": 2.5}}]})
    assert deepgrow.guidance is not None and deepgrow.guidance.actions == ["deepgrow"]
    assert deepgrow.guidance.channels == ["foreground", "background"] and deepgrow.guidance.sigma == 2.5
    assert deepgrow.tensors.inputs[0].dims[0] == 3
    assert aiaa.list_entry(deepgrow)["deepgrow"] == "2D" and aiaa.aiaa_type(deepgrow) == "deepgrow"
    dextr = _spec({**BASE, "type": "annotation", "labels": ["organ"],
                   "inference": {"args": {"roi": [128, 128, 128]}}})
    assert dextr.guidance is not None and dextr.guidance.actions == ["dextr3d"] and dextr.tensors.inputs[0].dims[0] == 2
    assert aiaa.aiaa_type(dextr) == "annotation" and aiaa.type_matches("dextr3d", dextr)


@pytest.mark.parametrize("config, field", [
    ({**BASE, "type": "others"}, "type"),
    ({**BASE, "pre_transforms": [{"name": "LoadNifti"}, {"name": "ScaleByResolution", "args": {}}]},
     "pre_transforms[1].name"),
    ({**BASE, "pre_transforms": [{"name": "ScaleIntensityRange", "args": {"a_min": 0, "a_max": 1, "clip": False}}]},
     "pre_transforms[0].args"),
    ({**BASE, "pre_transforms": [{"name": "NormalizeNonzeroIntensities"}]}, "pre_transforms[0].name"),
    ({**BASE, "post_transforms": [{"name": "KeepLargestConnectedComponent"}]}, "post_transforms[0].name"),
    ({**BASE, "inference": {"args": {"roi": [1, 2, 3, 4]}}}, "inference.args.roi"),
    ({**BASE, "inference": {"trtis": {"input": [{"name": "a", "dims": [1, 2]}, {"name": "b", "dims": [1]}],
                                      "output": [{"name": "o", "dims": [1]}]}}}, "inference.trtis.input"),
    ({**BASE, "inference": {"trtis": {"input": [{"name": "a", "data_type": "TYPE_STRING", "dims": [1, 2, 2]}],
                                      "output": [{"name": "o", "dims": [1, 2, 2]}]}}}, "inference.trtis.input[0].data_type"),
    ({**BASE, "labels": ["a", "a"]}, "labels"),
])
def test_translation_refuses_what_cannot_be_mapped(config: dict[str, Any], field: str) -> None:
    with pytest.raises(aiaa.AiaaConfigError) as caught:
        aiaa.to_spec("m", config)
    assert caught.value.field == field, str(caught.value)


@pytest.mark.parametrize("name", ["ct-body", "ct-lungs", "ct-body-png"])
def test_a_drawn_config_translates_back_to_the_same_model(name: str) -> None:
    spec = ModelSpec.model_validate(tomllib.loads((ENGINES / name / "model.toml").read_text()))
    again = ModelSpec.model_validate(aiaa.to_spec(name, aiaa.from_spec(spec), spec.onnx))
    assert again.tensors.inputs == spec.tensors.inputs and again.tensors.outputs == spec.tensors.outputs
    assert again.preprocessing.intensity == spec.preprocessing.intensity
    assert (again.preprocessing.mode, again.preprocessing.sliding_window) == (spec.preprocessing.mode,
                                                                              spec.preprocessing.sliding_window)
    assert again.postprocessing == spec.postprocessing
    assert [lab.name for lab in again.labels] == [lab.name for lab in spec.labels]
