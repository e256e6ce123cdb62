"""Which NVIDIA GPU is present, asked through cuda-python or pycuda (imported lazily)."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuInfo:
    """Name and compute capability of one CUDA device."""

    name: str
    compute_capability: tuple[int, int]


def cuda_python_module() -> str | None:
    """Name of the installed CUDA binding (``cuda-python`` preferred, else ``pycuda``), or None."""
    if importlib.util.find_spec("cuda") is not None:
        return "cuda-python"
    if importlib.util.find_spec("pycuda") is not None:
        return "pycuda"
    return None


def _probe_cuda_python(device_id: int) -> GpuInfo | None:
    try:
        from cuda.bindings import driver as cu
    except ImportError:
        from cuda import cuda as cu  # cuda-python < 12.6 layout
    (err,) = cu.cuInit(0)
    if err != cu.CUresult.CUDA_SUCCESS:
        return None
    err, count = cu.cuDeviceGetCount()
    if err != cu.CUresult.CUDA_SUCCESS or count <= device_id:
        return None
    err, dev = cu.cuDeviceGet(device_id)
    err, raw = cu.cuDeviceGetName(256, dev)
    attr = cu.CUdevice_attribute
    _, major = cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
    _, minor = cu.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
    return GpuInfo(raw.split(b"\0", 1)[0].decode(), (int(major), int(minor)))


def _probe_pycuda(device_id: int) -> GpuInfo | None:
    import pycuda.driver as drv

    drv.init()
    if drv.Device.count() <= device_id:
        return None
    dev = drv.Device(device_id)
    return GpuInfo(dev.name(), tuple(dev.compute_capability()))  # type: ignore[arg-type]


def probe_gpu(device_id: int = 0) -> tuple[GpuInfo | None, str]:
    """Return the device's info and a reason string; ``(None, why)`` when there is no usable GPU.

    Never raises: a missing driver or binding is a reason, not an error.
    """
    binding = cuda_python_module()
    if binding is None:
        return None, "no CUDA binding installed (pip install cuda-python, or pycuda)"
    try:
        info = _probe_cuda_python(device_id) if binding == "cuda-python" else _probe_pycuda(device_id)
    except Exception as exc:  # noqa: BLE001 - each binding raises its own classes (pycuda._driver.Error, ...)
        # A binding without a driver (CPU-only host) fails here; that means "no GPU", reported as a reason.
        log.debug("GPU probe failed binding=%s error=%s", binding, exc)
        return None, f"no GPU ({binding}: {exc})"
    if info is None:
        return None, f"no GPU (CUDA device {device_id} not found)"
    return info, f"{info.name} (sm_{info.compute_capability[0]}{info.compute_capability[1]})"
