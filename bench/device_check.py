"""Every GPU figure in one run, as one Markdown table: decode, ONNX Runtime CUDA, TensorRT.

Run by ``bench/device-check.sh`` (which prepares a virtual environment), or
directly: ``python bench/device_check.py [--slices 64] [--batch 16] [--out FILE]``.

Rows, each next to its CPU counterpart measured in the same run:

- nvImageCodec batched decode (``load_series(gpu="auto")``) of one synthetic
  512x512 CT series in JPEG 2000 Lossless and HTJ2K Lossless, against the CPU
  decoders on every core (``load_series(gpu="cpu")``), checked bit-exact;
- ONNX Runtime's CUDA execution provider against its CPU provider, ``ct-body``
  at ``--batch`` slices of 512x512 (host copies included), max abs difference;
- the node's ``onnxruntime`` backend through ``Predictor.predict``, which
  chooses the CUDA provider by itself when it can;
- the TensorRT backend (engine build time, then ``predict``) where ``tensorrt`` imports.

A figure that cannot be measured says ``not available: <reason>`` (no GPU,
package missing, ...); a check that fails says so in its row and the others
still run. The exit status is 0 unless the table itself cannot be written.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import numpy as np  # noqa: E402

from dicom_node.progress import track  # noqa: E402

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

    from inference.store import ModelEntry

log = logging.getLogger("device_check")

#: Decode rows: the lossless syntaxes nvImageCodec decodes (dicom_node.pixels.syntaxes marks them gpu=True).
DECODE_SYNTAXES = {"1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless", "1.2.840.10008.1.2.4.201": "HTJ2K Lossless"}


@dataclass
class Row:
    """One line of the table: a figure on the CPU, the same on the GPU, and what compares them."""

    figure: str
    cpu: str
    gpu: str
    compare: str = ""


def unavailable(reason: str) -> str:
    """The cell text for a figure that could not be measured."""
    return f"not available: {reason}"


def median_s(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    """Median wall time of ``repeat`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def version(dist: str) -> str:
    """Installed version of distribution ``dist``, or ``"-"``."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version(dist)
    except PackageNotFoundError:
        return "-"


def gpu_line() -> tuple[bool, str]:
    """Whether a CUDA device answers, and a line naming it (or why not)."""
    from inference.gpu import probe_gpu

    info, reason = probe_gpu(0)
    if info is None:
        return False, f"{_nvidia_smi()}; {reason}"
    return True, f"{info.name} (compute capability {info.compute_capability}); {reason}"


def _nvidia_smi() -> str:
    """What ``nvidia-smi -L`` says, in a few words: the plainest sign of a GPU and its driver."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "no nvidia-smi (no NVIDIA driver)"
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi failed: {type(exc).__name__}"
    listed = out.stdout.strip().splitlines()
    return listed[0] if out.returncode == 0 and listed else "nvidia-smi lists no GPU"


# -- decode ---------------------------------------------------------------------


def _series(tmp: Path, slices: int) -> list[Path]:
    from dicom_node.synthetic import SeriesSpec, write_ct_series

    # A fixed seed: the same pixels in every run, so figures compare across machines.
    return write_ct_series(tmp / "src", SeriesSpec(slices=slices, rows=512, columns=512, seed="device-check"))


def check_decode(slices: int, repeat: int) -> Iterator[Row]:
    """nvImageCodec against the CPU decoders, one row per syntax."""
    from decode import encode_series

    from dicom_node.pixels.gpu import select_decoder
    from dicom_node.pixels.pool import default_workers
    from dicom_node.pixels.volume import load_series

    cores = default_workers(None)
    mpix = slices * 512 * 512 / 1e6
    with tempfile.TemporaryDirectory(prefix="device-check-") as name:
        tmp = Path(name)
        src = _series(tmp, slices)
        for uid, label in DECODE_SYNTAXES.items():
            figure = f"decode {label}, {slices} x 512x512 CT"
            paths = encode_series(src, uid, tmp / uid)
            if paths is None:
                yield Row(figure, unavailable("no encoder (pip install imagecodecs)"), "", "")
                continue
            cpu_volume = load_series(paths, gpu="cpu")
            t_cpu = median_s(functools.partial(load_series, paths, gpu="cpu"), repeat)
            cpu = f"{t_cpu:.2f} s, {mpix / t_cpu:.0f} MPix/s ({cores} cores)"
            selection = select_decoder([uid])
            if selection.path != "gpu":
                yield Row(figure, cpu, unavailable(selection.reason))
                continue
            gpu_volume = load_series(paths, gpu="auto")
            t_gpu = median_s(functools.partial(load_series, paths, gpu="auto"), repeat)
            exact = "bit-exact" if np.array_equal(gpu_volume.array, cpu_volume.array) else "DIFFERS from CPU"
            yield Row(figure, cpu, f"{t_gpu:.2f} s, {mpix / t_gpu:.0f} MPix/s ({gpu_volume.decoder})",
                      f"x{t_cpu / t_gpu:.1f}, {exact}")


# -- ONNX Runtime ---------------------------------------------------------------------


def _ct_body() -> ModelEntry:
    from inference.store import ModelStore

    return ModelStore([ROOT / "engines"]).get("ct-body")


def _batch(entry: ModelEntry, batch: int) -> np.ndarray:
    from inference.processing import apply_intensity

    rng = np.random.default_rng(0)
    hu = rng.normal(-400.0, 300.0, (batch, 512, 512)).astype(np.float32)
    x = apply_intensity(hu, entry.spec.preprocessing.intensity)[:, None]
    return np.ascontiguousarray(x, dtype=np.float32)


def _session(entry: ModelEntry, provider: str) -> InferenceSession:
    """A plain ONNX Runtime session on one execution provider (the anchor the node's backend is compared with)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(entry.onnx_path), sess_options=options, providers=[provider])


def check_onnxruntime(batch: int, repeat: int, has_gpu: bool, gpu_reason: str) -> Iterator[Row]:
    """ONNX Runtime: the CUDA provider against the CPU provider, then the node's backend."""
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):  # onnxruntime-gpu >= 1.21 finds the CUDA/cuDNN pip wheels itself
        try:
            ort.preload_dlls()
        except Exception as exc:  # noqa: BLE001 - a missing library shows up below as no CUDA provider
            log.debug("preload_dlls failed: %s", exc)
    entry = _ct_body()
    x = _batch(entry, batch)
    name = entry.spec.tensors.inputs[0].name
    cpu_session = _session(entry, "CPUExecutionProvider")
    ref = np.asarray(cpu_session.run(None, {name: x})[0])
    t_cpu = median_s(lambda: cpu_session.run(None, {name: x}), repeat)
    figure = f"ONNX Runtime {ort.__version__}, ct-body, batch {batch} x 512x512"
    cpu = f"{t_cpu * 1e3:.1f} ms ({os.cpu_count()} cores)"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        yield Row(figure, cpu, unavailable(f"this onnxruntime has no CUDA provider (install onnxruntime-gpu); "
                                           f"providers: {', '.join(ort.get_available_providers())}"))
    elif not has_gpu:
        yield Row(figure, cpu, unavailable(gpu_reason))
    else:
        gpu_session = _session(entry, "CUDAExecutionProvider")
        if "CUDAExecutionProvider" not in gpu_session.get_providers():
            yield Row(figure, cpu, unavailable("the CUDA provider did not load (see stderr for ONNX Runtime's reason)"))
        else:
            out = np.asarray(gpu_session.run(None, {name: x})[0])
            t_gpu = median_s(lambda: gpu_session.run(None, {name: x}), repeat, warmup=3)
            yield Row(figure, cpu, f"{t_gpu * 1e3:.1f} ms (CUDA provider, host copies included)",
                      f"x{t_cpu / t_gpu:.1f}, max abs diff {float(np.abs(out - ref).max()):.1e}")
    yield from _predictor_row("onnxruntime", entry, batch, repeat, ref, t_cpu)


def _predictor_row(backend: str, entry: ModelEntry, batch: int, repeat: int, ref: np.ndarray, t_cpu: float,
                   cache_dir: Path | None = None) -> Iterator[Row]:
    """``Predictor.predict`` on ``backend`` as the node runs it (windowing, batching, threshold included)."""
    from inference.backends import BackendOptions
    from inference.predictor import open_predictor

    rng = np.random.default_rng(0)
    hu = rng.normal(-400.0, 300.0, (batch, 512, 512)).astype(np.float32)
    t0 = time.perf_counter()
    predictor = open_predictor(entry, BackendOptions(cache_dir=cache_dir), [], backend=backend)
    opened_s = time.perf_counter() - t0
    try:
        prediction = predictor.predict(hu)
        t = median_s(lambda: predictor.predict(hu), repeat)
        described = predictor.backend.description
    finally:
        predictor.close()
    raw = next(iter(prediction.raw.values()))
    diff = float(np.abs(raw.reshape(ref.shape) - ref).max())
    opened = f", opened in {opened_s:.1f} s" if opened_s >= 1.0 else ""
    figure = f"dicom-node {backend} backend, ct-body predict, {batch} slices"
    measured = f"{t * 1e3:.1f} ms on {described}{opened}"
    if backend == "onnxruntime" and "CUDA" not in described and "Tensorrt" not in described:
        # The backend chose the CPU by itself: that is a CPU figure, and the reason is the GPU cell.
        yield Row(figure, measured, unavailable(f"the backend chose {described}"), f"max abs diff vs session {diff:.1e}")
        return
    yield Row(figure, f"{t_cpu * 1e3:.1f} ms (CPU provider session)", measured, f"x{t_cpu / t:.1f}, max abs diff vs CPU {diff:.1e}")


# -- TensorRT ---------------------------------------------------------------------


def check_tensorrt(batch: int, repeat: int) -> Iterator[Row]:
    """The TensorRT backend where ``tensorrt`` imports and a GPU answers."""
    from inference.backends import BackendOptions
    from inference.backends import tensorrt as trt_backend

    figure = f"TensorRT backend, ct-body predict, {batch} slices"
    ok, reason = trt_backend.is_available(BackendOptions())
    if not ok:
        yield Row(figure, "", unavailable(reason))
        return
    entry = _ct_body()
    x = _batch(entry, batch)
    cpu_session = _session(entry, "CPUExecutionProvider")
    name = entry.spec.tensors.inputs[0].name
    ref = np.asarray(cpu_session.run(None, {name: x})[0])
    t_cpu = median_s(lambda: cpu_session.run(None, {name: x}), repeat)
    with tempfile.TemporaryDirectory(prefix="device-check-trt-") as cache:
        for row in _predictor_row("tensorrt", entry, batch, repeat, ref, t_cpu, cache_dir=Path(cache)):
            row.figure = f"TensorRT {version('tensorrt')} backend, ct-body predict, {batch} slices (engine built here)"
            yield row


# -- table ---------------------------------------------------------------------


CHECKS = ("decode", "onnxruntime", "tensorrt")


def run_check(name: str, fn: Callable[[], Iterator[Row]]) -> list[Row]:
    """Rows of one check; an exception becomes one row naming it, so the other checks still run."""
    try:
        return list(fn())
    except ImportError as exc:
        return [Row(name, unavailable(f"missing package: {exc.name or exc}"), unavailable(f"missing package: {exc.name or exc}"))]
    except Exception as exc:  # noqa: BLE001 - a failing check is a row of the table, not the end of the run
        sys.stderr.write(f"device-check: {name} failed\n{traceback.format_exc()}")
        failed = unavailable(f"check failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return [Row(name, failed, failed)]


def cell(text: str) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def render(rows: list[Row], header: list[str]) -> str:
    """The whole report as Markdown."""
    lines = ["# dicom-node device check", "", *header, "",
             "| figure | CPU | GPU | GPU vs CPU |", "|---|---|---|---|"]
    lines += [f"| {cell(r.figure)} | {cell(r.cpu)} | {cell(r.gpu)} | {cell(r.compare)} |" for r in rows]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, default=64, help="slices of the decoded series (512x512 each)")
    p.add_argument("--batch", type=int, default=16, help="slices per inference call")
    p.add_argument("--repeat", type=int, default=5, help="timed repetitions per figure (median reported)")
    p.add_argument("--only", action="append", choices=CHECKS, help="run only these checks (repeatable)")
    p.add_argument("--out", type=Path, help="also write the Markdown table to this file")
    p.add_argument("--notes", type=Path, help="a file of Markdown list lines to add to the header (set-up problems)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every check and print the table (and write it to ``--out``)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    started = time.perf_counter()
    has_gpu, gpu_text = gpu_line()
    checks: dict[str, Callable[[], Iterator[Row]]] = {
        "decode": lambda: check_decode(args.slices, args.repeat),
        "onnxruntime": lambda: check_onnxruntime(args.batch, args.repeat, has_gpu, gpu_text),
        "tensorrt": lambda: check_tensorrt(args.batch, args.repeat),
    }
    rows: list[Row] = []
    for name in track(args.only or CHECKS, desc="device check", unit="check"):
        rows += run_check(name, checks[name])
    packages = ", ".join(f"{d} {version(d)}" for d in
                         ("numpy", "pydicom", "onnxruntime", "onnxruntime-gpu", "nvidia-nvimgcodec-cu13",
                          "nvidia-nvimgcodec-cu12", "cuda-python", "cuda-bindings", "tensorrt", "imagecodecs")
                         if version(d) != "-")
    header = [f"- GPU: {gpu_text if has_gpu else unavailable(gpu_text)}",
              f"- host: {platform.node() or 'unknown'}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
              f"- packages: {packages}",
              f"- run: {args.slices}-slice series, batch {args.batch}, median of {args.repeat}, "
              f"{time.perf_counter() - started:.0f} s in all"]
    if args.notes is not None and args.notes.is_file():
        header += [line for line in args.notes.read_text(encoding="utf-8").splitlines() if line.startswith("- ")]
    report = render(rows, header)
    sys.stdout.write(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
