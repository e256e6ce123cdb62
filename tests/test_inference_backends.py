"""Backend registry: lazy loading, availability reasons, choice order; ONNX Runtime backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from inference.backends import BackendOptions, availability, candidate_order, load_backend, select_backend
from inference.backends.onnxruntime import choose_providers
from inference.backends.triton import check_metadata, parse_url
from inference.errors import BackendError, BackendUnavailableError
from inference.store import ModelStore

ROOT = Path(__file__).resolve().parents[1]
STORE = ModelStore([ROOT / "engines", ROOT / "tests" / "models"])


def test_candidate_order_spec_then_config_then_rest() -> None:
    cnn = STORE.get("random-cnn").spec  # prefers onnxruntime
    body = STORE.get("ct-body").spec  # no preference
    assert candidate_order(cnn, ["tensorrt", "triton"]) == ["onnxruntime", "tensorrt", "triton"]
    assert candidate_order(body, ["triton"]) == ["triton", "tensorrt", "onnxruntime"]


def test_selection_reports_why_backends_are_unavailable() -> None:
    selection = select_backend(STORE.get("ct-body").spec, ["tensorrt", "onnxruntime"], BackendOptions())
    assert selection.name == "onnxruntime"
    assert "no server configured" in selection.passed_over["triton"]
    ok, reason = availability("tensorrt", BackendOptions())
    if not ok:
        assert selection.passed_over["tensorrt"] == reason
        assert "tensorrt" in reason or "GPU" in reason or "cuda" in reason


def test_unknown_and_unavailable_backends_raise() -> None:
    entry = STORE.get("ct-body")
    with pytest.raises(BackendUnavailableError, match="unknown backend"):
        load_backend("tvm", entry, BackendOptions())
    with pytest.raises(BackendUnavailableError, match="triton.*no server configured"):
        load_backend("triton", entry, BackendOptions())


def test_onnxruntime_cpu_providers_without_gpu() -> None:
    assert choose_providers(["CPUExecutionProvider"], BackendOptions()) == ["CPUExecutionProvider"]
    backend = load_backend("onnxruntime", STORE.get("random-cnn"), BackendOptions(onnxruntime_threads=1))
    try:
        x = np.random.default_rng(0).standard_normal((5, 1, 64, 64)).astype(np.float32)
        out = backend.infer({"image": x})
        session = onnxruntime.InferenceSession(str(STORE.get("random-cnn").onnx_path), providers=["CPUExecutionProvider"])
        (direct,) = session.run(["logits"], {"image": x})
        np.testing.assert_allclose(out["logits"], direct, rtol=1e-6, atol=1e-6)
        assert "CPU" in backend.description
        with pytest.raises(BackendError, match="onnxruntime failed"):
            backend.infer({"image": x[:, :, :10]})
    finally:
        backend.close()


def test_triton_url_and_metadata_checks() -> None:
    assert parse_url("127.0.0.1:8001") == ("grpc", "127.0.0.1:8001")
    assert parse_url("grpc://h:1") == ("grpc", "h:1")
    assert parse_url("http://h:8000/") == ("http", "h:8000")
    spec = STORE.get("ct-body").spec
    good = {
        "inputs": [{"name": "ct", "datatype": "FP32", "shape": [-1, 1, -1, -1]}],
        "outputs": [{"name": "body", "datatype": "FP32", "shape": [-1, 1, -1, -1]}],
    }
    check_metadata(spec, good, 32)
    with pytest.raises(BackendError, match="max_batch_size 8"):
        check_metadata(spec, good, 8)
    bad_type = {**good, "inputs": [{"name": "ct", "datatype": "FP16", "shape": [-1, 1, -1, -1]}]}
    with pytest.raises(BackendError, match="'ct' is FP16"):
        check_metadata(spec, bad_type, 32)
    bad_shape = {**good, "outputs": [{"name": "body", "datatype": "FP32", "shape": [-1, 2, -1, -1]}]}
    with pytest.raises(BackendError, match="shape"):
        check_metadata(spec, bad_shape, 32)
    with pytest.raises(BackendError, match="not served"):
        check_metadata(spec, {**good, "outputs": []}, 32)
