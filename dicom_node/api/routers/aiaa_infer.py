"""Clara AIAA inference, served verbatim (issue 17): ``/v1/segmentation``, ``/v1/inference``,
``/v1/dextr3d`` and ``/v1/deepgrow``.

Documented at https://docs.nvidia.com/clara/clara-train-sdk/aiaa/server_apis.html (and the
3.x pages at docs.nvidia.com/clara/tlt-mi/...); request shapes as the reference clients of
NVIDIA/ai-assisted-annotation-client send them::

    POST /v1/segmentation?model=<name>&output=image|json|everything[&session_id=<id>]
         multipart: params={} ; image=@image.nii.gz
    POST /v1/dextr3d?model=<name>   params={"points": [[x, y, z], ...]}           (six or more extreme points)
    POST /v1/deepgrow?model=<name>  params={"foreground": [[x, y, z]], "background": []}
    POST /v1/inference?model=<name> params={...}                                   (any model, e.g. classification)

One implementation with ``POST /v1/models/{name}:predict``: the model comes from the node's
:class:`~dicom_node.registry.ModelRegistry` and runs on its shared predictor (the same
micro-batches as every other caller); the image becomes the DICOM path's volume
(:mod:`dicom_node.api.aiaa_images`). ``params`` other than the action's points are the model's
own parameters (``threshold`` ...), checked against its spec: an unknown one is a 400 naming it.
dextr3d and deepgrow need a model whose spec declares ``[guidance]`` for that action; the points
become its point-map channels (:mod:`dicom_node.annotation.guidance`).

The result JSON: ``model``, ``points`` (the mask's six extreme points ``[x, y, z]``, for a
DExtr3D follow-up, as AIAA's segmentation answers them), ``labels`` (per label its value in the
mask, voxels, volume, bbox and run lengths, :func:`dicom_node.api.predictions.summarise`'s
fields); a classification model answers its probabilities. The mask is a label map (label ``n``
of the spec = value ``n``, 0 background) on the input's grid.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from dicom_node.annotation.guidance import (
    MIN_EXTREME_POINTS,
    PointsError,
    box_mask,
    check_inside,
    extreme_points,
    guidance_maps,
    parse_points,
)
from dicom_node.api.aiaa_images import AiaaImage, Output, answer, load_session, load_upload, read_form
from dicom_node.api.auth import Principal, require
from dicom_node.api.deps import ConfigDep, ServicesDep
from dicom_node.api.errors import ApiError
from dicom_node.api.inputs import DecodedInput
from dicom_node.api.predictions import _masks, _segment, summarise
from dicom_node.api.routers.predict import get_predictor
from dicom_node.api.schemas import error_responses
from inference.errors import InferenceError, InputError, ParameterError
from inference.predictor import Prediction, Predictor
from inference.spec import ModelSpec

log = logging.getLogger(__name__)

router = APIRouter(tags=["clara-aiaa"])

Submitter = Annotated[Principal, Depends(require("submit"))]
ModelName = Annotated[str, Query(min_length=1, max_length=64, description="The model's name (GET /v1/models)")]
OutputQuery = Annotated[Output, Query(description="image: the NIfTI mask; json: the result; everything "
                                                  "(default): multipart/form-data with params and the mask")]
SessionQuery = Annotated[str | None, Query(max_length=128, description="Use the image of this session instead of an upload")]

#: DExtr3D keeps the mask within the extreme points' box grown by this margin (the reference client's pad).
DEXTR_PAD_MM = 20.0

_BODY = {"requestBody": {"required": False, "content": {"multipart/form-data": {"schema": {
    "type": "object", "properties": {
        "params": {"type": "string", "description": "JSON object: the action's points and the model's parameters"},
        "image": {"type": "string", "format": "binary", "description": "NIfTI (.nii, .nii.gz) or DICOM Part 10"},
    }}}}}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The mask (output=image), the result (json) or both (everything, multipart/form-data)",
          "content": {"application/octet-stream": {}, "application/json": {}, "multipart/form-data": {}}},
    440: {"description": "The session is unknown, expired or not ready"},
    **error_responses(400, 401, 403, 404, 413, 415, 422, 503),
}


def _check_action(spec: ModelSpec, action: str) -> None:
    guided = spec.guidance is not None
    if action in ("dextr3d", "deepgrow"):
        if spec.guidance is None or action not in spec.guidance.actions:
            raise ApiError(400, "wrong_model_type", f"model {spec.name!r} takes no {action} points "
                           f"(its model.toml declares no [guidance] with actions = [\"{action}\"])")
    elif guided:
        raise ApiError(400, "wrong_model_type", f"model {spec.name!r} is an annotation model: call "
                       f"/v1/{' or /v1/'.join(spec.guidance.actions if spec.guidance else [])} with points")
    elif action == "segmentation" and spec.task != "segmentation":
        raise ApiError(400, "wrong_model_type", f"model {spec.name!r} is a {spec.task} model; use /v1/inference")


def _points(action: str, params: dict[str, Any], image: AiaaImage) -> dict[str, np.ndarray]:
    """Take the action's points out of ``params`` (what is left are model parameters), checked and on the grid."""
    try:
        if action == "dextr3d":
            found = {"foreground": parse_points(params.pop("points", None), "points")}
            if len(found["foreground"]) < MIN_EXTREME_POINTS:
                raise PointsError(f"points must hold at least {MIN_EXTREME_POINTS} extreme points (two per axis), "
                                  f"got {len(found['foreground'])}")
        else:
            found = {name: parse_points(params.pop(name, None), name) for name in ("foreground", "background")}
            current = params.pop("current_point", None)  # the newest click, also in its list: checked, not added twice
            if current:
                check_inside(parse_points([current], "current_point"), image.shape_xyz, "current_point")
            if not sum(len(v) for v in found.values()):
                raise PointsError("foreground and background hold no point; click at least once")
        for name, pts in found.items():
            check_inside(pts, image.shape_xyz, "points" if action == "dextr3d" else name)
    except PointsError as exc:
        raise ApiError(400, "invalid_points", str(exc)) from exc
    return {name: image.points_to_grid(pts) for name, pts in found.items()}


def _label_map(spec: ModelSpec, prediction: Prediction, shape: tuple[int, int, int]) -> np.ndarray:
    """The uint8 ``(s, r, c)`` label map: label ``n`` (1-based, spec order) where its mask is set."""
    out = np.zeros(shape, dtype=np.uint8)
    masks = _masks(spec, prediction.result)
    rows = prediction.slice_indices if spec.preprocessing.mode == "2d" else list(range(shape[0]))
    for n, label in enumerate(spec.labels, start=1):
        out[rows] = np.where(masks[label.channel], np.uint8(n), out[rows])
    return out


def _run(predictor: Predictor, image: AiaaImage, params: dict[str, Any], points: dict[str, np.ndarray] | None,
         action: str) -> tuple[dict[str, Any], bytes | None]:
    """Predict and build the result JSON and the NIfTI mask (None for a model without masks)."""
    spec = predictor.spec
    guidance = None
    if points is not None and spec.guidance is not None:
        guidance = guidance_maps(image.array.shape, spec.guidance.channels, points, spec.guidance.sigma)
    try:
        prediction = predictor.predict(image.array, params, guidance)
    except ParameterError as exc:
        raise ApiError(400, "invalid_params", f"params: {exc}") from exc
    except InputError as exc:
        raise ApiError(422, "model_input", f"the image does not fit model {spec.name!r}: {exc}") from exc
    except InferenceError as exc:
        log.warning("AIAA %s failed model=%s error=%s", action, spec.name, type(exc).__name__)
        raise ApiError(500, "inference_failed", f"inference failed: {exc}") from exc
    decoded = DecodedInput(image.array, image.spacing, image.kind)
    if spec.task != "segmentation":
        return {"model": spec.name, **summarise(spec, prediction, decoded)}, None
    labels = _label_map(spec, prediction, image.array.shape)
    if action == "dextr3d":
        pad = [DEXTR_PAD_MM / max(s, 1e-6) for s in image.spacing]
        labels[~box_mask(labels.shape, points["foreground"] if points else np.zeros((1, 3)), pad)] = 0
    entries = [{"value": n, "channel": lab.channel, "name": lab.name, **_segment(labels == n, image.spacing)}
               for n, lab in enumerate(spec.labels, start=1)]
    result = {"model": spec.name, "points": extreme_points(image.to_xyz(labels > 0)), "labels": entries}
    return result, image.mask_file(labels)


async def _action(action: str, request: Request, services: ServicesDep, config: ConfigDep, model: str,
                  output: Output, session_id: str | None) -> Response:
    predictor = await run_in_threadpool(get_predictor, services.models, model)
    _check_action(predictor.spec, action)
    params, data = await read_form(request, config.api.max_multipart_parts)
    if session_id:
        image = await run_in_threadpool(load_session, services.sessions, session_id, predictor.spec, config)
    elif data:
        image = await run_in_threadpool(load_upload, data, predictor.spec, config, services.storage.spool.tmp)
    else:
        raise ApiError(400, "image_required", "send the image as the multipart file field image "
                       "(NIfTI or DICOM), or name a session with ?session_id=")
    points = _points(action, params, image) if action in ("dextr3d", "deepgrow") else None
    result, mask = await run_in_threadpool(_run, predictor, image, params, points, action)
    return answer(output, result, mask)


@router.post("/v1/segmentation", openapi_extra=_BODY, responses=_RESPONSES,
             summary="Clara AIAA: run a segmentation model on a NIfTI or DICOM image")
async def segmentation(request: Request, services: ServicesDep, config: ConfigDep, _caller: Submitter,
                       model: ModelName, output: OutputQuery = "everything", session_id: SessionQuery = None) -> Response:
    """Segment the image with ``model``; the mask is a NIfTI label map on the input's grid."""
    return await _action("segmentation", request, services, config, model, output, session_id)


@router.post("/v1/inference", openapi_extra=_BODY, responses=_RESPONSES,
             summary="Clara AIAA: run any model (segmentation, classification) on an image")
async def inference(request: Request, services: ServicesDep, config: ConfigDep, _caller: Submitter,
                    model: ModelName, output: OutputQuery = "everything", session_id: SessionQuery = None) -> Response:
    """Generic inference: a segmentation model answers as /v1/segmentation, others answer JSON."""
    return await _action("inference", request, services, config, model, output, session_id)


@router.post("/v1/dextr3d", openapi_extra=_BODY, responses=_RESPONSES,
             summary="Clara AIAA: annotate from six or more extreme points")
async def dextr3d(request: Request, services: ServicesDep, config: ConfigDep, _caller: Submitter,
                  model: ModelName, output: OutputQuery = "everything", session_id: SessionQuery = None) -> Response:
    """DExtr3D: ``params={"points": [[x, y, z], ...]}`` on a ``[guidance]`` model."""
    return await _action("dextr3d", request, services, config, model, output, session_id)


@router.post("/v1/deepgrow", openapi_extra=_BODY, responses=_RESPONSES,
             summary="Clara AIAA: annotate from foreground and background clicks")
async def deepgrow(request: Request, services: ServicesDep, config: ConfigDep, _caller: Submitter,
                   model: ModelName, output: OutputQuery = "everything", session_id: SessionQuery = None) -> Response:
    """DeepGrow: ``params={"foreground": [[x, y, z]], "background": [...]}`` on a ``[guidance]`` model."""
    return await _action("deepgrow", request, services, config, model, output, session_id)
