"""A synthetic CT series decoded and run through real models, shared by the writer tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from dicom_node.pixels.volume import Volume, load_series
from dicom_node.synthetic import SeriesSpec, write_ct_series
from dicom_node.writers.results import read_headers
from inference.backends import BackendOptions
from inference.predictor import Prediction, open_predictor
from inference.store import ModelStore

ROOT = Path(__file__).resolve().parents[1]
STORE = ModelStore([ROOT / "engines", ROOT / "tests" / "models"])


def sha256_of(name: str) -> str:
    """The ONNX digest of model ``name`` (the writers require one for provenance)."""
    return STORE.get(name).onnx_sha256()


@dataclass
class Series:
    """Decoded volume, source headers, and one prediction per model."""

    volume: Volume
    headers: dict[str, Dataset]
    predictions: dict[str, Prediction]


def predicted_series(folder: Path, seed: str, models: tuple[str, ...]) -> Series:
    """Write a 12x64x64 CT series into ``folder`` and run ``models`` on it with ONNX Runtime."""
    files = write_ct_series(folder, SeriesSpec(slices=12, rows=64, columns=64, seed=seed))
    volume = load_series(files, workers=0, gpu="cpu")
    predictions = {}
    for name in models:
        predictor = open_predictor(STORE.get(name), BackendOptions(onnxruntime_threads=1), ["onnxruntime"])
        try:
            predictions[name] = predictor.predict(volume.array)
        finally:
            predictor.close()
    return Series(volume, read_headers(files), predictions)
