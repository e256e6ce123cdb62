"""One prediction as JSON: shared by ``/v1/models/{name}:predict`` and invocations (the webhook body).

Output per task (see :func:`summarise`):

- segmentation: per label ``voxels``, ``area_mm2`` (one slice) or ``volume_ml``
  (when the input has a pixel spacing), ``bbox`` ``[slice0, row0, col0, slice1,
  row1, col1]`` (end exclusive, null when empty) and ``rle``: run lengths over the
  ``(slices, rows, cols)`` mask in C (row-major) order, starting with a background run;
- classification: per label probability (``probabilities``) and the top ``label``;
- embedding: one vector per field of the model's ``[embedding]`` table (``embedding`` by default,
  Derm Foundation's shape; ``general_img_emb`` and ``contrastive_img_emb`` for CXR Foundation's),
  and for a ``prompt_query`` the text tower's field (``contrastive_txt_emb``, :func:`run_text`).

A module of its own (not the predict router) so the invocation runner
(:mod:`dicom_node.api.webhooks`) uses it without importing a router.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from dicom_node.api.inputs import DecodedInput
from inference.errors import InferenceError, InputError, ParameterError
from inference.predictor import Prediction, Predictor
from inference.spec import ModelSpec

log = logging.getLogger(__name__)

#: Run-length encodings longer than this are left out of answers (a noisy mask would bloat them).
MAX_RLE_RUNS = 200_000


def instance_error(code: str, description: str) -> dict[str, Any]:
    """The per-instance error entry."""
    return {"error": {"code": code, "description": description}}


def _masks(spec: ModelSpec, result: np.ndarray) -> dict[int, np.ndarray]:
    """Label channel -> boolean ``(slices, rows, cols)`` mask, for 2D and 3D, threshold and argmax."""
    out: dict[int, np.ndarray] = {}
    for label in spec.labels:
        if spec.postprocessing.decision == "argmax":
            mask = result == label.channel
            mask = mask[0] if mask.ndim == 4 else mask
        else:
            mask = result[0, label.channel] if result.ndim == 5 else result[:, label.channel]
        out[label.channel] = np.asarray(mask, dtype=bool).reshape((-1,) + mask.shape[-2:])
    return out


def run_lengths(mask: np.ndarray) -> list[int]:
    """Run lengths of a boolean mask in C order, starting with a (possibly empty) background run."""
    flat = mask.ravel()
    if flat.size == 0:
        return []
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], edges, [flat.size])))
    return ([0] if flat[0] else []) + runs.tolist()


def _segment(mask: np.ndarray, spacing: tuple[float, float, float] | None) -> dict[str, Any]:
    voxels = int(mask.sum())
    entry: dict[str, Any] = {"voxels": voxels}
    if spacing is not None:
        if mask.shape[0] == 1:
            entry["area_mm2"] = round(voxels * spacing[1] * spacing[2], 3)
        entry["volume_ml"] = round(voxels * float(np.prod(spacing)) / 1000.0, 4)
    if voxels:
        idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        entry["bbox"] = [int(i[0]) for i in idx] + [int(i[-1]) + 1 for i in idx]
    else:
        entry["bbox"] = None
    runs = run_lengths(mask)
    entry["rle"] = {"shape": list(mask.shape), "order": "C", "counts": runs} if len(runs) <= MAX_RLE_RUNS else None
    return entry


def _per_slice(values: np.ndarray, make: Any) -> dict[str, Any]:
    items = [make(v) for v in values]
    return items[0] if len(items) == 1 else {"slices": items}


def summarise(spec: ModelSpec, prediction: Prediction, decoded: DecodedInput) -> dict[str, Any]:
    """The JSON prediction of one instance (see the module docstring)."""
    if spec.task == "segmentation":
        masks = _masks(spec, prediction.result)
        return {"labels": [{"channel": lab.channel, "name": lab.name, **_segment(masks[lab.channel], decoded.spacing)}
                           for lab in spec.labels],
                "slice_indices": prediction.slice_indices}
    if spec.task == "classification":
        probs = np.asarray(prediction.probabilities).reshape(len(prediction.slice_indices), -1)
        names = {lab.channel: lab.name for lab in spec.labels}

        def one(row: np.ndarray) -> dict[str, Any]:
            ranked = {names.get(c, str(c)): float(p) for c, p in enumerate(row)}
            return {"probabilities": ranked, "label": names.get(int(row.argmax()), str(int(row.argmax())))}

        return _per_slice(probs, one)
    count = len(prediction.slice_indices)
    vectors = {name: np.asarray(prediction.raw[tensor], dtype=np.float64).reshape(count, -1)
               for name, tensor in spec.image_fields.items()}
    return _per_slice(np.arange(count), lambda i: {name: v[i].tolist() for name, v in vectors.items()})


def run_decoded(predictor: Predictor, decoded: DecodedInput, params: dict[str, Any]) -> dict[str, Any]:
    """Predict on a decoded input and summarise, mapping model errors to an instance error."""
    try:
        prediction = predictor.predict(decoded.array, params)
    except (InputError, ParameterError) as exc:
        return instance_error("model_input", f"the input does not fit model {predictor.spec.name!r}: {exc}")
    except InferenceError as exc:
        log.warning("prediction failed model=%s error=%s", predictor.spec.name, type(exc).__name__)
        return instance_error("inference_failed", f"inference failed: {exc}")
    return summarise(predictor.spec, prediction, decoded)




def _answer(predictor: Predictor, outcome: Prediction | InferenceError, decoded: DecodedInput) -> dict[str, Any]:
    if isinstance(outcome, InputError | ParameterError):
        return instance_error("model_input", f"the input does not fit model {predictor.spec.name!r}: {outcome}")
    if isinstance(outcome, InferenceError):
        log.warning("prediction failed model=%s error=%s", predictor.spec.name, type(outcome).__name__)
        return instance_error("inference_failed", f"inference failed: {outcome}")
    return summarise(predictor.spec, outcome, decoded)


def run_decoded_many(predictor: Predictor, decoded: list[DecodedInput], params: dict[str, Any]) -> list[dict[str, Any]]:
    """As :func:`run_decoded` for a request's inputs together, so their slices fill the same batches (in order)."""
    outcomes = predictor.predict_many([d.array for d in decoded], params)
    return [_answer(predictor, o, d) for o, d in zip(outcomes, decoded, strict=True)]


def _text_answer(predictor: Predictor, outcome: dict[str, np.ndarray] | InferenceError) -> dict[str, Any]:
    if isinstance(outcome, InputError):
        return instance_error("model_input", f"prompt_query: {outcome}")
    if isinstance(outcome, InferenceError):
        log.warning("text embedding failed model=%s error=%s", predictor.spec.name, type(outcome).__name__)
        return instance_error("inference_failed", f"inference failed: {outcome}")
    return {name: np.asarray(vector, dtype=np.float64).tolist() for name, vector in outcome.items()}


def run_texts(predictor: Predictor, prompts: list[str]) -> list[dict[str, Any]]:
    """The text tower's answer per ``prompt_query``, in order, all in one submission; a bad one is its own error."""
    return [_text_answer(predictor, o) for o in predictor.embed_texts_each(prompts)] if prompts else []


def run_text(predictor: Predictor, prompt: str) -> dict[str, Any]:
    """The text tower's answer to one ``prompt_query`` (``{"contrastive_txt_emb": [...]}``), or an instance error."""
    return run_texts(predictor, [prompt])[0]
