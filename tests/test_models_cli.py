"""``dicom-node models list|show|build`` through the real CLI entry point."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from dicom_node.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, models_dir: Path) -> Path:
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[inference]\nmodels_dir = "{models_dir}"\nbackends = ["tensorrt", "onnxruntime"]\n')
    return cfg


def test_models_list_shows_backend_and_why_others_are_unavailable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(_config(tmp_path, ROOT / "engines")), "models", "list"]) == 0
    out = capsys.readouterr().out
    assert "ct-body" in out and "ct-lungs" in out and "random-cnn" not in out
    assert "runs on: onnxruntime" in out
    assert "triton       unavailable: no server configured" in out
    if importlib.util.find_spec("tensorrt") is None:
        assert "tensorrt     unavailable: missing package: tensorrt" in out


def test_models_list_json_all_and_rejected_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    shutil.copytree(ROOT / "tests" / "models" / "random-cnn", models / "random-cnn")
    shutil.copytree(ROOT / "engines" / "ct-body", models / "ct-body", ignore=shutil.ignore_patterns("cache"))
    spec = models / "ct-body" / "model.toml"
    spec.write_text(spec.read_text().replace('version = "1.0.0"', "version = 3"))
    assert main(["--config", str(_config(tmp_path, models)), "models", "list", "--all", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in data["models"]] == ["random-cnn"]
    assert data["models"][0]["backend"] == "onnxruntime" and data["models"][0]["hidden"] is True
    (msg,) = data["rejected"].values()
    assert msg.startswith(f"{spec}: version:")
    assert data["backends"]["onnxruntime"]["available"] is True


def test_models_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(_config(tmp_path, ROOT / "engines")), "models", "show", "ct-lungs"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["spec"]["name"] == "ct-lungs"
    assert data["spec"]["labels"][0]["type"] == {"value": "39607008", "scheme": "SCT", "meaning": "Lung"}
    assert len(data["onnx_sha256"]) == 64 and data["backend"] == "onnxruntime"
    assert main(["--config", str(_config(tmp_path, ROOT / "engines")), "models", "show", "nope"]) == 1
    assert "no model named 'nope'" in capsys.readouterr().err


def test_models_build_without_tensorrt_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here; the build itself is covered by test_inference_tensorrt")
    assert main(["--config", str(_config(tmp_path, ROOT / "engines")), "models", "build", "ct-body"]) == 1
    err = capsys.readouterr().err
    assert "cannot build a TensorRT engine: missing package: tensorrt" in err
    # Without names every listed model is built: the first failure stops the run with the same message.
    assert main(["--config", str(_config(tmp_path, ROOT / "engines")), "models", "build"]) == 1
    assert "cannot build a TensorRT engine: missing package: tensorrt" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--config", str(_config(tmp_path, empty)), "models", "build"]) == 1
    assert "no models in" in capsys.readouterr().err
