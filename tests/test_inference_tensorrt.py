"""TensorRT: plan cache keys without TensorRT; engine build and parity where TensorRT imports.

TensorRT is not installable on this project's CPU machines, so the tests that
need it skip with that reason; the cache-key logic is plain Python and always runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from inference.backends import BackendOptions, availability, load_backend
from inference.errors import BackendUnavailableError, EngineBuildError, InputError
from inference.store import ModelStore
from inference.trt_builder import PlanKey, cached_plan, plan_key, plan_path, profile_from_spec, stale_plans, store_plan

ROOT = Path(__file__).resolve().parents[1]
STORE = ModelStore([ROOT / "engines", ROOT / "tests" / "models"])
BODY = STORE.get("ct-body")
SHA = BODY.onnx_sha256()


def _key(**changes: object) -> PlanKey:
    args = {"onnx_sha256": SHA, "gpu_name": "NVIDIA H100 80GB HBM3", "cc": (9, 0), "trt_version": "10.13.0"}
    args.update(changes)
    return plan_key(BODY.spec, **args)  # type: ignore[arg-type]


def test_profile_from_spec_dynamic_and_fixed() -> None:
    profile = profile_from_spec(BODY.spec)
    assert profile.name == "ct"
    assert profile.min == (1, 1, 1, 1)
    assert profile.opt == (32, 1, 512, 512)
    assert profile.max == (32, 1, 1024, 1024)
    cnn = profile_from_spec(STORE.get("random-cnn").spec)
    assert cnn.min == (1, 1, 64, 64) and cnn.max == (32, 1, 64, 64)
    unbounded = BODY.spec.model_copy(update={"tensors": BODY.spec.tensors.model_copy(update={"max_dims": None})})
    with pytest.raises(EngineBuildError, match="max_dims"):
        profile_from_spec(unbounded)


@pytest.mark.parametrize(
    "change",
    [{"gpu_name": "NVIDIA A100-SXM4-40GB"}, {"cc": (8, 0)}, {"trt_version": "10.14.1"}, {"onnx_sha256": "0" * 64}],
    ids=["gpu", "compute-capability", "tensorrt", "onnx"],
)
def test_cache_key_changes_with_each_dependency(change: dict[str, object]) -> None:
    base, other = _key(), _key(**change)
    assert base.digest() != other.digest()
    assert base.file_stem() != other.file_stem()
    assert _key().digest() == base.digest(), "the key is deterministic"


def test_cache_key_changes_with_precision_and_profile() -> None:
    fp16 = BODY.spec.model_copy(update={"precision": "fp16"})
    assert plan_key(fp16, SHA, "g", (9, 0), "10").digest() != plan_key(BODY.spec, SHA, "g", (9, 0), "10").digest()
    small = BODY.spec.model_copy(update={"tensors": BODY.spec.tensors.model_copy(update={"max_batch": 8})})
    assert plan_key(small, SHA, "g", (9, 0), "10").digest() != plan_key(BODY.spec, SHA, "g", (9, 0), "10").digest()


def test_plan_file_name_is_readable_and_safe() -> None:
    stem = _key().file_stem()
    assert stem.startswith("ct-body-nvidia_h100_80gb_hbm3-sm90-trt10.13.0-")
    assert "/" not in stem and " " not in stem


def test_plan_cache_hit_miss_and_stale_removal(tmp_path: Path) -> None:
    h100 = _key()
    assert cached_plan(tmp_path, h100) is None
    path = store_plan(tmp_path, h100, b"plan-bytes-h100")
    assert path == plan_path(tmp_path, h100) and cached_plan(tmp_path, h100) == path
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["gpu_name"] == "NVIDIA H100 80GB HBM3" and sidecar["onnx_sha256"] == SHA
    upgraded = _key(trt_version="10.14.1")
    assert cached_plan(tmp_path, upgraded) is None, "a TensorRT upgrade misses the cache"
    assert stale_plans(tmp_path, upgraded) == [path]
    new = store_plan(tmp_path, upgraded, b"plan-bytes-new")
    assert not path.exists() and new.exists(), "the stale plan was replaced"
    new.with_suffix(".json").write_text(json.dumps({"digest": "tampered"}))
    assert cached_plan(tmp_path, upgraded) is None, "a sidecar that disagrees forces a rebuild"


def test_build_without_tensorrt_names_the_missing_package() -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    from inference.backends import tensorrt

    ok, reason = availability("tensorrt", BackendOptions())
    assert not ok and "missing package: tensorrt" in reason
    with pytest.raises(BackendUnavailableError, match="missing package: tensorrt"):
        tensorrt.build(BODY, BackendOptions())


requires_trt = pytest.mark.skipif(
    not availability("tensorrt", BackendOptions())[0],
    reason=f"TensorRT backend unavailable here: {availability('tensorrt', BackendOptions())[1]}",
)


@pytest.mark.gpu
@requires_trt
@pytest.mark.parametrize("name", ["random-cnn", "ct-body"])
def test_tensorrt_matches_onnxruntime(name: str, tmp_path: Path) -> None:
    entry = STORE.get(name)
    options = BackendOptions(cache_dir=tmp_path)
    shape = (4, 1, 64, 64)
    x = (np.random.default_rng(1).random(shape, dtype=np.float32))
    trt_backend = load_backend("tensorrt", entry, options)
    ort_backend = load_backend("onnxruntime", entry, BackendOptions())
    try:
        got = trt_backend.infer({entry.spec.tensors.inputs[0].name: x})
        want = ort_backend.infer({entry.spec.tensors.inputs[0].name: x})
    finally:
        trt_backend.close()
        ort_backend.close()
    for out_name, arr in want.items():
        np.testing.assert_allclose(got[out_name], arr, rtol=1e-3, atol=1e-4)
    plans = list(tmp_path.glob(f"{name}-*.plan"))
    assert len(plans) == 1, "the built plan is cached"
    mtime = os.stat(plans[0]).st_mtime_ns
    load_backend("tensorrt", entry, options).close()
    assert os.stat(plans[0]).st_mtime_ns == mtime, "the second load reuses the cached plan"


# --- A fake TensorRT, named as such: it checks our call sequence against the documented
# TensorRT 10 Python API where the real library cannot run (no GPU, not installable here).
# Its "engine" runs the ONNX file with ONNX Runtime, its "device memory" is host arrays.


class FakeTensorRT:
    """Stands in for the ``tensorrt`` module: records builder calls, executes plans with ONNX Runtime."""

    __version__ = "10.99.0-fake"

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    class MemoryPoolType:
        WORKSPACE = "workspace"

    class BuilderFlag:
        FP16 = "fp16"

    class TensorIOMode:
        INPUT = "input"
        OUTPUT = "output"

    def __init__(self) -> None:
        from importlib.machinery import ModuleSpec

        self.__spec__ = ModuleSpec("tensorrt", None)  # find_spec("tensorrt") reads it from sys.modules
        self.calls: list[tuple[object, ...]] = []
        fake = self

        class Builder:
            def __init__(self, logger: object) -> None:
                fake.calls.append(("Builder",))

            def create_network(self, flags: int) -> dict[str, bytes]:
                fake.calls.append(("create_network", flags))
                return {}

            def create_builder_config(self) -> FakeConfig:
                return FakeConfig(fake)

            def create_optimization_profile(self) -> FakeProfile:
                return FakeProfile(fake)

            def build_serialized_network(self, network: dict[str, bytes], config: FakeConfig) -> bytes:
                fake.calls.append(("build_serialized_network",))
                return b"FAKEPLAN" + network["onnx"]

        class OnnxParser:
            def __init__(self, network: dict[str, bytes], logger: object) -> None:
                self.network = network
                self.num_errors = 0

            def parse(self, data: bytes) -> bool:
                self.network["onnx"] = data
                return True

        class Runtime:
            def __init__(self, logger: object) -> None:
                pass

            def deserialize_cuda_engine(self, plan: bytes) -> FakeEngine:
                assert plan.startswith(b"FAKEPLAN")
                return FakeEngine(plan[len(b"FAKEPLAN"):])

        self.Builder, self.OnnxParser, self.Runtime = Builder, OnnxParser, Runtime

    @staticmethod
    def nptype(dtype: object) -> type:
        return np.float32


class FakeConfig:
    def __init__(self, fake: FakeTensorRT) -> None:
        self.fake = fake

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.fake.calls.append(("set_memory_pool_limit", pool, size))

    def set_flag(self, flag: str) -> None:
        self.fake.calls.append(("set_flag", flag))

    def add_optimization_profile(self, profile: FakeProfile) -> None:
        self.fake.calls.append(("add_optimization_profile",))

    def create_timing_cache(self, blob: bytes) -> bytes:
        self.fake.calls.append(("create_timing_cache", blob))
        return blob or b"timing"

    def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> None:
        self.cache = cache

    def get_timing_cache(self) -> FakeConfig:
        return self

    def serialize(self) -> bytes:
        return self.cache + b"+"


class FakeProfile:
    def __init__(self, fake: FakeTensorRT) -> None:
        self.fake = fake

    def set_shape(self, name: str, mn: tuple[int, ...], opt: tuple[int, ...], mx: tuple[int, ...]) -> None:
        self.fake.calls.append(("set_shape", name, mn, opt, mx))
        self.fake.profile = (mn, opt, mx)  # type: ignore[attr-defined]


class FakeEngine:
    def __init__(self, onnx_bytes: bytes) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.names = self.inputs + [o.name for o in self.session.get_outputs()]
        self.num_io_tensors = len(self.names)
        self.memory: dict[int, np.ndarray] = {}

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> str:
        return "input" if name in self.inputs else "output"

    def get_tensor_dtype(self, name: str) -> str:
        return "float32"

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        return [(1, 1, 64, 64), (32, 1, 64, 64), (32, 1, 64, 64)]

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine, self.shapes, self.addresses = engine, {}, {}  # type: ignore[var-annotated]

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        return index == 0

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = tuple(shape)
        return 1 <= shape[0] <= 32 and tuple(shape[1:]) == (1, 64, 64)

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.engine.inputs:
            return self.shapes[name]
        return (self.shapes[self.engine.inputs[0]][0], 3)

    def set_tensor_address(self, name: str, ptr: int) -> None:
        self.addresses[name] = ptr

    def execute_async_v3(self, stream: int) -> bool:
        mem = FakeCuda.memory
        feeds = {}
        for name in self.engine.inputs:
            n = int(np.prod(self.shapes[name]))
            feeds[name] = mem[self.addresses[name]][:n].reshape(self.shapes[name])
        outs = self.engine.session.run(None, feeds)
        for name, arr in zip(self.engine.names[len(self.engine.inputs):], outs, strict=False):
            mem[self.addresses[name]][: arr.size] = arr.ravel()
        return True


class FakeCuda:
    """Host arrays standing in for device memory, addressed by fake pointers."""

    memory: dict[int, np.ndarray] = {}

    def __init__(self, binding: str) -> None:
        self.next = 0x1000

    def stream(self) -> int:
        return 7

    def handle(self, stream: int) -> int:
        return stream

    def malloc(self, nbytes: int) -> int:
        self.next += 0x100000
        FakeCuda.memory[self.next] = np.zeros(nbytes // 4, np.float32)
        return self.next

    def htod(self, ptr: int, host: np.ndarray, stream: int) -> None:
        FakeCuda.memory[ptr][: host.size] = host.ravel()

    def dtoh(self, host: np.ndarray, ptr: int, stream: int) -> None:
        host.ravel()[:] = FakeCuda.memory[ptr][: host.size]

    def sync(self, stream: int) -> None:
        pass

    def free(self, ptr: int) -> None:
        FakeCuda.memory.pop(ptr)


def test_fake_tensorrt_build_cache_and_execute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from inference.backends import tensorrt as trt_backend
    from inference.gpu import GpuInfo

    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_backend, "probe_gpu", lambda device_id=0: (GpuInfo("Fake GPU", (9, 0)), "Fake GPU (sm_90)"))
    monkeypatch.setattr(trt_backend, "cuda_python_module", lambda: "cuda-python")
    monkeypatch.setattr(trt_backend, "CudaOps", FakeCuda)
    entry = STORE.get("random-cnn")
    backend = trt_backend.load(entry, BackendOptions(cache_dir=tmp_path))
    x = np.random.default_rng(3).standard_normal((5, 1, 64, 64)).astype(np.float32)
    got = backend.infer({"image": x})["logits"]
    ort_backend = load_backend("onnxruntime", entry, BackendOptions())
    np.testing.assert_allclose(got, ort_backend.infer({"image": x})["logits"], rtol=1e-6, atol=1e-6)
    assert ("set_shape", "image", (1, 1, 64, 64), (32, 1, 64, 64), (32, 1, 64, 64)) in fake.calls
    assert ("set_memory_pool_limit", "workspace", 1 << 30) in fake.calls
    assert not any(c[0] == "set_flag" for c in fake.calls), "fp32 spec: no FP16 flag"
    (plan,) = tmp_path.glob("random-cnn-fake_gpu-sm90-trt10.99.0-fake-*.plan")
    assert (tmp_path / "timing.cache").read_bytes() == b"timing+"
    with pytest.raises(InputError, match="optimization profile"):
        backend.infer({"image": np.zeros((2, 1, 32, 32), np.float32)})
    backend.close()
    builds = sum(c[0] == "build_serialized_network" for c in fake.calls)
    trt_backend.load(entry, BackendOptions(cache_dir=tmp_path)).close()
    assert sum(c[0] == "build_serialized_network" for c in fake.calls) == builds, "cached plan reused"
    assert trt_backend.build(entry, BackendOptions(cache_dir=tmp_path)) == plan


def test_fake_tensorrt_fp16_flag_and_its_removal_in_tensorrt_11(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from inference.trt_builder import build_plan

    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    entry = STORE.get("random-cnn")
    profile = profile_from_spec(entry.spec)
    plan = build_plan(entry.onnx_path, profile, "fp16", tmp_path / "timing.cache")
    assert plan.startswith(b"FAKEPLAN") and ("set_flag", "fp16") in fake.calls

    class NoFp16:  # TensorRT 11 removed BuilderFlag.FP16 (strong typing only)
        pass

    monkeypatch.setattr(FakeTensorRT, "BuilderFlag", NoFp16)
    with pytest.raises(EngineBuildError, match="no FP16 builder flag"):
        build_plan(entry.onnx_path, profile, "fp16", tmp_path / "timing.cache")
