"""Bundled models: reproducible ONNX files, and masks that match the NumPy references."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from models.reference import body_mask, dice, lungs_mask, phantom
from onnx import TensorProto, helper

from inference.backends import BackendOptions
from inference.predictor import Predictor, open_predictor
from inference.processing import apply_intensity, resize_bilinear, window_starts
from inference.spec import Window
from inference.store import ModelEntry, ModelStore

ROOT = Path(__file__).resolve().parents[1]
STORE = ModelStore([ROOT / "engines", ROOT / "tests" / "models"])
SCRIPTS = [ROOT / "engines" / "ct-body" / "make_model.py", ROOT / "engines" / "ct-lungs" / "make_model.py",
           ROOT / "engines" / "ct-body-png" / "make_model.py", ROOT / "tests" / "models" / "random-cnn" / "make_model.py"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.parent.name)
def test_make_model_regenerates_byte_identical_onnx(script: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    subprocess.run([sys.executable, str(script), str(out)], check=True, cwd=tmp_path)
    assert out.read_bytes() == (script.parent / "model.onnx").read_bytes()
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


@pytest.fixture(scope="module")
def ort_predictors() -> Iterator[dict[str, Predictor]]:
    predictors = {name: open_predictor(STORE.get(name), BackendOptions(), ["onnxruntime"]) for name in ("ct-body", "ct-lungs")}
    yield predictors
    for p in predictors.values():
        p.close()


@pytest.mark.parametrize(("name", "reference"), [("ct-body", body_mask), ("ct-lungs", lungs_mask)])
@pytest.mark.parametrize("seed", [0, 1])
def test_bundled_model_matches_numpy_reference(ort_predictors: dict[str, Predictor], name: str, reference: object, seed: int) -> None:
    vol = phantom(slices=6, rows=96, cols=112, seed=seed)
    prediction = ort_predictors[name].predict(vol)
    mask = prediction.result[:, 0].astype(bool)
    ref = reference(vol)  # type: ignore[operator]
    assert ref.sum() > 500, "phantom must contain the structure"
    assert dice(mask, ref) >= 0.99
    assert prediction.result.dtype == np.uint8 and prediction.result.shape == (6, 1, 96, 112)


def test_body_contains_lungs_and_drops_couch(ort_predictors: dict[str, Predictor]) -> None:
    vol = phantom(slices=2, rows=96, cols=96)
    body = ort_predictors["ct-body"].predict(vol).result[:, 0].astype(bool)
    lungs = ort_predictors["ct-lungs"].predict(vol).result[:, 0].astype(bool)
    assert lungs.sum() > 0 and not (lungs & ~body).any(), "lungs lie inside the body"
    assert not body[:, int(96 * 0.9)].any(), "the thin couch is removed by the opening"
    assert not body[:, 0, :].any() and not body[:, :, 0].any()


def test_threshold_and_slice_idx_parameters(ort_predictors: dict[str, Predictor]) -> None:
    vol = phantom(slices=5, rows=64, cols=64)
    full = ort_predictors["ct-body"].predict(vol)
    part = ort_predictors["ct-body"].predict(vol, {"slice_idx": [4, 1]})
    assert part.slice_indices == [4, 1]
    assert np.array_equal(part.result[0], full.result[4]) and np.array_equal(part.result[1], full.result[1])
    none = ort_predictors["ct-body"].predict(vol, {"threshold": 1.0})
    assert none.result.sum() == 0


def test_classifier_softmax_argmax() -> None:
    predictor = open_predictor(STORE.get("random-cnn"), BackendOptions(), ["onnxruntime"])
    try:
        prediction = predictor.predict(phantom(slices=3, rows=80, cols=80))
    finally:
        predictor.close()
    assert prediction.raw["logits"].shape == (3, 3)
    np.testing.assert_allclose(prediction.probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert np.array_equal(prediction.result, prediction.probabilities.argmax(axis=1))


def test_window_and_resize() -> None:
    x = np.array([-2000.0, -1000.0, 0.0, 1000.0, 3000.0], dtype=np.float32)
    np.testing.assert_allclose(apply_intensity(x, Window(kind="window", center=0.0, width=2000.0)), [0, 0, 0.5, 1, 1])
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert np.array_equal(resize_bilinear(img, (4, 4)), img)
    down = resize_bilinear(img, (2, 2))
    np.testing.assert_allclose(down, [[2.5, 4.5], [10.5, 12.5]])
    assert window_starts(10, 4, 0.5) == [0, 2, 4, 6]
    assert window_starts(11, 4, 0.5) == [0, 2, 4, 6, 7]
    assert window_starts(3, 4, 0.5) == [0]


def _identity_3d_model(tmp_path: Path) -> ModelEntry:
    """A 3D model (Identity) with a sliding-window spec, to check tiling and blending."""
    folder = tmp_path / "identity-3d"
    folder.mkdir()
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "D", "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "D", "H", "W"])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(folder / "model.onnx"))
    (folder / "model.toml").write_text(
        """
name = "identity-3d"
version = "1"
task = "segmentation"
[preprocessing]
mode = "3d"
intensity = { kind = "window", center = 0.0, width = 2000.0 }
sliding_window = { roi = [4, 16, 16], overlap = 0.5, blend = "gaussian" }
[tensors]
max_batch = 4
inputs = [{ name = "x", dims = [1, 4, 16, 16] }]
outputs = [{ name = "y", dims = [1, 4, 16, 16] }]
[[labels]]
channel = 0
name = "Bright"
category = { value = "91723000", meaning = "Anatomical structure" }
type = { value = "91723000", meaning = "Anatomical structure" }
"""
    )
    return ModelStore([tmp_path]).get("identity-3d")


def test_sliding_window_3d_blends_back_to_the_input(tmp_path: Path) -> None:
    entry = _identity_3d_model(tmp_path)
    predictor = open_predictor(entry, BackendOptions(), ["onnxruntime"])
    try:
        vol = phantom(slices=7, rows=30, cols=21, seed=3)  # not multiples of the roi, one dim padded
        vol = vol[:, :, :13]
        prediction = predictor.predict(vol)
        stats = predictor.stats()
    finally:
        predictor.close()
    expected = apply_intensity(vol, entry.spec.preprocessing.intensity)
    assert prediction.raw["y"].shape == (1, 1, 7, 30, 13)
    np.testing.assert_allclose(prediction.raw["y"][0, 0], expected, atol=1e-5)
    assert stats.items > 4 and max(stats.sizes) <= 4
