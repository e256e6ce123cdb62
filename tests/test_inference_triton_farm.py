"""Triton farm (issue 18): one model on two real Triton servers, balanced, health-checked, failed over.

Two ``tritonserver`` processes from ``.venv-triton`` (``bash tests/peers/setup_triton.sh``)
serve the same models on their own loopback ports. What each server did is read from
Triton's own statistics endpoint (``GET /v2/models/{m}/stats``, the KServe v2 statistics
extension), never from the client's bookkeeping alone. Without the server these tests
skip with the reason, unless ``DICOM_NODE_REQUIRE_PEERS=1``, where they fail.

The pool tests at the top need no server: they drive :class:`EndpointPool` with plain
strings as clients and a probe function, to pin the selection rule exactly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from models.reference import phantom
from peers.triton.launch import TritonServer, find_install, free_port, write_repository
from receiver import RecordingSCP as Receiver
from scu import send_all

from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from inference.backends import BackendOptions, load_backend
from inference.backends.triton import TritonBackend, is_available, model_endpoints
from inference.errors import BackendError, SpecError
from inference.predictor import open_predictor
from inference.spec import load_spec
from inference.store import ModelEntry, ModelStore
from inference.triton_pool import Endpoint, EndpointPool, canonical, parse_endpoint

ROOT = Path(__file__).resolve().parents[1]
STORE = ModelStore([ROOT / "engines", ROOT / "tests" / "models"])
SERVED = ["ct-body", "random-cnn"]


# --- the pool's rules, no server -------------------------------------------------------------


def _pool(n: int, healthy: tuple[bool, ...] | None = None) -> EndpointPool[str]:
    states = healthy or (True,) * n
    endpoints = [Endpoint(f"h{i}:{8000 + i}", f"client{i}", healthy=states[i]) for i in range(n)]
    return EndpointPool(endpoints, lambda e, full: f"fresh-{e.url}", lambda c: None, 3600.0, "m")


def test_least_outstanding_then_round_robin() -> None:
    pool = _pool(3)
    try:
        first = [pool.acquire() for _ in range(3)]
        assert [e.url for e in first if e] == ["grpc://h0:8000", "grpc://h1:8001", "grpc://h2:8002"]
        for e in first[1:]:
            assert e is not None
            pool.release(e, ok=True)
        # h0 still has one in flight: the next two go to h1 and h2, never to h0.
        nxt = [pool.acquire(), pool.acquire()]
        assert sorted(e.url for e in nxt if e) == ["grpc://h1:8001", "grpc://h2:8002"]
        assert [s.in_flight for s in pool.states()] == [1, 1, 1]
    finally:
        pool.close()


def test_taken_out_endpoint_gets_nothing_until_a_probe_takes_it_back() -> None:
    pool = _pool(2)
    try:
        a, b = pool.endpoints
        pool.take_out(a, "StatusCode.UNAVAILABLE")
        got = [pool.acquire() for _ in range(4)]
        assert {e.url for e in got if e} == {b.url}
        assert pool.acquire(exclude=frozenset({b.url})) is a  # last resort: the only one not excluded
        pool.check()  # a's probe passes: a fresh client is taken in
        assert a.healthy and a.client == f"fresh-{a.url}" and a.reason == ""
        assert pool.states()[0].failures == 1
    finally:
        pool.close()


def test_every_endpoint_out_still_tries_one() -> None:
    pool = _pool(2, healthy=(False, False))
    try:
        e = pool.acquire()
        assert e is not None and not e.healthy
        pool.release(e, ok=True)  # a request that succeeded takes it back in
        assert e.healthy
    finally:
        pool.close()


def test_endpoint_syntax_and_spec_allowlist(tmp_path: Path) -> None:
    assert parse_endpoint("10.0.0.1:8001") == ("grpc", "10.0.0.1:8001")
    assert canonical("http://gpu-2.example:8000/") == "http://gpu-2.example:8000"
    for bad in ("grpc://user:pw@h:1", "h", "h:0", "h:70000", "https://h:1", "grpc://h:1/v2"):
        with pytest.raises(ValueError, match="must be host:port"):
            parse_endpoint(bad)
    entry = STORE.get("random-cnn")
    farm = entry.spec.model_copy(update={"triton": entry.spec.triton.model_copy(update={"endpoints": ["b:2", "grpc://a:1"]})})
    options = BackendOptions(triton_url="a:1", triton_urls=("grpc://b:2", "c:3"))
    assert model_endpoints(entry.spec, options) == ["grpc://a:1", "grpc://b:2", "grpc://c:3"]
    assert model_endpoints(farm, options) == ["grpc://b:2", "grpc://a:1"]
    with pytest.raises(BackendError, match=r"\['grpc://b:2'\] are not among the node's Triton servers"):
        model_endpoints(farm, BackendOptions(triton_url="a:1"))
    assert is_available(BackendOptions(triton_urls=("bad url",))) == (
        False, "Triton endpoint 'bad url' must be host:port, grpc://host:port or http://host:port")
    text = (entry.directory / "model.toml").read_text(encoding="utf-8")
    (tmp_path / "model.toml").write_text(text + '\n[triton]\nendpoints = ["a:1", "grpc://a:1"]\n', encoding="utf-8")
    with pytest.raises(SpecError, match="triton.endpoints: endpoints must be distinct"):
        load_spec(tmp_path / "model.toml")


# --- two real Triton servers -----------------------------------------------------------------


def _unavailable(reason: str) -> None:
    if os.environ.get("DICOM_NODE_REQUIRE_PEERS") == "1":
        pytest.fail(f"DICOM_NODE_REQUIRE_PEERS=1 but {reason}")
    pytest.skip(reason)


@dataclass
class Farm:
    """Two servers serving the same repository."""

    a: TritonServer
    b: TritonServer

    def options(self, **kw: float) -> BackendOptions:
        return BackendOptions(triton_urls=(self.a.grpc_url, self.b.grpc_url), triton_health_interval_s=0.2,
                              triton_probe_timeout_s=1.0, **kw)


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    if importlib.util.find_spec("tritonclient") is None:
        _unavailable("tritonclient is not installed in this environment (pip install 'tritonclient[grpc]')")
    install, reason = find_install()
    if install is None:
        _unavailable(reason)
    work = tmp_path_factory.mktemp("triton-farm")
    repo = write_repository(work / "repo", [STORE.get(name) for name in SERVED])
    servers = []
    try:
        for name in ("a", "b"):
            (work / name).mkdir()
            server = TritonServer(install, repo, work / name)
            server.start()
            servers.append(server)
        yield Farm(*servers)
    finally:
        for server in servers:
            server.stop()


def served(server: TritonServer, model: str) -> int:
    """Successful inference requests ``server`` answered for ``model``, by Triton's own statistics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/v2/models/{model}/stats", timeout=5) as resp:
        stats = json.load(resp)["model_stats"]
    return sum(int(s["inference_stats"]["success"]["count"]) for s in stats)


def _wait(condition: object, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.1)
    return False


def test_requests_are_balanced_over_both_servers(farm: Farm) -> None:
    entry = STORE.get("random-cnn")
    before = (served(farm.a, "random-cnn"), served(farm.b, "random-cnn"))
    remote = load_backend("triton", entry, farm.options())
    local = load_backend("onnxruntime", entry, BackendOptions())
    x = np.random.default_rng(1).standard_normal((4, 1, 64, 64)).astype(np.float32)
    try:
        sequential = [remote.infer({"image": x}) for _ in range(10)]
        with ThreadPoolExecutor(4) as pool:
            concurrent = list(pool.map(lambda _: remote.infer({"image": x}), range(20)))
        want = local.infer({"image": x})["logits"]
        states = remote.endpoints() if isinstance(remote, TritonBackend) else []
    finally:
        remote.close()
        local.close()
    for got in sequential + concurrent:
        np.testing.assert_allclose(got["logits"], want, rtol=1e-5, atol=1e-5)
    a = served(farm.a, "random-cnn") - before[0]
    b = served(farm.b, "random-cnn") - before[1]
    assert a + b == 30
    assert a >= 5 and b >= 5, (a, b)  # ties go round-robin: the sequential ten alone split 5/5
    assert [s.requests for s in states] == [a, b]
    assert all(s.healthy and s.in_flight == 0 for s in states)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_server_stopped_mid_run_loses_no_prediction_and_is_taken_back(farm: Farm, how: str) -> None:
    entry = STORE.get("ct-body")
    predictor = open_predictor(entry, farm.options(), [], backend="triton", max_delay_s=0.002)
    reference = open_predictor(entry, BackendOptions(), [], backend="onnxruntime")
    backend = predictor.backend
    assert isinstance(backend, TritonBackend)
    volumes = [phantom(slices=4, rows=48, cols=40, seed=s) for s in range(6)]
    wants = [reference.predict(v).result for v in volumes]
    done = threading.Event()
    results: list[tuple[int, np.ndarray]] = []
    errors: list[BaseException] = []

    def stream(worker: int) -> None:
        i = worker
        while not done.is_set():
            try:
                results.append((i % len(volumes), predictor.predict(volumes[i % len(volumes)]).result))
            except Exception as exc:  # noqa: BLE001 - any failed prediction fails the test below
                errors.append(exc)
            i += 1

    threads = [threading.Thread(target=stream, args=(w,)) for w in range(3)]
    try:
        for t in threads:
            t.start()
        assert _wait(lambda: len(results) >= 6), errors
        b_before = served(farm.b, "ct-body")
        farm.a.stop() if how == "sigterm" else farm.a.kill()
        stopped_at = len(results)
        assert _wait(lambda: len(results) >= stopped_at + 15), errors
        assert not backend.endpoints()[0].healthy
        assert served(farm.b, "ct-body") > b_before  # the rest went to b
        farm.a.start()
        assert _wait(lambda: backend.endpoints()[0].healthy), backend.endpoints()
        a_after = len(results)
        assert _wait(lambda: len(results) >= a_after + 10 and served(farm.a, "ct-body") > 0)
    finally:
        done.set()
        for t in threads:
            t.join(60)
        predictor.close()
        reference.close()
        if not farm.a.running:  # a failed assertion above may have left it stopped
            farm.a.start()
    assert errors == []
    for index, got in results:
        assert np.array_equal(got, wants[index])
    states = backend.endpoints()
    assert states[0].failures >= 1


def test_load_with_one_server_down_then_it_joins(farm: Farm, tmp_path: Path) -> None:
    install, _ = find_install()
    assert install is not None
    dead_port = free_port()
    options = BackendOptions(triton_urls=(farm.a.grpc_url, f"127.0.0.1:{dead_port}"),
                             triton_health_interval_s=0.2, triton_probe_timeout_s=1.0)
    remote = load_backend("triton", STORE.get("random-cnn"), options)
    assert isinstance(remote, TritonBackend)
    x = np.zeros((2, 1, 64, 64), np.float32)
    try:
        states = remote.endpoints()
        assert [s.healthy for s in states] == [True, False]
        assert "Connection refused" in states[1].reason or "failed to connect" in states[1].reason
        for _ in range(4):
            remote.infer({"image": x})
        assert [s.requests for s in remote.endpoints()] == [4, 0]
        # The missing server comes up (same repository, that port): a health check takes it in.
        late = TritonServer(install, farm.a.repo, tmp_path)
        late.grpc_port = dead_port
        late.start()
        try:
            assert _wait(lambda: remote.endpoints()[1].healthy), remote.endpoints()
            for _ in range(4):
                remote.infer({"image": x})
            assert served(late, "random-cnn") == 2
        finally:
            late.stop()
    finally:
        remote.close()


def test_model_error_is_not_retried_elsewhere(farm: Farm) -> None:
    remote = load_backend("triton", STORE.get("random-cnn"), farm.options())
    assert isinstance(remote, TritonBackend)
    try:
        with pytest.raises(BackendError, match="INVALID_ARGUMENT|unexpected shape"):
            remote.infer({"image": np.zeros((2, 1, 32, 32), np.float32)})
        states = remote.endpoints()
        assert sum(s.requests for s in states) == 1  # one server tried, once
        assert all(s.healthy and s.failures == 0 for s in states)
    finally:
        remote.close()


def test_a_server_serving_another_contract_refuses_the_load(farm: Farm) -> None:
    entry = STORE.get("random-cnn")
    wrong_out = entry.spec.tensors.outputs[0].model_copy(update={"dims": [4]})
    tensors = entry.spec.tensors.model_copy(update={"outputs": [wrong_out]})
    mismatched = ModelEntry(entry.spec.model_copy(update={"tensors": tensors}), entry.directory)
    with pytest.raises(BackendError, match="'logits' has shape \\[-1, 3\\], spec says \\[-1, 4\\]"):
        load_backend("triton", mismatched, farm.options())


def test_node_jobs_done_while_one_server_is_killed(farm: Farm, start_node: Callable[..., Node]) -> None:
    """The job path (C-STORE in, SEG and SR out) on the farm: a server killed mid-run fails no job."""
    receiver = Receiver().start()
    try:
        node = start_node(
            routing={"rules": [{"name": "ct", "models": ["ct-body"], "destinations": ["pacs"], "match": {"modality": "CT"}}]},
            delivery={"destinations": [{"kind": "dimse", "name": "pacs", "ae_title": "RESULTS_SCP", "host": "127.0.0.1",
                                        "port": receiver.port}]},
            inference={"models_dir": str(ROOT / "engines"), "backends": ["triton"],
                       "triton_urls": [farm.a.grpc_url, farm.b.grpc_url], "triton_health_interval_s": 0.2,
                       "triton_probe_timeout_s": 1.0})
        series = [list(ct_datasets(SeriesSpec(slices=8, rows=64, columns=64, seed=f"farm-{i}"))) for i in range(6)]

        def jobs() -> list[dict[str, object]]:
            conn = node.index.reader()
            try:
                return [dict(r) for r in conn.execute("SELECT state, attempts, reason FROM jobs")]
            finally:
                conn.close()

        sender = threading.Thread(target=lambda: [send_all(node.scp.port, s) for s in series])
        sender.start()
        assert _wait(lambda: any(j["state"] == "done" for j in jobs()), 60), jobs()
        b_before = served(farm.b, "ct-body")
        farm.a.kill()
        sender.join(60)
        assert _wait(lambda: len(jobs()) == 6 and all(j["state"] == "done" for j in jobs()), 120), jobs()
        assert all(j["reason"] is None for j in jobs())
        assert served(farm.b, "ct-body") > b_before
        backend = node.models.loaded()["ct-body"].backend
        assert isinstance(backend, TritonBackend)
        assert _wait(lambda: not backend.endpoints()[0].healthy), backend.endpoints()
        with urllib.request.urlopen(f"http://127.0.0.1:{node.api.port}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        for server, up in ((farm.a, 0.0), (farm.b, 1.0)):
            assert f'dicom_node_inference_endpoint_healthy{{endpoint="{server.grpc_url}",model="ct-body"}} {up}' in metrics
        assert len(receiver.datasets()) == 12  # one SEG and one SR per series
    finally:
        receiver.stop()
        if not farm.a.running:
            farm.a.start()
