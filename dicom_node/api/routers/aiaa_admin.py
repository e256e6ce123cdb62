"""Clara AIAA model administration, verbatim: ``GET|PUT|PATCH|DELETE /admin/model/{model}``.

The AIAA server's documented admin calls (Clara Train 4.1 "AIAA Server APIs",
https://docs.nvidia.com/clara/clara-train-sdk/aiaa/server_apis.html, and the TLT-MI
edition with the PATCH example, https://docs.nvidia.com/clara/tlt-mi/aiaa/server_apis.html)::

    curl -X PUT    ".../admin/model/NAME" -F "config=@config_aiaa.json;type=application/json" -F "data=@model.onnx"
    curl -X PATCH  ".../admin/model/NAME" -H "Content-Type: application/json" -d @config_aiaa.json
    curl -X GET    ".../admin/model/NAME" -H "accept: application/json"
    curl -X DELETE ".../admin/model/NAME"

They are the node's own ``/admin/models/{name}`` (:mod:`dicom_node.api.routers.models`) with
AIAA's body: the config is translated into a model spec (:mod:`dicom_node.aiaa.config`,
a 400 naming the field that has no counterpart), then the same model-folder code writes it
(:mod:`dicom_node.api.modelfiles`: validated, written atomically) and the registry drops the
cached predictor. Both path sets need the ``admin`` scope and an ``[api] admin_hosts`` address.
``data`` is an ONNX file; a TensorRT plan alone is refused (the model store keeps the ONNX
file a plan is built from), and so are TorchScript and TensorFlow files, by name.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from dicom_node.aiaa import config as aiaa
from dicom_node.api import modelfiles
from dicom_node.api.auth import Principal, require
from dicom_node.api.deps import ModelsDep
from dicom_node.api.errors import ApiError
from dicom_node.api.routers.models import name_param
from dicom_node.api.schemas import error_responses
from dicom_node.errors import ModelError
from dicom_node.registry import ModelRegistry
from inference.spec import ModelSpec
from inference.store import ModelEntry

log = logging.getLogger(__name__)

router = APIRouter(tags=["Clara AIAA"])

Admin = Annotated[Principal, Depends(require("admin"))]
ONNX_FILE = "model.onnx"

_PUT_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["config", "data"],
    "properties": {
        "config": {"type": "string", "contentMediaType": "application/json", "minLength": 2,
                   "maxLength": aiaa.MAX_CONFIG_BYTES,
                   "description": "The AIAA model config (config_aiaa.json)"},
        "data": {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream",
                 "description": "The model: an ONNX file"},
    }}, "encoding": {"config": {"contentType": "application/json"},
                     "data": {"contentType": "application/octet-stream"}}}}}}
_PATCH_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "description": "The AIAA model config (config_aiaa.json)"}}}}}


def _invalid(exc: aiaa.AiaaConfigError) -> ApiError:
    return ApiError(400, "invalid_config", str(exc))


def _entry(models: ModelRegistry, name: str) -> ModelEntry:
    try:
        return models.get(name)
    except ModelError as exc:
        raise ApiError(404, "not_found", f"no model named {name!r}") from exc


def _translate(name: str, config: dict[str, Any]) -> tuple[bytes, ModelSpec]:
    """The ``model.toml`` text and validated spec of an AIAA config (400 naming the field)."""
    try:
        data = aiaa.to_spec(name, config, ONNX_FILE)
    except aiaa.AiaaConfigError as exc:
        raise _invalid(exc) from exc
    spec = modelfiles.validate_spec(data, name)
    return modelfiles.dump_toml(data).encode("utf-8"), spec


def _check_model_file(upload: UploadFile) -> None:
    """Refuse what is not an ONNX file, naming what it looks like (the upload's first bytes and name)."""
    head = upload.file.read(16)
    upload.file.seek(0)
    name = (upload.filename or "").lower()
    if not head:
        raise ApiError(400, "invalid_upload", "data: the model file is empty")
    if name.endswith((".plan", ".engine", ".trt")):
        raise ApiError(400, "invalid_upload", "data: a TensorRT plan alone cannot be loaded here: the model store "
                       "keeps the ONNX file a plan is built from; send the ONNX file (plans are built with "
                       "'dicom-node models build')")
    if head.startswith(b"PK\x03\x04") or name.endswith((".ts", ".pt", ".pth")):
        raise ApiError(400, "invalid_upload", "data: a TorchScript/PyTorch file is not run by this node; "
                       "export the model to ONNX")
    if head[0] != 0x08:  # ONNX ModelProto starts with field 1, ir_version (varint): tag byte 0x08
        raise ApiError(400, "invalid_upload", "data: not an ONNX file (a TensorFlow graph or another format?); "
                       "export the model to ONNX")


async def _form(request: Request) -> tuple[dict[str, Any], UploadFile]:
    if request.headers.get("content-length") is None:
        raise ApiError(411, "length_required", "uploads need a Content-Length within the body limit")
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data with config and data")
    form = await request.form(max_files=2, max_fields=2)
    part = form.get("config")
    raw = await part.read(aiaa.MAX_CONFIG_BYTES + 1) if isinstance(part, UploadFile) else (part or "").encode()
    if not raw:
        raise ApiError(400, "invalid_upload", "config: missing (the AIAA model config JSON)")
    try:
        config = aiaa.parse(raw)
    except aiaa.AiaaConfigError as exc:
        raise _invalid(exc) from exc
    data = form.get("data")
    if not isinstance(data, UploadFile):
        raise ApiError(400, "invalid_upload", "data: missing (the model file)")
    _check_model_file(data)
    return config, data


@router.put("/admin/model/{model}", responses=error_responses(400, 401, 403, 411, 413, 415),
            summary="Clara AIAA: load a model (config + data)", openapi_extra=_PUT_BODY)
async def aiaa_put_model(request: Request, models: ModelsDep, model: Annotated[str, name_param()],
                         _admin: Admin) -> dict[str, Any]:
    """Translate the AIAA config into a model spec, write the folder atomically, answer the model as listed."""
    modelfiles.check_name(model)
    config, data = await _form(request)
    toml, spec = _translate(model, config)
    files = [(ONNX_FILE, data.file), (aiaa.CONFIG_FILE, io.BytesIO(json.dumps(config, indent=2).encode()))]
    await run_in_threadpool(modelfiles.install, models.models_dir, model, toml, files)
    models.forget(model)
    log.info("AIAA model loaded model=%s type=%s", model, config.get("type"))
    return aiaa.list_entry(spec, config)


async def _json_body(request: Request) -> dict[str, Any]:
    # curl -d sends application/x-www-form-urlencoded: the body is read as JSON whatever the type says.
    try:
        return aiaa.parse(await request.body())
    except aiaa.AiaaConfigError as exc:
        raise _invalid(exc) from exc


@router.patch("/admin/model/{model}", responses=error_responses(400, 401, 403, 404),
              summary="Clara AIAA: replace a model's config (the model file stays)", openapi_extra=_PATCH_BODY)
async def aiaa_patch_model(request: Request, models: ModelsDep, model: Annotated[str, name_param()],
                           _admin: Admin) -> dict[str, Any]:
    """Translate the new config, keep the model file, persist both, reload."""
    entry = _entry(models, model)
    config = await _json_body(request)
    toml, spec = _translate(model, config)
    if not (entry.directory / entry.spec.onnx).is_file():
        raise ApiError(400, "invalid_spec", f"onnx: file {entry.spec.onnx!r} is not in the model folder")
    if entry.spec.onnx != ONNX_FILE:  # a model.toml model names its own file: keep pointing at it
        data = modelfiles.parse_toml(toml)
        data["onnx"] = entry.spec.onnx
        spec = modelfiles.validate_spec(data, model)
        toml = modelfiles.dump_toml(data).encode("utf-8")
    await run_in_threadpool(modelfiles.write_file, entry.directory, aiaa.CONFIG_FILE,
                            json.dumps(config, indent=2).encode())
    await run_in_threadpool(modelfiles.write_spec, entry.directory, toml.decode("utf-8"))
    models.forget(model)
    log.info("AIAA model config replaced model=%s", model)
    return aiaa.list_entry(spec, config)


@router.get("/admin/model/{model}", responses=error_responses(401, 403, 404),
            summary="Clara AIAA: the model's config")
def aiaa_get_model(models: ModelsDep, model: Annotated[str, name_param()], _admin: Admin) -> dict[str, Any]:
    """The AIAA config the model was loaded with; for a ``model.toml`` model, one drawn from its spec."""
    entry = _entry(models, model)
    return aiaa.stored(entry.directory) or aiaa.from_spec(entry.spec)


@router.delete("/admin/model/{model}", responses=error_responses(401, 403, 404),
               summary="Clara AIAA: remove a model")
def aiaa_delete_model(models: ModelsDep, model: Annotated[str, name_param()], _admin: Admin) -> dict[str, Any]:
    """Remove ``<models_dir>/<model>/`` as ``DELETE /admin/models/{name}`` does."""
    modelfiles.check_name(model)
    if not modelfiles.remove(models.models_dir, model):
        raise ApiError(404, "not_found", f"no model named {model!r}")
    models.forget(model)
    return {"model": model, "status": "deleted"}
