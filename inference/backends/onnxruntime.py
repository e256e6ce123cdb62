"""ONNX Runtime backend: CPU by default, CUDA or TensorRT execution providers on a GPU.

With the plain ``onnxruntime`` wheel only the CPU provider exists. With
``onnxruntime-gpu`` and a GPU present, the CUDA provider is preferred, and the
TensorRT provider before it when the ``tensorrt`` package is importable (the
provider is listed by every GPU build but fails without TensorRT's libraries).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from inference.backends.base import Backend, BackendOptions
from inference.errors import BackendError, BackendUnavailableError
from inference.gpu import probe_gpu
from inference.store import ModelEntry

log = logging.getLogger(__name__)

MISSING = "missing package: onnxruntime (pip install onnxruntime, or onnxruntime-gpu for CUDA)"


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(MISSING) from exc
    return onnxruntime


def is_available(options: BackendOptions) -> tuple[bool, str]:
    """Return ``(True, providers)`` when onnxruntime imports, else ``(False, reason)``."""
    try:
        ort = _ort()
    except BackendUnavailableError as exc:
        return False, str(exc)
    providers = choose_providers(ort.get_available_providers(), options)
    return True, f"onnxruntime {ort.__version__}, {', '.join(p.removesuffix('ExecutionProvider') for p in providers)}"


def choose_providers(available: list[str], options: BackendOptions) -> list[str]:
    """Execution providers in preference order, CPU always last."""
    wanted: list[str] = []
    gpu_builds = {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(available)
    if gpu_builds and probe_gpu(options.device_id)[0] is not None:
        if "TensorrtExecutionProvider" in available and importlib.util.find_spec("tensorrt") is not None:
            wanted.append("TensorrtExecutionProvider")
        if "CUDAExecutionProvider" in available:
            wanted.append("CUDAExecutionProvider")
    wanted.append("CPUExecutionProvider")
    return wanted


class OnnxRuntimeBackend(Backend):
    """One ``onnxruntime.InferenceSession`` per model."""

    name = "onnxruntime"

    def __init__(self, entry: ModelEntry, options: BackendOptions) -> None:
        ort = _ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One request at a time per session (the batcher serialises); parallelism is intra-op.
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        # No busy-waiting pool threads: a node runs several sessions plus decoding on the same
        # cores, and idle threads spinning after each run steal CPU from all of them.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if options.onnxruntime_threads:
            so.intra_op_num_threads = options.onnxruntime_threads
        self._providers = choose_providers(ort.get_available_providers(), options)
        provider_options = [{"device_id": options.device_id} if p != "CPUExecutionProvider" else {} for p in self._providers]
        try:
            self._session = ort.InferenceSession(
                str(entry.onnx_path), sess_options=so, providers=self._providers, provider_options=provider_options
            )
        except Exception as exc:  # noqa: BLE001 - ORT raises pybind classes with no common public base
            raise BackendError(f"onnxruntime could not load {entry.onnx_path}: {exc}") from exc
        self._outputs = [o.name for o in self._session.get_outputs()]
        log.info("model loaded backend=onnxruntime model=%s providers=%s", entry.spec.name, ",".join(self._session.get_providers()))

    @property
    def description(self) -> str:
        """Providers the session actually uses."""
        return "onnxruntime (" + ", ".join(p.removesuffix("ExecutionProvider") for p in self._session.get_providers()) + ")"

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch through the session."""
        try:
            results = self._session.run(self._outputs, dict(inputs))
        except Exception as exc:  # noqa: BLE001 - see __init__
            raise BackendError(f"onnxruntime failed: {exc}") from exc
        return dict(zip(self._outputs, results, strict=False))

    def close(self) -> None:
        """Drop the session (ORT frees its memory when the last reference goes)."""
        self._session = None  # type: ignore[assignment]


def load(entry: ModelEntry, options: BackendOptions) -> Backend:
    """Open ``entry`` with ONNX Runtime."""
    return OnnxRuntimeBackend(entry, options)
