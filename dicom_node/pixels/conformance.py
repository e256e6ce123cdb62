"""Decode conformance over real files: pydicom's bundled test files and pydicom-data.

Each file with pixel data is decoded with :func:`decode_instance` and compared
with a reference that does not come from the decoder under test:

1. its uncompressed twin in the corpora (the table :data:`TWINS`, the way
   pydicom's own ``tests/pixels`` pairs compressed files with references), read
   by :func:`~dicom_node.pixels.reference.raw_reference`, a small NumPy reader of
   native Pixel Data (PS3.5 8.1);
2. for native files without a twin, :func:`raw_reference` of the file itself;
3. for compressed files without a twin, an independent codec build from
   ``imagecodecs`` (libjpeg-turbo, CharLS, OpenJPEG, OpenJPH) when installed.

Outcomes: ``exact``; ``lossy`` (a lossy syntax within tolerance: PSNR >= 30 dB
over the stored range); ``refused`` (a PixelError with its reason); ``mismatch``
(a failure: different values, or a lossless syntax that is not exact).
"""

from __future__ import annotations

import importlib
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.errors import PixelError
from dicom_node.pixels.decode import decode_instance, read_dataset, transfer_syntax_of
from dicom_node.pixels.generated import generate
from dicom_node.pixels.reference import mask_bits, raw_reference
from dicom_node.pixels.syntaxes import SYNTAXES, syntax_info

log = logging.getLogger(__name__)

#: Compressed or re-encoded file -> uncompressed twin (same image, native encoding).
TWINS: dict[str, str] = {
    **{f"MR_small_{s}.dcm": "MR_small.dcm" for s in ("jpeg_ls_lossless", "RLE", "jp2klossless", "bigendian", "expb", "implicit", "padded")},
    **{f"emri_small_{s}.dcm": "emri_small.dcm" for s in ("jpeg_ls_lossless", "RLE", "jpeg_2k_lossless", "big_endian")},
    **{f"SC_rgb_dcmtk_+eb+{s}.dcm": f"SC_rgb_dcmtk_eb{s.replace('+', '')}_dcmd.dcm" for s in ("cr", "cy+n1", "cy+n2", "cy+np", "cy+s2", "cy+s4")},
    # *_UNCR is the original, *_UNCI the decompressed irreversible (J2KI) image.
    **{f"{n}_J2K{k}.dcm": f"{n}_UNC{k}.dcm" for n in ("MR2", "RG1", "RG3", "US1", "693") for k in ("R", "I")},
    "SC_rgb_rle.dcm": "SC_rgb.dcm",
    "SC_rgb_jpeg_dcmtk.dcm": "SC_rgb.dcm",
    "SC_rgb_jpeg_lossy_gdcm.dcm": "SC_rgb.dcm",
    "SC_rgb_jpeg_gdcm.dcm": "SC_rgb.dcm",
    "SC_rgb_gdcm_KY.dcm": "SC_rgb.dcm",
    "SC_rgb_jls_lossy_line.dcm": "SC_rgb.dcm",
    "SC_rgb_jls_lossy_sample.dcm": "SC_rgb.dcm",
    "SC_rgb_rle_2frame.dcm": "SC_rgb_2frame.dcm",
    "SC_rgb_rle_16bit.dcm": "SC_rgb_16bit.dcm",
    "SC_rgb_rle_16bit_2frame.dcm": "SC_rgb_16bit_2frame.dcm",
    "SC_rgb_rle_32bit.dcm": "SC_rgb_32bit.dcm",
    "SC_rgb_rle_32bit_2frame.dcm": "SC_rgb_32bit_2frame.dcm",
    **{f"SC_rgb_expb{s}.dcm": f"SC_rgb{s}.dcm" for s in ("", "_2frame", "_16bit", "_16bit_2frame", "_32bit", "_32bit_2frame")},
    "SC_rgb_small_odd_big_endian.dcm": "SC_rgb_small_odd.dcm",
    "SC_rgb_jpeg.dcm": "SC_rgb_jpeg_dcmd.dcm",
    "rtdose_rle.dcm": "rtdose.dcm",
    "rtdose_rle_1frame.dcm": "rtdose_1frame.dcm",
    "rtdose_expb.dcm": "rtdose.dcm",
    "rtdose_expb_1frame.dcm": "rtdose_1frame.dcm",
    "OBXXXX1A_rle.dcm": "OBXXXX1A.dcm",
    "OBXXXX1A_rle_2frame.dcm": "OBXXXX1A_2frame.dcm",
    "OBXXXX1A_expb.dcm": "OBXXXX1A.dcm",
    "OBXXXX1A_expb_2frame.dcm": "OBXXXX1A_2frame.dcm",
    "liver_expb.dcm": "liver.dcm",
    "liver_expb_1frame.dcm": "liver_1frame.dcm",
    "gdcm-US-ALOKA-16_big.dcm": "gdcm-US-ALOKA-16.dcm",
    "JPEG2000.dcm": "JPEG2000_UNC.dcm",
}

#: Lossy results must reach this PSNR over the stored range (a common bar for diagnostic lossy JPEG).
MIN_PSNR_DB = 30.0


def _reason(exc: Exception) -> str:
    """All lines of a refusal (pydicom lists one per plugin tried), on one line."""
    return "; ".join(line.strip() for line in str(exc).splitlines()[1:] or [str(exc)] if line.strip())[:400]


@dataclass(frozen=True)
class ConformanceResult:
    """The outcome for one file."""

    name: str
    transfer_syntax: str
    outcome: str  # "exact" | "lossy" | "refused" | "mismatch"
    reference: str
    detail: str = ""


def corpus_files() -> list[Path]:
    """Return pydicom's bundled test files and pydicom-data's files that hold pixel data."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_files

    out = []
    for name in sorted(get_testdata_files(), key=os.path.basename):
        try:
            ds = dcmread(name, force=True, stop_before_pixels=False, defer_size=64)
        except Exception as exc:  # noqa: BLE001 - not a DICOM file (charset samples, DICOMDIR blobs): not in the corpus
            log.debug("skipping %s: %s", os.path.basename(name), exc)
            continue
        if any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            out.append(Path(name))
    return out


def imagecodecs_reference(ds: Dataset) -> np.ndarray | None:
    """Decode encapsulated frames with ``imagecodecs`` (independent builds); None when unavailable."""
    try:
        ic = importlib.import_module("imagecodecs")
    except ImportError:
        return None
    from pydicom.encaps import generate_frames

    uid = transfer_syntax_of(ds)
    jpeg_kwargs = {}
    if str(ds.get("PhotometricInterpretation", "")).strip() == "RGB":
        # PS3.5 8.2.1: Photometric Interpretation states the colour space inside the stream.
        jpeg_kwargs = {"colorspace": "RGB", "outcolorspace": "RGB"}
    decode = {
        "1.2.840.10008.1.2.4.5": ic.jpeg8_decode,
        "1.2.840.10008.1.2.4.7": ic.ljpeg_decode,
        "1.2.840.10008.1.2.4.8": ic.jpegls_decode,
        "1.2.840.10008.1.2.4.9": ic.jpeg2k_decode,
        "1.2.840.10008.1.2.4.20": ic.htj2k_decode,
    }.get(uid[:-1])
    if decode is None:
        return None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    kwargs = jpeg_kwargs if decode is ic.jpeg8_decode else {}
    arrs = [np.asarray(decode(f, **kwargs)) for f in generate_frames(ds.PixelData, number_of_frames=frames)]
    arr = arrs[0] if frames == 1 else np.stack(arrs)
    signed = bool(ds.get("PixelRepresentation", 0))
    if signed and arr.dtype.kind == "u":
        # Codestreams may declare unsigned samples; the dataset's Pixel Representation governs (PS3.5 8.2.4).
        arr = mask_bits(arr.view(arr.dtype.str.replace("u", "i")), int(ds.get("BitsStored", 16)), True)
    return arr


def _psnr(a: np.ndarray, b: np.ndarray, bits: int) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(((1 << bits) - 1) ** 2 / mse)


def _reference(path: Path, ds: Dataset, index: dict[str, Path], twin_path: Path | None) -> tuple[np.ndarray | None, str]:
    if twin_path is not None:
        return raw_reference(read_dataset(twin_path)), f"source {twin_path.name}"
    info = syntax_info(transfer_syntax_of(ds))
    if not info.lossless:
        # A lossy file is judged against the same stream decoded elsewhere: that measures the decoder, not the encoder.
        ref = imagecodecs_reference(ds)
        if ref is not None:
            return ref, "imagecodecs"
    twin = TWINS.get(path.name)
    if twin and twin in index:
        return raw_reference(read_dataset(index[twin])), f"twin {twin}"
    if not info.encapsulated:
        return raw_reference(ds), "numpy reader"
    return imagecodecs_reference(ds), "imagecodecs"


def check_file(path: Path, index: dict[str, Path], twin_path: Path | None = None) -> ConformanceResult:
    """Decode one file and compare it with its reference (see module docstring).

    ``twin_path`` names the native original of a generated file.
    """
    uid = "?"
    try:
        ds = read_dataset(path)
        uid = transfer_syntax_of(ds)
        arr = decode_instance(ds)
    except PixelError as exc:
        return ConformanceResult(path.name, uid, "refused", "", _reason(exc))
    ref, source = _reference(path, ds, index, twin_path)
    if ref is None:
        return ConformanceResult(path.name, uid, "mismatch", "none", "no independent reference available")
    if ref.shape != arr.shape:
        return ConformanceResult(path.name, uid, "mismatch", source, f"shape {arr.shape} != reference {ref.shape}")
    if np.array_equal(arr, ref):
        return ConformanceResult(path.name, uid, "exact", source)
    psnr = _psnr(arr, ref, int(ds.get("BitsStored", 8)))
    lossy = not syntax_info(uid).lossless or (source == "imagecodecs" and "YBR" in str(ds.get("PhotometricInterpretation")))
    if lossy and psnr >= MIN_PSNR_DB:
        return ConformanceResult(path.name, uid, "lossy", source, f"PSNR {psnr:.1f} dB")
    return ConformanceResult(path.name, uid, "mismatch", source, f"PSNR {psnr:.1f} dB, max |diff| {np.max(np.abs(arr.astype(np.int64) - ref)):d}")


def run(paths: Iterable[Path] | None = None) -> list[ConformanceResult]:
    """Run the check over ``paths`` (default: the whole corpus)."""
    files = list(paths) if paths is not None else corpus_files()
    index = {p.name: p for p in corpus_files()} if paths is not None else {p.name: p for p in files}
    return [check_file(p, index) for p in files]


def run_generated(out_dir: Path) -> list[ConformanceResult]:
    """Generate HTJ2K / JPEG Process 14 files (see :mod:`.generated`) and check them.

    Raises
    ------
    UnsupportedTransferSyntaxError
        When ``imagecodecs`` (the independent encoder) is not installed.
    """
    index = {p.name: p for p in corpus_files()}
    return [check_file(p, index, src) for p, src in generate(out_dir, index).items()]


def markdown_table(results: Iterable[ConformanceResult]) -> str:
    """Counts per transfer syntax as a Markdown table."""
    counts: dict[str, Counter[str]] = {}
    for r in results:
        counts.setdefault(r.transfer_syntax, Counter())[r.outcome] += 1
    order = [s.uid for s in SYNTAXES] + sorted(set(counts) - {s.uid for s in SYNTAXES})
    lines = ["| Transfer syntax | UID | exact | lossy (within tolerance) | refused | mismatch |", "|---|---|---:|---:|---:|---:|"]
    total: Counter[str] = Counter()
    for uid in order:
        if uid not in counts:
            continue
        c = counts[uid]
        total.update(c)
        label = syntax_info(uid).label if uid in {s.uid for s in SYNTAXES} else uid
        lines.append(f"| {label} | {uid} | {c['exact']} | {c['lossy']} | {c['refused']} | {c['mismatch']} |")
    lines.append(f"| **total** | | **{total['exact']}** | **{total['lossy']}** | **{total['refused']}** | **{total['mismatch']}** |")
    return "\n".join(lines)
