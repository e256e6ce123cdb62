"""TensorRT backend: a serialized engine executed with ``execute_async_v3``.

The engine comes from ``<model dir>/model.plan`` when the spec ships one, else
from the plan cache (:mod:`inference.trt_builder`), built from the ONNX file on
first use for this GPU and TensorRT version. Device buffers are allocated once
per optimization profile at its maximum shapes and reused for every batch;
inputs are copied host-to-device, the engine is enqueued and outputs copied
back on one CUDA stream, then the stream is synchronised. CUDA is reached
through cuda-python (preferred) or pycuda, whichever is installed.

Written against the documented TensorRT 10+ Python API; untested on real
hardware in this repository's CI (no GPU there).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from inference.backends.base import Backend, BackendOptions
from inference.errors import BackendError, BackendUnavailableError, InputError
from inference.gpu import GpuInfo, cuda_python_module, probe_gpu
from inference.store import ModelEntry
from inference.trt_builder import MISSING_TRT, ensure_plan

log = logging.getLogger(__name__)


def is_available(options: BackendOptions) -> tuple[bool, str]:
    """TensorRT needs the ``tensorrt`` package, a CUDA binding and a GPU."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return False, MISSING_TRT
    if cuda_python_module() is None:
        return False, "missing package: cuda-python or pycuda (pip install 'dicom-node[gpu]')"
    info, reason = probe_gpu(options.device_id)
    return (info is not None), reason


class CudaOps:
    """The handful of CUDA runtime calls the backend needs, over cuda-python or pycuda."""

    def __init__(self, binding: str) -> None:
        self.binding = binding
        if binding == "cuda-python":
            try:
                from cuda.bindings import runtime as cudart
            except ImportError:
                from cuda import cudart  # cuda-python < 12.6 layout
            self._rt = cudart
        else:
            import pycuda.autoinit  # noqa: F401 - creates the context pycuda needs
            import pycuda.driver as drv

            self._drv = drv
            self._keep: dict[int, Any] = {}

    def _check(self, result: tuple[Any, ...]) -> Any:
        err, *rest = result
        if int(err) != 0:
            raise BackendError(f"CUDA call failed: {self._rt.cudaGetErrorString(err)[1].decode()}")
        return rest[0] if len(rest) == 1 else rest

    def stream(self) -> Any:
        """Create a CUDA stream; returns the handle execute_async_v3 takes (an int)."""
        if self.binding == "cuda-python":
            return self._check(self._rt.cudaStreamCreate())
        s = self._drv.Stream()
        self._keep[id(s)] = s
        return s

    def handle(self, stream: Any) -> int:
        """The stream as the integer handle TensorRT expects."""
        return int(stream) if self.binding == "cuda-python" else int(stream.handle)

    def malloc(self, nbytes: int) -> Any:
        """Allocate device memory; ``int(ptr)`` is its address."""
        if self.binding == "cuda-python":
            return self._check(self._rt.cudaMalloc(nbytes))
        return self._drv.mem_alloc(nbytes)

    def htod(self, ptr: Any, host: np.ndarray, stream: Any) -> None:
        """Copy a contiguous host array to device memory, asynchronously on ``stream``."""
        if self.binding == "cuda-python":
            kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
            self._check(self._rt.cudaMemcpyAsync(int(ptr), host.ctypes.data, host.nbytes, kind, stream))
        else:
            self._drv.memcpy_htod_async(ptr, host, stream)

    def dtoh(self, host: np.ndarray, ptr: Any, stream: Any) -> None:
        """Copy device memory into a contiguous host array, asynchronously on ``stream``."""
        if self.binding == "cuda-python":
            kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
            self._check(self._rt.cudaMemcpyAsync(host.ctypes.data, int(ptr), host.nbytes, kind, stream))
        else:
            self._drv.memcpy_dtoh_async(host, ptr, stream)

    def sync(self, stream: Any) -> None:
        """Wait for everything queued on ``stream``."""
        if self.binding == "cuda-python":
            self._check(self._rt.cudaStreamSynchronize(stream))
        else:
            stream.synchronize()

    def free(self, ptr: Any) -> None:
        """Release device memory from :meth:`malloc`."""
        if self.binding == "cuda-python":
            self._check(self._rt.cudaFree(ptr))
        else:
            ptr.free()


class TensorRTBackend(Backend):
    """One engine, one execution context, one stream; calls are serialised by a lock."""

    name = "tensorrt"

    def __init__(self, entry: ModelEntry, options: BackendOptions, gpu: GpuInfo) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailableError(MISSING_TRT) from exc
        self._trt = trt
        self._spec = entry.spec
        self._gpu = gpu
        binding = cuda_python_module()
        if binding is None:
            raise BackendUnavailableError("missing package: cuda-python or pycuda")
        self._cuda = CudaOps(binding)
        plan = _plan_for(entry, options, gpu)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise BackendError(f"TensorRT could not deserialize {plan}")
        self._context = self._engine.create_execution_context()
        self._stream = self._cuda.stream()
        self._lock = threading.Lock()
        self._names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in self._names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._buffers = self._allocate(profile=0)
        log.info("model loaded backend=tensorrt model=%s plan=%s gpu=%s", entry.spec.name, plan.name, gpu.name)

    def _allocate(self, profile: int) -> dict[str, tuple[Any, int]]:
        """Device buffers at the profile's max shapes: allocated once, reused by every batch."""
        self._context.set_optimization_profile_async(profile, self._cuda.handle(self._stream))
        for name in self._inputs:
            self._context.set_input_shape(name, tuple(self._engine.get_tensor_profile_shape(name, profile)[2]))
        buffers = {}
        for name in self._names:
            shape = tuple(self._context.get_tensor_shape(name))
            itemsize = np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name))).itemsize
            nbytes = int(np.prod(shape)) * itemsize
            buffers[name] = (self._cuda.malloc(nbytes), nbytes)
        return buffers

    @property
    def description(self) -> str:
        """Engine and device."""
        return f"tensorrt {self._trt.__version__} on {self._gpu.name}"

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy in, ``execute_async_v3``, copy out, synchronise."""
        with self._lock:
            return self._infer_locked(inputs)

    def _infer_locked(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        trt, ctx, cuda = self._trt, self._context, self._cuda
        hosts = {}
        for name in self._inputs:
            want = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            arr = np.ascontiguousarray(inputs[name], dtype=want)
            ptr, nbytes = self._buffers[name]
            if arr.nbytes > nbytes or not ctx.set_input_shape(name, arr.shape):
                raise InputError(f"input {name!r} shape {arr.shape} is outside the engine's optimization profile")
            cuda.htod(ptr, arr, self._stream)
            hosts[name] = arr  # keep alive until the copy completes
        outputs = {}
        for name in self._names:
            ctx.set_tensor_address(name, int(self._buffers[name][0]))
            if name not in self._inputs:
                shape = tuple(ctx.get_tensor_shape(name))
                outputs[name] = np.empty(shape, dtype=trt.nptype(self._engine.get_tensor_dtype(name)))
        if not ctx.execute_async_v3(cuda.handle(self._stream)):
            raise BackendError(f"TensorRT execute_async_v3 failed for {self._spec.name!r}")
        for name, host in outputs.items():
            cuda.dtoh(host, self._buffers[name][0], self._stream)
        cuda.sync(self._stream)
        return outputs

    def close(self) -> None:
        """Free the device buffers."""
        for ptr, _ in getattr(self, "_buffers", {}).values():
            self._cuda.free(ptr)
        self._buffers = {}


def _plan_for(entry: ModelEntry, options: BackendOptions, gpu: GpuInfo) -> Path:
    shipped = entry.directory / "model.plan"
    if shipped.is_file():
        return shipped
    cache_dir = options.cache_dir or (entry.directory / "cache")
    return ensure_plan(entry.spec, entry.onnx_path, entry.onnx_sha256(), cache_dir, gpu.name, gpu.compute_capability)


def build(entry: ModelEntry, options: BackendOptions) -> Path:
    """Build (or find in the cache) the plan of ``entry`` for this GPU; used by ``models build``.

    Raises
    ------
    BackendUnavailableError
        tensorrt, a CUDA binding or a GPU is missing (the message says which).
    """
    ok, reason = is_available(options)
    if not ok:
        raise BackendUnavailableError(f"cannot build a TensorRT engine: {reason}")
    gpu, _ = probe_gpu(options.device_id)
    assert gpu is not None  # is_available checked it
    cache_dir = options.cache_dir or (entry.directory / "cache")
    return ensure_plan(entry.spec, entry.onnx_path, entry.onnx_sha256(), cache_dir, gpu.name, gpu.compute_capability)


def load(entry: ModelEntry, options: BackendOptions) -> Backend:
    """Open ``entry`` on TensorRT."""
    gpu, reason = probe_gpu(options.device_id)
    if gpu is None:
        raise BackendUnavailableError(f"TensorRT needs a GPU: {reason}")
    return TensorRTBackend(entry, options, gpu)
