"""TensorRT ahead-of-time engine builder and the plan cache.

A serialized engine (``.plan``) is only valid for the GPU model, compute
capability and TensorRT version it was built with, and for the exact ONNX
bytes, precision and optimization profile. :class:`PlanKey` holds all of them;
the plan's file name carries a digest of the key and a JSON sidecar records it,
so a change in any part selects a new file and :func:`ensure_plan` rebuilds
(stale plans of the same model are removed). Written against the TensorRT 10+
Python API (``build_serialized_network``, ``create_optimization_profile``,
``set_memory_pool_limit``, ``create_timing_cache``); TensorRT 11 removed
``BuilderFlag.FP16``, where fp16 needs an fp16 ONNX graph (strong typing).

``tensorrt`` is imported only inside :func:`build_plan`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from inference.errors import BackendUnavailableError, EngineBuildError
from inference.spec import ModelSpec

log = logging.getLogger(__name__)

MISSING_TRT = "missing package: tensorrt (pip install 'dicom-node[tensorrt]'; needs an NVIDIA GPU and driver)"
WORKSPACE_BYTES = 1 << 30
Shape = tuple[int, ...]


@dataclass(frozen=True)
class Profile:
    """One optimization profile of the (single) input tensor, batch axis included."""

    name: str
    min: Shape
    opt: Shape
    max: Shape


@dataclass(frozen=True)
class PlanKey:
    """Everything a serialized engine depends on."""

    model: str
    gpu_name: str
    compute_capability: tuple[int, int]
    trt_version: str
    onnx_sha256: str
    precision: str
    profile: Profile

    def digest(self) -> str:
        """Stable SHA-256 of the key's fields."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def file_stem(self) -> str:
        """``<model>-<gpu>-sm<cc>-trt<version>-<digest12>``, safe as a file name."""
        gpu = re.sub(r"[^A-Za-z0-9]+", "_", self.gpu_name).strip("_").lower() or "gpu"
        cc = f"{self.compute_capability[0]}{self.compute_capability[1]}"
        return f"{self.model}-{gpu}-sm{cc}-trt{self.trt_version}-{self.digest()[:12]}"


def profile_from_spec(spec: ModelSpec) -> Profile:
    """Derive the optimization profile from the spec's input dims, ``max_dims``, ``opt_dims`` and ``max_batch``.

    Dynamic dims take 1 as their minimum, ``opt_dims`` (or ``max_dims``) as the
    shape TensorRT tunes for, and ``max_dims`` as the largest accepted.

    Raises
    ------
    EngineBuildError
        A dynamic dim has no ``tensors.max_dims`` bound.
    """
    tensor = spec.tensors.inputs[0]
    dims = tensor.dims
    if -1 in dims and spec.tensors.max_dims is None:
        raise EngineBuildError(f"model {spec.name!r}: input dims {dims} are dynamic; TensorRT needs tensors.max_dims")
    max_dims = spec.tensors.max_dims or dims
    opt_dims = spec.tensors.opt_dims or max_dims
    for d, mx, op in zip(dims, max_dims, opt_dims, strict=False):
        if d != -1 and (mx != d or op != d):
            raise EngineBuildError(f"model {spec.name!r}: max_dims/opt_dims must equal the fixed input dims {dims}")
    batch = spec.tensors.max_batch
    return Profile(
        name=tensor.name,
        min=(1, *(1 if d == -1 else d for d in dims)),
        opt=(batch, *opt_dims),
        max=(batch, *max_dims),
    )


def plan_key(spec: ModelSpec, onnx_sha256: str, gpu_name: str, cc: tuple[int, int], trt_version: str) -> PlanKey:
    """Build the cache key of ``spec`` for one GPU and TensorRT version."""
    return PlanKey(spec.name, gpu_name, cc, trt_version, onnx_sha256, spec.precision, profile_from_spec(spec))


def plan_path(cache_dir: Path, key: PlanKey) -> Path:
    """Where the plan for ``key`` lives (it may not exist yet)."""
    return cache_dir / f"{key.file_stem()}.plan"


def cached_plan(cache_dir: Path, key: PlanKey) -> Path | None:
    """Return the cached plan for ``key`` when present and its sidecar matches, else None."""
    path = plan_path(cache_dir, key)
    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        return None
    try:
        recorded = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return path if recorded.get("digest") == key.digest() else None


def stale_plans(cache_dir: Path, key: PlanKey) -> list[Path]:
    """Plans of the same model built for another key (GPU, TensorRT, ONNX, precision or profile changed)."""
    if not cache_dir.is_dir():
        return []
    current = plan_path(cache_dir, key)
    return sorted(p for p in cache_dir.glob(f"{key.model}-*.plan") if p != current)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def store_plan(cache_dir: Path, key: PlanKey, plan: bytes) -> Path:
    """Write the plan and its sidecar atomically, removing stale plans of the model."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    for old in stale_plans(cache_dir, key):
        log.info("removing stale TensorRT plan path=%s", old)
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
    path = plan_path(cache_dir, key)
    _write_atomic(path, plan)
    _write_atomic(path.with_suffix(".json"), json.dumps({"digest": key.digest(), **asdict(key)}, indent=2).encode())
    return path


def _trt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError(MISSING_TRT) from exc
    return tensorrt


def build_plan(onnx_path: Path, profile: Profile, precision: str, timing_cache: Path) -> bytes:
    """Parse the ONNX file and build a serialized engine with one optimization profile.

    Parameters
    ----------
    onnx_path : pathlib.Path
        The model.
    profile : Profile
        Min/opt/max shapes of the input.
    precision : str
        ``"fp32"`` or ``"fp16"``.
    timing_cache : pathlib.Path
        Read when present (speeds up rebuilds), written back after the build.

    Raises
    ------
    BackendUnavailableError
        tensorrt is not installed.
    EngineBuildError
        The parser or the builder failed.
    """
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = _builder_config(trt, builder, profile, precision, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def _builder_config(trt: Any, builder: Any, profile: Profile, precision: str, timing_cache: Path) -> Any:
    """Workspace limit, precision flag, the optimization profile and the timing cache."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp16":
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise EngineBuildError(f"TensorRT {trt.__version__} has no FP16 builder flag; export the ONNX model in fp16 instead")
        config.set_flag(trt.BuilderFlag.FP16)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(profile.name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(opt_profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    return config


def trt_version() -> str:
    """The installed TensorRT version (raises BackendUnavailableError when missing)."""
    return str(_trt().__version__)


def ensure_plan(spec: ModelSpec, onnx_path: Path, onnx_sha256: str, cache_dir: Path, gpu_name: str, cc: tuple[int, int]) -> Path:
    """Return a plan valid for this GPU and TensorRT, building it when missing or stale."""
    key = plan_key(spec, onnx_sha256, gpu_name, cc, trt_version())
    found = cached_plan(cache_dir, key)
    if found is not None:
        log.info("TensorRT plan cache hit model=%s plan=%s", spec.name, found.name)
        return found
    log.info("building TensorRT engine model=%s gpu=%s precision=%s", spec.name, gpu_name, spec.precision)
    plan = build_plan(onnx_path, key.profile, spec.precision, cache_dir / "timing.cache")
    return store_plan(cache_dir, key, plan)
