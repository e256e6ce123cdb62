"""Series decode benchmark: one CT series in four lossless syntaxes, side by side with pydicom.

Usage: ``python bench/decode.py [--slices 512] [--repeat 3]`` (a progress bar on stderr when it is a terminal)

The same synthetic 512x512 CT series (``dicom_node.synthetic``) is encoded as
JPEG 2000 lossless, HTJ2K lossless (needs imagecodecs' OpenJPH encoder),
JPEG-LS lossless and RLE Lossless. For each, the series is decoded by:

- the anchor: ``[dcmread(p).pixel_array for p in paths]`` (stored values only);
- ``load_series(workers=0)``: this process, into a float32 HU volume;
- ``load_series`` with a warm pool of one worker per core;
- batched GPU decode (nvImageCodec) where a GPU is present.

``load_series`` does more than the anchor (header pass, sort along the normal,
rescale to float32 HU), so ratios under 1.0 for one process are expected. Each
cell is the median of ``--repeat`` runs; ratio = anchor time / time.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom import dcmread

# The checkout first: run as a script, this folder leads sys.path, and its
# inference.py would shadow the ``inference`` package dicom_node imports.
sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

from dicom_node.pixels.gpu import probe_gpu, select_decoder  # noqa: E402
from dicom_node.pixels.pool import DecodePool, default_workers  # noqa: E402
from dicom_node.pixels.syntaxes import syntax_info  # noqa: E402
from dicom_node.pixels.transcode import transcode  # noqa: E402
from dicom_node.pixels.volume import load_series  # noqa: E402
from dicom_node.progress import track  # noqa: E402
from dicom_node.synthetic import SeriesSpec, write_ct_series  # noqa: E402

SYNTAXES = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5")


def _encode_htj2k(ds: object) -> object:
    import imagecodecs
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([imagecodecs.htj2k_encode(ds.pixel_array, reversible=True)])  # type: ignore[attr-defined]
    ds["PixelData"].VR = "OB"  # type: ignore[index]
    ds.file_meta.TransferSyntaxUID = SYNTAXES[1]  # type: ignore[attr-defined]
    return ds


def encode_series(src: list[Path], uid: str, out: Path) -> list[Path] | None:
    """Write ``src`` re-encoded as ``uid`` into ``out``; None when no encoder is installed."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in src:
        ds = dcmread(p)
        if uid == SYNTAXES[1]:
            try:
                ds = _encode_htj2k(ds)
            except ImportError:
                return None
        else:
            ds = transcode(ds, [uid])
        path = out / p.name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def median_time(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``repeat`` runs of ``fn``."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cell(seconds: float | None, mpix: float, anchor: float, note: str = "n/a") -> str:
    if seconds is None:
        return note
    return f"{seconds:.2f} s, {mpix / seconds:.0f} MPix/s, x{anchor / seconds:.2f}"


def bench_syntax(paths: list[Path], uid: str, pool: DecodePool, repeat: int, mpix: float) -> str:
    """One Markdown row for one syntax."""
    def anchor() -> object:
        return [dcmread(p).pixel_array for p in paths]

    t_anchor = median_time(anchor, repeat)
    ref = load_series(paths, workers=0, gpu="cpu")
    np.testing.assert_array_equal(ref.array[0], dcmread(paths[0]).pixel_array.astype(np.float32) - 1024)
    t_one = median_time(lambda: load_series(paths, workers=0, gpu="cpu"), repeat)
    t_all = median_time(lambda: load_series(paths, pool=pool, gpu="cpu"), repeat)
    selection = select_decoder([uid])
    t_gpu = median_time(lambda: load_series(paths, gpu="auto"), repeat) if selection.path == "gpu" else None
    gpu_note = "n/a (no GPU)" if not probe_gpu()[0] else f"n/a ({selection.reason})"
    return (
        f"| {syntax_info(uid).label} | {sum(p.stat().st_size for p in paths) / 2**20:.0f} MiB | "
        f"{_cell(t_anchor, mpix, t_anchor)} | {_cell(t_one, mpix, t_anchor)} | {_cell(t_all, mpix, t_anchor)} | "
        f"{_cell(t_gpu, mpix, t_anchor, gpu_note)} |"
    )


def main() -> int:
    """Generate, encode, decode and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cores = default_workers(None)
    mpix = args.slices * 512 * 512 / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        src = write_ct_series(Path(tmp) / "src", SeriesSpec(slices=args.slices, rows=512, columns=512, seed="bench-decode"))
        rows = []
        with DecodePool(cores) as pool:
            list(pool.imap(default_workers, [None] * cores))  # start the workers before timing
            for uid in track(SYNTAXES, desc="decode", unit="syntax"):
                paths = encode_series(src, uid, Path(tmp) / uid)
                if paths is None:
                    rows.append(f"| {syntax_info(uid).label} | n/a (encoder not installed: imagecodecs) | | | | |")
                    continue
                rows.append(bench_syntax(paths, uid, pool, args.repeat, mpix))
    print(f"Series decode: {args.slices} slices x 512x512 (16-bit CT), median of {args.repeat}, ratio = anchor time / time\n")
    print(f"| Syntax | Size | pydicom `pixel_array` loop (anchor) | load_series, 1 process | load_series, {cores} cores | GPU batched (nvImageCodec) |")
    print("|---|---:|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
