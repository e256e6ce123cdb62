"""Model specs and the model store: validation at load, errors naming file and key."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from inference.errors import ModelNotFoundError, ParameterError, SpecError
from inference.spec import derived_series_number, load_spec
from inference.store import ModelStore

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ROOT / "engines"
TEST_MODELS = ROOT / "tests" / "models"


def _copy_model(src: str, dst_root: Path, name: str | None = None) -> Path:
    dst = dst_root / (name or src)
    shutil.copytree(ENGINES / src, dst, ignore=shutil.ignore_patterns("cache", "*.plan"))
    return dst


def test_bundled_specs_load() -> None:
    store = ModelStore([ENGINES, TEST_MODELS])
    assert store.errors == {}
    demos = ["demo-annotation", "demo-image-embedding", "demo-image-text"]
    assert store.names() == ["ct-body", "ct-body-png", "ct-lungs", *demos]
    assert store.names(include_hidden=True) == ["ct-body", "ct-body-png", "ct-lungs", *demos, "random-cnn"]
    body = store.get("ct-body").spec
    assert body.task == "segmentation"
    assert body.postprocessing.threshold == 0.25
    assert body.labels[0].type.value == "38266002" and body.labels[0].type.scheme == "SCT"
    assert body.tensors.inputs[0].dims == [1, -1, -1]


def test_invalid_spec_names_file_and_key_and_others_still_load(tmp_path: Path) -> None:
    good = _copy_model("ct-body", tmp_path)
    bad = _copy_model("ct-lungs", tmp_path)
    text = (bad / "model.toml").read_text().replace("threshold = 0.25\n", "threshold = 1.5\n", 1)
    (bad / "model.toml").write_text(text)
    store = ModelStore([tmp_path])
    assert store.names() == ["ct-body"]
    assert good.name in store.names()
    (msg,) = store.errors.values()
    assert str(bad / "model.toml") in msg
    assert "postprocessing.threshold" in msg
    with pytest.raises(ModelNotFoundError, match="rejected.*postprocessing.threshold"):
        store.get("ct-lungs")


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('task = "segmentation"', 'task = "detection"', "task"),
        ('max_batch = 32', 'max_batch = 0', "tensors.max_batch"),
        ('mode = "2d"', 'mode = "3d"', "preprocessing"),
        ('intensity = { kind = "none" }', 'intensity = { kind = "window", center = 0.0, width = -1.0 }', "preprocessing.intensity.window.width"),
        ('color = [230, 190, 140]', 'color = [300, 0, 0]', "labels.0.color"),
        ('default = 0.25', 'default = 2.0', "parameters.threshold"),
        ('precision = "fp32"', 'precison = "fp32"', "precison"),
        ('dims = [1, -1, -1] }]\noutputs', 'dims = [1, 0, -1] }]\noutputs', "tensors.inputs.0.dims"),
        ("series_number = 9010", "series_number = 0", "series_number"),
        ("series_number = 9010", "series_number = 2147483647", "series_number"),
        ("series_number = 9010", 'series_number = "9010"', "series_number"),
        ('version = "1.0.0"', 'version = "1.0\\\\1"', "version"),
    ],
)
def test_spec_errors_name_the_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    model = _copy_model("ct-body", tmp_path)
    text = (model / "model.toml").read_text()
    assert old in text
    (model / "model.toml").write_text(text.replace(old, new, 1))
    with pytest.raises(SpecError) as info:
        load_spec(model / "model.toml")
    assert str(info.value).startswith(f"{model / 'model.toml'}: {key}")


def test_not_toml_and_missing_onnx(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.toml").write_text("name = \n")
    noonnx = _copy_model("ct-body", tmp_path, "ct-body")
    (noonnx / "model.onnx").unlink()
    store = ModelStore([tmp_path])
    assert store.names() == []
    messages = sorted(store.errors.values())
    assert "not valid TOML" in messages[0]
    assert "onnx: file 'model.onnx' not found" in messages[1]


def test_name_must_match_folder(tmp_path: Path) -> None:
    _copy_model("ct-body", tmp_path, "renamed")
    store = ModelStore([tmp_path])
    (msg,) = store.errors.values()
    assert "name: 'ct-body' does not match its folder 'renamed'" in msg


def test_parameters_defaults_and_bounds() -> None:
    spec = ModelStore([ENGINES]).get("ct-body").spec
    assert spec.resolve_parameters() == {"threshold": 0.25, "slice_idx": []}
    assert spec.resolve_parameters({"threshold": 0.5, "slice_idx": [0, 2]}) == {"threshold": 0.5, "slice_idx": [0, 2]}
    with pytest.raises(ParameterError, match="outside"):
        spec.resolve_parameters({"threshold": 1.5})
    with pytest.raises(ParameterError, match="no parameter 'tresh'"):
        spec.resolve_parameters({"tresh": 0.1})
    with pytest.raises(ParameterError, match="list of integers"):
        spec.resolve_parameters({"slice_idx": 3})
    with pytest.raises(ParameterError, match="outside"):
        spec.resolve_parameters({"slice_idx": [-1]})


def test_contract_table_is_consumed_by_validation() -> None:
    """The [input] table is plain data that dicom_node.validation's Contract accepts as is."""
    validation = pytest.importorskip("dicom_node.validation.contract")
    spec = ModelStore([ENGINES]).get("ct-body").spec
    contract = validation.Contract.from_dict(spec.contract_table(), source="ct-body")
    assert contract.name == "ct-body"
    assert contract.modalities == ("CT",)
    assert contract.geometry.volume is True


def test_inference_never_imports_dicom_or_runtimes() -> None:
    import subprocess
    import sys

    code = (
        "import sys, inference, inference.store, inference.backends, inference.predictor, inference.trt_builder;"
        "from pathlib import Path;"
        f"s = inference.store.ModelStore([Path({str(ENGINES)!r})]);"
        "inference.backends.select_backend(s.get('ct-body').spec, ['tensorrt'], inference.backends.BackendOptions());"
        "bad = [m for m in ('pydicom', 'dicom_node', 'tensorrt', 'tritonclient', 'cuda', 'pycuda') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    lazy = subprocess.run(
        [sys.executable, "-c", "import sys, inference.backends.onnxruntime; sys.exit('onnxruntime' in sys.modules)"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert lazy.returncode == 0, "importing the backend module must not import onnxruntime"


def test_bundled_models_number_their_result_series_apart() -> None:
    """Each bundled model's SEG/SR pair (n, n + 1) is its own, so a PACS lists them apart."""
    store = ModelStore([ENGINES])
    # Embedding models (the demos) write no SEG or SR, so they hold no series number.
    pairs = {name: store.get(name).spec.result_series_number for name in store.names()
             if store.get(name).spec.task != "embedding"}
    assert all(store.get(name).spec.series_number == n for name, n in pairs.items()), "bundled specs set series_number"
    taken = [n + k for n in pairs.values() for k in (0, 1)]
    assert len(set(taken)) == len(taken), pairs


def test_series_number_defaults_to_one_derived_from_the_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("ct-body", "ct-lungs"):
        model = _copy_model(name, tmp_path)
        text = (model / "model.toml").read_text()
        (model / "model.toml").write_text("\n".join(line for line in text.splitlines() if not line.startswith("series_number")))
    store = ModelStore([tmp_path])
    body, lungs = store.get("ct-body").spec, store.get("ct-lungs").spec
    assert body.series_number is None and body.result_series_number == derived_series_number("ct-body")
    assert lungs.result_series_number == derived_series_number("ct-lungs") != body.result_series_number
    # Two models claiming the same number load, with a warning naming both.
    clash = _copy_model("ct-body", tmp_path / "clash", "other")
    text = (clash / "model.toml").read_text().replace('name = "ct-body"', 'name = "other"', 1)
    (clash / "model.toml").write_text(text.replace("series_number = 9010", "series_number = 9020", 1))
    with caplog.at_level(logging.WARNING, logger="inference.store"):
        store = ModelStore([ENGINES, tmp_path / "clash"])
    assert "other" in store.names()
    assert any("model=other other=ct-lungs number=9020" in r.getMessage() for r in caplog.records), caplog.text
