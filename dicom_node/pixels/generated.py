"""Generated files for transfer syntaxes the public corpora lack.

pydicom-data 1.0 has no HTJ2K (PS3.5 A.4.11) and no JPEG Process 14 with a
predictor other than 1 (A.4.3). These are made here from real corpus images
with independent encoders from ``imagecodecs`` (OpenJPH for HTJ2K,
libjpeg-turbo for lossless and 12-bit JPEG), so the conformance table covers
every syntax the node accepts. ``imagecodecs`` has no progression-order switch
for HTJ2K, so the RPCL-labelled file carries an HTJ2K lossless stream: it tests
that the syntax is routed to a working decoder, not the RPCL ordering itself.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID

from dicom_node.errors import UnsupportedTransferSyntaxError
from dicom_node.pixels.decode import read_dataset
from dicom_node.pixels.reference import raw_reference


def _imagecodecs() -> object:
    try:
        return importlib.import_module("imagecodecs")
    except ImportError as exc:
        raise UnsupportedTransferSyntaxError("generating HTJ2K/JPEG test files needs imagecodecs (pip install imagecodecs)") from exc


def _encoders() -> dict[str, tuple[str, Callable[[np.ndarray, Dataset], bytes]]]:
    ic = _imagecodecs()

    def unsigned(a: np.ndarray) -> np.ndarray:
        return a.view(a.dtype.str.replace("i", "u")) if a.dtype.kind == "i" else a

    def bits(ds: Dataset) -> int:
        return int(ds.BitsStored)

    return {
        "htj2k_lossless": ("1.2.840.10008.1.2.4.201", lambda a, ds: ic.htj2k_encode(a, reversible=True)),  # type: ignore[attr-defined]
        "htj2k_rpcl": ("1.2.840.10008.1.2.4.202", lambda a, ds: ic.htj2k_encode(a, reversible=True)),  # type: ignore[attr-defined]
        "htj2k_lossy": ("1.2.840.10008.1.2.4.203", lambda a, ds: ic.htj2k_encode(a, level=0.05, reversible=False)),  # type: ignore[attr-defined]
        "jpeg_p14": (
            "1.2.840.10008.1.2.4.57",
            lambda a, ds: ic.jpeg8_encode(unsigned(a), lossless=True, predictor=6, bitspersample=bits(ds)),  # type: ignore[attr-defined]
        ),
    }


#: Corpus images used as sources: 16-bit signed MR, 12-bit unsigned multi-frame MR, 16-bit signed CT.
SOURCES = ("MR_small.dcm", "emri_small.dcm", "CT_small.dcm")


def make_dataset(source: Dataset, uid: str, encode: Callable[[np.ndarray, Dataset], bytes], original: np.ndarray) -> Dataset:
    """Return a copy of ``source`` with its frames re-encoded under ``uid`` (PS3.5 A.4)."""
    frames = original if int(source.get("NumberOfFrames", 1) or 1) > 1 else original[None]
    ds = copy.deepcopy(source)
    ds.PixelData = encapsulate([encode(np.ascontiguousarray(f), source) for f in frames])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = UID(uid)
    ds.set_original_encoding(False, True)
    if uid.endswith(".203"):
        ds.LossyImageCompression = "01"
    return ds


def generate(out_dir: Path, corpus: dict[str, Path]) -> dict[Path, Path]:
    """Write generated files into ``out_dir``; return ``{generated file: source file}``.

    Raises
    ------
    UnsupportedTransferSyntaxError
        When ``imagecodecs`` is not installed.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    made: dict[Path, Path] = {}
    for kind, (uid, encode) in _encoders().items():
        for name in SOURCES:
            if name not in corpus:
                continue
            src = read_dataset(corpus[name])
            ds = make_dataset(src, uid, encode, raw_reference(src))
            path = out_dir / f"{Path(name).stem}_{kind}.dcm"
            ds.save_as(path, enforce_file_format=True)
            made[path] = corpus[name]
    return made
