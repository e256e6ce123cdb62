"""``dicom-node infer``: run one model on one series offline.

decode (``dicom_node.pixels.volume.load_series``) -> preprocess -> infer ->
postprocess, then write into ``--out``:

- ``<output tensor>.npy``: each raw model output, stacked in slice order;
- ``result.npy``: the decision (uint8 masks ``(slices, labels, rows, cols)``
  for segmentation, class indices for classification);
- ``summary.json``: model, backend, source UIDs, shapes, parameters, per-label
  voxel counts and volumes, timings and batch statistics;
- ``seg.dcm`` (segmentation models): the DICOM Segmentation (PS3.3 A.51);
- ``sr.dcm`` (segmentation and classification models): the TID 1500 Comprehensive
  3D SR. Both use the ``[results]`` config section (UID root, series numbers) and
  are read back and checked before they are written (``dicom_node.writers``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.commands.models import backend_options, open_store
from dicom_node.commands.output import echo
from dicom_node.config import NodeConfig
from dicom_node.errors import WriterError
from dicom_node.progress import ProgressBar, bar
from inference.errors import InferenceError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``infer`` subcommand."""
    p = sub.add_parser("infer", help="run a model on one series offline and write .npy outputs and a JSON summary")
    p.add_argument("--model", required=True, help="model name (see `dicom-node models list`)")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="DICOM files of one series, or folders holding them")
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--backend", choices=["tensorrt", "onnxruntime", "triton"], help="force a backend")
    p.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="override a model parameter (VALUE is JSON), repeatable"
    )
    p.set_defaults(func=run)


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return out


def _params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {pair!r}: expected KEY=VALUE")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def run(args: argparse.Namespace, config: NodeConfig) -> int:
    """Decode, predict, write outputs; inference errors print one line and exit 1.

    On a terminal a progress bar on stderr names the current step; piped, stderr
    carries only the error lines.
    """
    try:
        files, params = _files(args.paths), _params(args.param)
    except (FileNotFoundError, ValueError) as exc:
        echo(f"dicom-node infer: {exc}", file=sys.stderr)
        return 2
    # The decoder and predictor report no per-slice progress: the bar counts the
    # run's steps, so a long decode or inference still shows what is happening.
    with bar(len(_STEPS), desc=f"decode {len(files)} files", unit="step") as shown:
        return _run(args, config, files, params, shown)


#: The steps of one run, in order, as the progress bar names them.
_STEPS = ("decode", "infer", "write SEG/SR", "write outputs")


def _run(args: argparse.Namespace, config: NodeConfig, files: list[Path], params: dict[str, Any],
         shown: ProgressBar) -> int:
    """The body of :func:`run`, advancing ``shown`` after each of :data:`_STEPS`."""
    from dicom_node.pixels.volume import load_series
    from inference.predictor import open_predictor

    try:
        entry = open_store(config).get(args.model)
        t0 = time.perf_counter()
        workers = config.pixels.decode_workers or None
        volume = load_series(files, workers=workers, gpu=config.pixels.gpu_decode)
        decode_s = time.perf_counter() - t0
        _step(shown, 1)
        predictor = open_predictor(
            entry,
            backend_options(config),
            list(config.inference.backends),
            backend=args.backend,
            max_delay_s=config.inference.max_batch_delay_ms / 1000.0,
        )
        try:
            prediction = predictor.predict(volume.array, params)
            stats = predictor.stats()
            backend = predictor.backend.description
        finally:
            predictor.close()
    except InferenceError as exc:
        echo(f"dicom-node infer: {exc}", file=sys.stderr)
        return 1
    _step(shown, 2)
    try:
        objects = _result_objects(files, volume, entry, prediction, config)
    except WriterError as exc:
        echo(f"dicom-node infer: {exc}", file=sys.stderr)
        return 1
    _step(shown, 3)
    summary = _write(args.out, entry.spec, volume, prediction, backend, stats, decode_s)
    summary["outputs"].update(_write_objects(args.out, objects))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    shown.update(1)
    echo(json.dumps(summary["outputs"]))
    return 0


def _step(shown: ProgressBar, done: int) -> None:
    """Mark step ``done`` finished and name the next one."""
    shown.update(1)
    shown.set_description_str(_STEPS[done])


def _result_objects(files: list[Path], volume: Any, entry: Any, prediction: Any, config: NodeConfig) -> Any:
    """Build the checked SEG/SR of this run (``dicom_node.writers``), with ``[results]`` settings when configured."""
    from dicom_node.writers import WriterOptions, build_results, read_headers

    options = WriterOptions.from_config(getattr(config, "results", None))
    return build_results(read_headers(files), volume, entry.spec, prediction, options, model_sha256=entry.onnx_sha256())


def _write_objects(out: Path, objects: Any) -> dict[str, str]:
    written: dict[str, str] = {}
    for key, data in (("seg", objects.seg), ("sr", objects.sr)):
        if data is not None:
            (out / f"{key}.dcm").write_bytes(data)
            written[key] = f"{key}.dcm"
    return written


def _write(out: Path, spec: Any, volume: Any, prediction: Any, backend: str, stats: Any, decode_s: float) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for name, arr in prediction.raw.items():
        np.save(out / f"{name}.npy", arr)
        files[name] = f"{name}.npy"
    np.save(out / "result.npy", prediction.result)
    files["result"] = "result.npy"
    summary = {
        "model": {"name": spec.name, "version": spec.version, "task": spec.task},
        "backend": backend,
        "series": {
            "study_instance_uid": volume.study_instance_uid,
            "series_instance_uid": volume.series_instance_uid,
            "frame_of_reference_uid": volume.frame_of_reference_uid,
            "modality": volume.modality,
            "shape": list(volume.array.shape),
            "spacing_mm": list(volume.spacing),
            "sop_instance_uids": [volume.sop_instance_uids[i] for i in prediction.slice_indices],
        },
        "slice_indices": prediction.slice_indices,
        "parameters": prediction.parameters,
        "result_shape": list(prediction.result.shape),
        "labels": _label_summary(spec, prediction.result, volume.spacing),
        "timings_s": {"decode": round(decode_s, 4), **{k: round(v, 4) for k, v in prediction.timings.items()}},
        "batches": {"count": stats.batches, "items": stats.items, "fill_ratio": round(stats.fill_ratio, 3)},
        "outputs": files,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def _label_summary(spec: Any, result: np.ndarray, spacing: tuple[float, float, float]) -> list[dict[str, Any]]:
    labels = []
    voxel_ml = float(np.prod(spacing)) / 1000.0
    for label in spec.labels:
        entry: dict[str, Any] = {"channel": label.channel, "name": label.name, "type": label.type.model_dump()}
        if spec.task == "segmentation" and spec.postprocessing.decision == "threshold" and spec.preprocessing.mode == "2d":
            voxels = int(result[:, label.channel].sum())
            entry.update(voxels=voxels, volume_ml=round(voxels * voxel_ml, 3))
        elif spec.postprocessing.decision == "argmax":
            entry["count"] = int((result == label.channel).sum())
        labels.append(entry)
    return labels
