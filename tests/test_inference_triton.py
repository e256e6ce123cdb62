"""Triton backend against a real Triton Inference Server (the binary from nvidia-pytriton).

The server runs from ``.venv-triton`` (``bash tests/peers/setup_triton.sh``),
serving the bundled ONNX models through its Python backend on loopback
ephemeral ports. Without it these tests skip with the reason, unless
``DICOM_NODE_REQUIRE_PEERS=1``, where they fail.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from models.reference import body_mask, dice, phantom
from peers.triton.launch import TritonServer, find_install, write_repository

from inference.backends import BackendOptions, load_backend
from inference.errors import BackendError
from inference.predictor import open_predictor
from inference.store import ModelEntry, ModelStore

pytestmark = pytest.mark.peers

ROOT = Path(__file__).resolve().parents[1]
STORE = ModelStore([ROOT / "engines", ROOT / "tests" / "models"])
SERVED = ["ct-body", "random-cnn"]


def _unavailable(reason: str) -> None:
    if os.environ.get("DICOM_NODE_REQUIRE_PEERS") == "1":
        pytest.fail(f"DICOM_NODE_REQUIRE_PEERS=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendOptions]:
    if importlib.util.find_spec("tritonclient") is None:
        _unavailable("tritonclient is not installed in this environment (pip install 'tritonclient[grpc]')")
    install, reason = find_install()
    if install is None:
        _unavailable(reason)
    work = tmp_path_factory.mktemp("triton")
    repo = write_repository(work / "repo", [STORE.get(name) for name in SERVED])
    server = TritonServer(install, repo, work)
    server.start()
    try:
        yield BackendOptions(triton_url=server.grpc_url)
    finally:
        server.stop()


@pytest.mark.parametrize("batch", [1, 7, 32])
def test_random_cnn_parity_with_onnxruntime(triton: BackendOptions, batch: int) -> None:
    entry = STORE.get("random-cnn")
    x = np.random.default_rng(batch).standard_normal((batch, 1, 64, 64)).astype(np.float32)
    remote = load_backend("triton", entry, triton)
    local = load_backend("onnxruntime", entry, BackendOptions())
    try:
        got, want = remote.infer({"image": x}), local.infer({"image": x})
    finally:
        remote.close()
        local.close()
    assert got["logits"].shape == (batch, 3)
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-5, atol=1e-5)


def test_ct_body_on_triton_matches_reference_and_onnxruntime(triton: BackendOptions) -> None:
    entry = STORE.get("ct-body")
    remote = open_predictor(entry, triton, [], backend="triton", max_delay_s=0.005)
    local = open_predictor(entry, BackendOptions(), [], backend="onnxruntime")
    volumes = [phantom(slices=5, rows=80, cols=72, seed=s) for s in range(4)]
    try:
        with ThreadPoolExecutor(4) as pool:
            remote_results = list(pool.map(remote.predict, volumes))
        local_results = [local.predict(v) for v in volumes]
        stats = remote.stats()
    finally:
        remote.close()
        local.close()
    for vol, got, want in zip(volumes, remote_results, local_results, strict=False):
        assert np.array_equal(got.result, want.result)
        assert dice(got.result[:, 0], body_mask(vol)) >= 0.99
    assert stats.items == 20 and stats.failed_items == 0
    assert "triton grpc://127.0.0.1:" in remote.backend.description


def test_metadata_mismatch_is_refused_at_load(triton: BackendOptions) -> None:
    entry = STORE.get("random-cnn")
    wrong_out = entry.spec.tensors.outputs[0].model_copy(update={"dims": [4]})
    tensors = entry.spec.tensors.model_copy(update={"outputs": [wrong_out]})
    mismatched = ModelEntry(entry.spec.model_copy(update={"tensors": tensors}), entry.directory)
    with pytest.raises(BackendError, match="'logits' has shape \\[-1, 3\\], spec says \\[-1, 4\\]"):
        load_backend("triton", mismatched, triton)


def test_model_not_served_and_bad_request(triton: BackendOptions) -> None:
    with pytest.raises(BackendError, match="'ct-lungs' is not ready"):
        load_backend("triton", STORE.get("ct-lungs"), triton)
    remote = load_backend("triton", STORE.get("random-cnn"), triton)
    try:
        with pytest.raises(BackendError, match="Triton inference failed"):
            remote.infer({"image": np.zeros((2, 1, 32, 32), np.float32)})
    finally:
        remote.close()
