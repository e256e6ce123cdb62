"""Inference benchmark: every backend available in this run against a direct ONNX Runtime anchor.

For ``ct-body`` (512x512 slices) and the random CNN (64x64 images), per batch
size 1..32: latency p50/p99 and throughput of one ``Predictor.predict`` call
on a volume of that many slices (windowing, micro-batcher, backend, stacking,
threshold/argmax included), next to the anchor: the same ONNX file run
directly with ``onnxruntime.InferenceSession.run`` on an already prepared
batch, in a loop. ``ratio`` = predictor p50 / anchor p50; the budget is
<= 1.10 at batch 16 for ONNX Runtime. Then the batcher's fill ratio with
8 concurrent jobs. Prints a Markdown table.

Run: ``.venv/bin/python bench/inference.py`` (``--quick`` for a smoke run).
Triton is measured when ``.venv-triton`` exists (``bash tests/peers/setup_triton.sh``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from dicom_node.progress import bar  # noqa: E402
from inference.backends import BackendOptions, availability  # noqa: E402
from inference.predictor import Predictor, open_predictor  # noqa: E402
from inference.processing import apply_intensity  # noqa: E402
from inference.store import ModelEntry, ModelStore  # noqa: E402

NO_GPU = "not measured (no GPU in this session)"
MODELS = {"ct-body": 512, "random-cnn": 64}


@dataclass
class Timing:
    """Latencies of one measured point, in seconds."""

    samples: list[float]

    @property
    def p50(self) -> float:
        """Median latency."""
        return statistics.median(self.samples)

    @property
    def p99(self) -> float:
        """99th percentile latency (nearest rank)."""
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def measure(fns: dict[str, Callable[[], object]], seconds: float, min_iters: int, max_iters: int = 400) -> dict[str, Timing]:
    """Call every function in turn (interleaved, so load from other processes hits all alike) after two warm-ups."""
    for fn in fns.values():
        fn()
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < max_iters and (rounds < min_iters or time.perf_counter() - start < seconds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: Timing(values) for name, values in samples.items()}


def volume(slices: int, size: int, seed: int = 0) -> np.ndarray:
    """A synthetic CT volume in HU: air, a soft-tissue ellipse, two lungs, noise."""
    from models.reference import phantom

    return phantom(slices=slices, rows=size, cols=size, seed=seed)


def with_max_batch(entry: ModelEntry, max_batch: int) -> ModelEntry:
    """The same model with ``tensors.max_batch`` changed (so one predict = one request of that size)."""
    tensors = entry.spec.tensors.model_copy(update={"max_batch": max_batch})
    return ModelEntry(entry.spec.model_copy(update={"tensors": tensors}), entry.directory)


def anchor_fn(entry: ModelEntry, batch: int, size: int, threads: int) -> Callable[[], object]:
    """The model run directly with ``onnxruntime.InferenceSession`` on a prepared batch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the backend does
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(entry.onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    x = apply_intensity(volume(batch, size), entry.spec.preprocessing.intensity)[:, None]
    feeds = {entry.spec.tensors.inputs[0].name: np.ascontiguousarray(x, dtype=np.float32)}
    return lambda: session.run(None, feeds)


def fill_ratio(entry: ModelEntry, backend: str, options: BackendOptions, size: int, rounds: int) -> tuple[float, float]:
    """Fill ratio and median batch size with 8 concurrent jobs of 16 slices each (max_batch from the spec)."""
    predictor: Predictor = open_predictor(entry, options, [], backend=backend, max_delay_s=0.005)
    vols = [volume(16, size, seed=s) for s in range(8)]
    try:
        with ThreadPoolExecutor(8) as pool:
            for _ in range(rounds):
                list(pool.map(predictor.predict, vols))
        stats = predictor.stats()
    finally:
        predictor.close()
    return stats.fill_ratio, statistics.median(stats.sizes)


def start_triton(store: ModelStore, workdir: Path) -> tuple[object | None, str]:
    """Start a real Triton server serving both models, or return why not."""
    try:
        from peers.triton.launch import TritonServer, find_install, write_repository
    except ImportError as exc:
        return None, f"launcher unavailable: {exc}"
    install, reason = find_install()
    if install is None:
        return None, reason
    # The server's Python backend uses ONNX Runtime's default thread count, like the anchor.
    os.environ.setdefault("DICOM_NODE_TRITON_ORT_THREADS", "0")
    repo = write_repository(workdir / "repo", [store.get(name) for name in MODELS])
    server = TritonServer(install, repo, workdir)
    server.start()
    return server, "ok"


def fmt_ms(t: Timing) -> str:
    """``p50 / p99`` in milliseconds."""
    return f"{t.p50 * 1e3:.2f} / {t.p99 * 1e3:.2f}"


def row(model: str, batch: int, base: Timing, cells: dict[str, Timing | str]) -> str:
    """One Markdown table row."""
    parts = [model, str(batch), fmt_ms(base), f"{batch / base.p50:,.0f}"]
    for cell in cells.values():
        if isinstance(cell, str):
            parts += [cell, "", ""]
        else:
            parts += [fmt_ms(cell), f"{batch / cell.p50:,.0f}", f"{cell.p50 / base.p50:.3f}"]
    return "| " + " | ".join(parts) + " |"


def header(backends: list[str]) -> list[str]:
    """The table header for the measured backends."""
    cols = ["model", "batch", "anchor: ORT session p50 / p99 ms", "anchor slices/s"]
    for name in backends:
        cols += [f"{name} predictor p50 / p99 ms", f"{name} slices/s", f"{name} ratio"]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few iterations, batch sizes 1 and 16 only")
    p.add_argument("--seconds", type=float, default=1.5, help="time budget per measured point")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = its default)")
    p.add_argument("--no-triton", action="store_true", help="skip the Triton server even when installed")
    return p.parse_args(argv)


def measure_point(
    entry: ModelEntry, batch: int, size: int, available: dict[str, tuple[bool, str]], opts: dict[str, BackendOptions], args: argparse.Namespace
) -> tuple[Timing, dict[str, Timing | str]]:
    """Anchor and every available backend at one batch size, interleaved; unavailable ones get their reason."""
    fns: dict[str, Callable[[], object]] = {"anchor": anchor_fn(entry, batch, size, args.threads)}
    predictors: list[Predictor] = []
    cells: dict[str, Timing | str] = {}
    vol = volume(batch, size)
    for name, (ok, reason) in available.items():
        if not ok:
            cells[name] = NO_GPU if name == "tensorrt" else f"not measured ({reason})"
            continue
        predictor = open_predictor(with_max_batch(entry, batch), opts[name], [], backend=name, max_delay_s=0.005)
        predictors.append(predictor)
        fns[name] = lambda p=predictor: p.predict(vol)
    seconds, iters = (0.3, 5) if args.quick else (args.seconds, 20)
    try:
        timings = measure(fns, seconds * len(fns), iters)
    finally:
        for predictor in predictors:
            predictor.close()
    cells.update({name: t for name, t in timings.items() if name != "anchor"})
    return timings["anchor"], {name: cells[name] for name in available}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the Markdown tables."""
    args = parse_args(argv)
    store = ModelStore([ROOT / "engines", ROOT / "tests" / "models"])
    sizes = [1, 16] if args.quick else [1, 2, 4, 8, 16, 32]
    base_opts = BackendOptions(onnxruntime_threads=args.threads)
    opts = {"onnxruntime": base_opts, "tensorrt": base_opts, "triton": base_opts}
    available = {name: availability(name, base_opts) for name in ("onnxruntime", "tensorrt")}
    server, why = (None, "--no-triton") if args.no_triton else start_triton(store, Path(tempfile.mkdtemp(prefix="bench-triton-")))
    if server is not None:
        opts["triton"] = BackendOptions(triton_url=server.grpc_url)  # type: ignore[attr-defined]
        available["triton"] = (True, "local server")
    else:
        available["triton"] = (False, f"Triton: {why}")
    try:
        lines = [f"Inference benchmark, {os.cpu_count()} CPU cores, onnxruntime {_ort_version()}", ""]
        lines += header(list(available))
        with bar(len(MODELS) * len(sizes), desc="inference", unit="point") as shown:
            for model, size in MODELS.items():
                entry = store.get(model)
                for batch in sizes:
                    shown.set_description_str(f"{model} batch {batch}")
                    base, cells = measure_point(entry, batch, size, available, opts, args)
                    lines.append(row(f"{model} ({size}x{size})", batch, base, cells))
                    shown.update(1)
        lines += ["", "| model | backend | fill ratio, 8 concurrent jobs x 16 slices (max_batch 32, delay 5 ms) | median batch |", "|---|---|---|---|"]
        for model, size in MODELS.items():
            for name, (ok, _reason) in available.items():
                if not ok:
                    lines.append(f"| {model} | {name} | {NO_GPU if name == 'tensorrt' else 'not measured'} | |")
                    continue
                ratio, median_batch = fill_ratio(store.get(model), name, opts[name], size, 1 if args.quick else 3)
                lines.append(f"| {model} | {name} | {ratio:.2f} | {median_batch:g} |")
    finally:
        if server is not None:
            server.stop()  # type: ignore[attr-defined]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


if __name__ == "__main__":
    sys.exit(main())
