"""The model registry: the store is scanned once, again only when models_dir changes or an admin route says so."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dicom_node.config import InferenceConfig
from dicom_node.errors import ModelError
from dicom_node.registry import ModelRegistry

ENGINES = Path(__file__).resolve().parents[1] / "engines"


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    shutil.copytree(ENGINES, tmp_path / "engines", ignore=shutil.ignore_patterns("*.plan", "__pycache__"))
    return ModelRegistry(InferenceConfig(models_dir=tmp_path / "engines", backends=["onnxruntime"]))


def test_store_is_cached_until_models_dir_changes(registry: ModelRegistry) -> None:
    store = registry.store()
    assert registry.store() is store and registry.get("ct-body") is store.get("ct-body")
    spec = registry.models_dir / "ct-body" / "model.toml"
    text = spec.read_text()
    spec.write_text(text.replace('description = "', 'description = "edited on disk: ', 1))
    st = spec.stat()
    os.utime(spec, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a coarse clock must not hide the edit
    edited = registry.store()
    assert edited is not store and edited.get("ct-body").spec.description.startswith("edited on disk: ")
    shutil.rmtree(registry.models_dir / "ct-lungs")
    assert "ct-lungs" not in registry.store().names()


def test_reload_and_forget(registry: ModelRegistry) -> None:
    store = registry.store()
    registry.reload()
    assert registry.store() is not store
    predictor = registry.predictor("ct-body")
    assert registry.predictor("ct-body") is predictor and registry.loaded() == {"ct-body": predictor}
    registry.forget("ct-body")
    assert registry.loaded() == {} and registry.predictor("ct-body") is not predictor
    registry.close()
    assert registry.loaded() == {}


def test_unknown_model_is_a_model_error(registry: ModelRegistry) -> None:
    with pytest.raises(ModelError) as caught:
        registry.get("absent")
    assert caught.value.kind == "not_found" and "absent" in str(caught.value)
    with pytest.raises(ModelError):
        registry.predictor("absent")


def test_status_names_invalid_specs(registry: ModelRegistry) -> None:
    assert registry.status()["ct-body"] is None
    (registry.models_dir / "broken").mkdir()
    (registry.models_dir / "broken" / "model.toml").write_text("name = 1\n")
    assert registry.status()["broken"].startswith("invalid spec: ")
