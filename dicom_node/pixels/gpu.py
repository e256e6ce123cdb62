"""Batched GPU decode of JPEG, JPEG 2000 and HTJ2K frames with NVIDIA nvImageCodec.

Selection is automatic: when ``nvidia-nvimgcodec`` imports and a CUDA device
answers, and every transfer syntax of the series has a GPU decoder, frames are
decoded in batches on the GPU; otherwise the CPU path runs, with no
configuration. ``pixels.gpu_decode = "cpu"`` forces the CPU. The reason for the
choice is logged and shown by ``dicom-node check --verbose``.

nvImageCodec is imported lazily (never at module import) and written against
its documented Python API: ``nvimgcodec.Decoder().decode(list_of_bytes,
params=nvimgcodec.DecodeParams(color_spec=ColorSpec.UNCHANGED,
allow_any_depth=True))`` returns one ``Image`` per input (``None`` when that
stream failed), and ``image.cpu()`` exposes the host array interface.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dicom_node.errors import DecodeError, UnsupportedTransferSyntaxError
from dicom_node.pixels.decode import decode_instance, read_dataset
from dicom_node.pixels.syntaxes import syntax_info

log = logging.getLogger(__name__)

#: Frames per GPU decode call: large enough to fill the device, small enough to bound host memory.
DEFAULT_BATCH = 64


@dataclass(frozen=True)
class DecoderSelection:
    """The decode path chosen for a set of transfer syntaxes, and why."""

    path: str  # "gpu" or "cpu"
    reason: str


@functools.lru_cache(maxsize=1)
def probe_gpu() -> tuple[bool, str]:
    """Return whether nvImageCodec and a CUDA device are usable, and a reason.

    Cached for the life of the process: devices do not come and go.
    """
    try:
        nvimgcodec = importlib.import_module("nvidia.nvimgcodec")
    except ImportError:
        return False, "nvidia-nvimgcodec is not installed (pip install 'dicom-node[gpu]')"
    try:
        runtime = importlib.import_module("cuda.bindings.runtime")
        err, count = runtime.cudaGetDeviceCount()
        if int(err) != 0 or count < 1:
            return False, "no CUDA device visible"
    except ImportError:
        pass  # cuda-python absent: creating a decoder below is the device probe
    try:
        nvimgcodec.Decoder()
    except Exception as exc:  # noqa: BLE001 - any failure here means "no usable GPU", reported as such
        return False, f"nvImageCodec decoder could not start: {exc}"
    return True, f"nvImageCodec {getattr(nvimgcodec, '__version__', '')} on CUDA device".replace("  ", " ")


def select_decoder(
    syntaxes: Iterable[str],
    *,
    mode: str = "auto",
    probe: Callable[[], tuple[bool, str]] = probe_gpu,
) -> DecoderSelection:
    """Choose the GPU or the CPU path for frames in ``syntaxes``.

    Parameters
    ----------
    syntaxes : iterable of str
        Transfer Syntax UIDs present (PS3.5 Annex A).
    mode : {"auto", "cpu"}
        From ``pixels.gpu_decode``.
    probe : callable
        Returns ``(available, reason)``; injectable for tests.

    Returns
    -------
    DecoderSelection
    """
    uids = sorted(set(syntaxes))
    if mode == "cpu":
        return DecoderSelection("cpu", "pixels.gpu_decode = 'cpu'")
    if not uids:
        return DecoderSelection("cpu", "no pixel data")
    for uid in uids:
        try:
            info = syntax_info(uid)
        except UnsupportedTransferSyntaxError:
            return DecoderSelection("cpu", f"transfer syntax {uid} has no GPU decoder")
        if not info.gpu:
            return DecoderSelection("cpu", f"{info.label} has no GPU decoder")
    ok, reason = probe()
    if not ok:
        return DecoderSelection("cpu", reason)
    return DecoderSelection("gpu", reason)


def _to_stored(image: Any, signed: bool) -> np.ndarray:
    """Host copy of a decoded image, channel axis dropped for monochrome, signedness restored."""
    arr = np.asarray(image.cpu())
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if signed and arr.dtype.kind == "u":
        arr = arr.view(arr.dtype.str.replace("u", "i"))
    return arr


def decode_frames_gpu(frames: Sequence[bytes], *, signed: Sequence[bool]) -> list[np.ndarray]:
    """Decode encapsulated frames on the GPU in one batch.

    Parameters
    ----------
    frames : sequence of bytes
        JPEG, JPEG 2000 or HTJ2K codestreams (PS3.5 A.4.1, A.4.4, A.4.11).
    signed : sequence of bool
        Pixel Representation of each frame's instance (PS3.3 C.7.6.3.1.1).

    Returns
    -------
    list of numpy.ndarray
        Stored values, one per frame.

    Raises
    ------
    DecodeError
        When nvImageCodec fails a frame; the caller may fall back to the CPU.
    """
    nvimgcodec = importlib.import_module("nvidia.nvimgcodec")
    decoder = nvimgcodec.Decoder()
    params = nvimgcodec.DecodeParams(color_spec=nvimgcodec.ColorSpec.UNCHANGED, allow_any_depth=True)
    images = decoder.decode(list(frames), params=params)
    out = []
    for i, image in enumerate(images):
        if image is None:
            raise DecodeError(f"nvImageCodec could not decode frame {i} of the batch")
        out.append(_to_stored(image, signed[i]))
    return out


def decode_files_gpu(
    paths: Sequence[str], *, max_inflated_bytes: int, batch: int = DEFAULT_BATCH
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, stored values)`` for single-frame files, decoded on the GPU in batches.

    A batch nvImageCodec refuses is decoded again on the CPU, so a series never
    fails only because the GPU codec lacks a feature.
    """
    from pydicom.encaps import generate_frames

    for start in range(0, len(paths), batch):
        chunk = [read_dataset(p, max_inflated_bytes=max_inflated_bytes) for p in paths[start : start + batch]]
        frames = [next(generate_frames(ds.PixelData, number_of_frames=1)) for ds in chunk]
        try:
            arrays = decode_frames_gpu(frames, signed=[bool(ds.get("PixelRepresentation", 0)) for ds in chunk])
        except DecodeError as exc:
            log.warning("GPU decode failed (%s); decoding this batch on the CPU", exc)
            arrays = [decode_instance(ds) for ds in chunk]
        yield from ((start + i, a) for i, a in enumerate(arrays))
