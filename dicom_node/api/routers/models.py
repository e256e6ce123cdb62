"""Models (Clara AIAA style): list and describe the model store; admin upload, patch and delete.

``GET /v1/models`` lists the models of ``[inference] models_dir`` as Clara AIAA's JSON
list with filters (``task``, ``label``, ``name``, and Clara AIAA's ``type`` and ``model``;
any other query parameter is refused with 400 rather than ignored),
``GET /v1/models/{name}`` shows one spec with the backend that would run it here
and why each other backend cannot. The admin operations (scope ``admin``, source
address in ``[api] admin_hosts``) change the store on disk; the job pipeline's
cached predictor of the model is dropped so the next job loads the new files.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import FormData, UploadFile

from dicom_node.aiaa import config as aiaa
from dicom_node.api import modelfiles
from dicom_node.api.auth import Principal, require
from dicom_node.api.deps import ModelsDep
from dicom_node.api.errors import ApiError
from dicom_node.api.schemas import error_responses
from dicom_node.errors import ModelError
from dicom_node.registry import ModelRegistry
from inference.spec import ModelSpec
from inference.store import ModelEntry

log = logging.getLogger(__name__)

router = APIRouter(tags=["models"])


class ModelNameConvertor(Convertor[str]):
    """Matches model names only, so ``GET /v1/models/x:predict`` reaches the predict route (405), not this one."""

    regex = modelfiles.NAME_RE.pattern.strip("^$")

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("modelname", ModelNameConvertor())

def name_param() -> Any:
    """The model name path parameter (a fresh FieldInfo per endpoint)."""
    return PathParam(min_length=1, max_length=64, pattern=modelfiles.NAME_RE.pattern, description="Model name")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,122}\.onnx$")  # the ONNX file a spec names
_SPEC_MAX = 1024 * 1024


class ModelSummary(BaseModel):
    """One model of the store."""

    name: str
    version: str
    task: str
    description: str
    labels: list[str]
    backend: str | None = Field(description="Backend that would run the model here; null when none can")
    state: str = Field(description="'ready' when a backend can run it, else 'unavailable'")


class ModelDetail(ModelSummary):
    """``GET /v1/models/{name}``: the spec and where it would run."""

    backend_detail: str
    backends_unavailable: dict[str, str] = Field(description="Backend -> why it cannot run the model here")
    onnx_sha256: str
    spec: dict[str, Any]


def _summary(models: ModelRegistry, spec: ModelSpec) -> dict[str, Any]:
    selection = models.select(spec)
    return {
        "name": spec.name, "version": spec.version, "task": spec.task, "description": spec.description,
        "labels": [lab.name for lab in spec.labels], "backend": selection.name,
        "state": "ready" if selection.name else "unavailable",
    }


def _entry(models: ModelRegistry, name: str) -> ModelEntry:
    try:
        return models.get(name)
    except ModelError as exc:
        raise ApiError(404, "not_found", str(exc).replace(str(models.models_dir), "<models_dir>")) from exc


#: ``type`` values of ``GET /v1/models``: Clara AIAA's model types (Model Config, "Basic Information"), plus
#: ``dextr3d`` (AIAA's DExtr3D models are type ``annotation``) and this node's ``embedding`` task (AIAA: ``others``).
ModelType = Literal["segmentation", "annotation", "classification", "deepgrow", "others", "pipeline",
                    "dextr3d", "embedding"]
#: The query parameters of ``GET /v1/models``; any other is refused with 400, not ignored.
_LIST_PARAMS = ("task", "type", "label", "name", "model")


class ModelListEntry(BaseModel):
    """One model as Clara AIAA lists it (``name``, ``labels``, ``description``, ``version``, ``type``), with this
    node's ``task``, ``backend`` and ``state``."""

    name: str
    labels: list[str]
    description: str
    version: str
    type: str = Field(description="Clara AIAA model type (segmentation, annotation, classification, deepgrow, others)")
    deepgrow: str | None = Field(None, description="Deepgrow models: 2D or 3D (AIAA clients read it)")
    task: str
    backend: str | None = Field(description="Backend that would run the model here; null when none can")
    state: str = Field(description="'ready' when a backend can run it, else 'unavailable'")


def _known_query(request: Request) -> None:
    """Refuse query parameters ``GET /v1/models`` does not support (a silently ignored filter lists every model)."""
    unknown = sorted({key for key in request.query_params if key not in _LIST_PARAMS})
    if unknown:
        raise ApiError(400, "invalid_request", f"unsupported query parameter(s): {', '.join(unknown)}; "
                       f"GET /v1/models takes {', '.join(_LIST_PARAMS)}")


@router.get("/v1/models", response_model=list[ModelListEntry], response_model_exclude_unset=True,
            responses=error_responses(401, 403),
            summary="List models (Clara AIAA's list), filtered by label, type, model (or task, name)")
def list_models(
    models: ModelsDep,
    _principal: Annotated[Principal, Depends(require("read"))],
    _query: Annotated[None, Depends(_known_query)],
    task: Annotated[str | None, Query(max_length=64, description="segmentation, classification or embedding")] = None,
    model_type: Annotated[ModelType | None, Query(alias="type", description="Clara AIAA model type")] = None,
    label: Annotated[str | None, Query(max_length=64, description="A label name (case-insensitive)")] = None,
    name: Annotated[str | None, Query(max_length=64, description="Exact model name")] = None,
    model: Annotated[str | None, Query(max_length=64, description="Exact model name (Clara AIAA's spelling of name)")] = None,
) -> list[dict[str, Any]]:
    """The models of the store (hidden test models excluded) as a JSON list, Clara AIAA's answer shape.

    AIAA clients (3D Slicer's and OHIF's plugins, ``client_api.py``) call this path and iterate
    the answer as a list of ``{name, labels, description, version, type}``; each entry also
    carries this node's ``task`` and the backend that would run it. Every filter given must
    hold (``type`` as AIAA means it: the uploaded config's type, else the task's; ``model`` an
    exact name like ``name``). An unknown query parameter is answered 400 naming it.
    """
    store = models.store()
    rows = []
    for entry_name in store.names():
        entry = store.get(entry_name)
        spec = entry.spec
        stored = aiaa.stored(entry.directory)
        if (task and spec.task != task) or (model_type and not aiaa.type_matches(model_type, spec, stored)):
            continue
        if (name and spec.name != name) or (model and spec.name != model):
            continue
        if label and label.casefold() not in {lab.name.casefold() for lab in spec.labels}:
            continue
        rows.append({**aiaa.list_entry(spec, stored), **_summary(models, spec)})
    return rows


def _detail(models: ModelRegistry, entry: ModelEntry) -> dict[str, Any]:
    selection = models.select(entry.spec)
    return {
        **_summary(models, entry.spec), "backend_detail": selection.detail,
        "backends_unavailable": dict(selection.passed_over), "onnx_sha256": entry.onnx_sha256(),
        "spec": entry.spec.model_dump(mode="json"),
    }


@router.get("/v1/models/{name:modelname}", response_model=ModelDetail, responses=error_responses(401, 403, 404),
            summary="One model: spec, version, backend and state")
def get_model(models: ModelsDep, name: Annotated[str, name_param()],
              _principal: Annotated[Principal, Depends(require("read"))]) -> dict[str, Any]:
    """The spec as JSON, the backend that would run it here and why the others cannot."""
    return _detail(models, _entry(models, name))


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["model.toml", "model.onnx"],
            "properties": {
                # The spec is UTF-8 TOML text (at most 1 MiB), not an arbitrary file: an image is refused.
                "model.toml": {"type": "string", "minLength": 1, "maxLength": 1024 * 1024,
                               "contentMediaType": "text/plain", "description": "The spec (UTF-8 TOML)"},
                "model.onnx": {"type": "string", "format": "binary", "minLength": 1,
                               "contentMediaType": "application/octet-stream",
                               "description": "The ONNX file the spec names"},
                "model.plan": {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream",
                               "description": "Optional TensorRT plan"},
            },
            # An image-text embedding model's [embedding.text] tower adds two parts named by its spec
            # (default text.onnx and tokenizer.json); their names are the spec's, so not listed here.
            "additionalProperties": {"type": "string", "format": "binary"},
        }, "encoding": {
            "model.toml": {"contentType": "text/plain"},
            "model.onnx": {"contentType": "application/octet-stream"},
            "model.plan": {"contentType": "application/octet-stream"},
        }}},
    }
}


async def _read_upload(request: Request, name: str) -> tuple[bytes, ModelSpec, list[tuple[str, Any]]]:
    if request.headers.get("content-length") is None:
        raise ApiError(411, "length_required", "uploads need a Content-Length within the body limit")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data with model.toml and the ONNX file")
    form = await request.form(max_files=6, max_fields=6)
    spec_part = form.get("model.toml")
    raw = await spec_part.read(_SPEC_MAX + 1) if isinstance(spec_part, UploadFile) else (spec_part or "").encode()
    if not raw or len(raw) > _SPEC_MAX:
        raise ApiError(400, "invalid_upload", "model.toml is missing, empty or over 1 MiB")
    spec = modelfiles.validate_spec(modelfiles.parse_toml(raw), name)
    if not _FILE_NAME.fullmatch(spec.onnx):
        raise ApiError(400, "invalid_spec", "onnx: must be a plain file name inside the model folder")
    onnx = form.get(spec.onnx) or form.get("model.onnx")
    if not isinstance(onnx, UploadFile):
        raise ApiError(400, "invalid_upload", f"the ONNX file ({spec.onnx}) is missing from the upload")
    files: list[tuple[str, Any]] = [(spec.onnx, onnx.file)]
    plan = form.get(modelfiles.PLAN_FILE)
    if isinstance(plan, UploadFile):
        files.append((modelfiles.PLAN_FILE, plan.file))
    files += _text_tower_files(form, spec)
    return raw, spec, files


def _text_tower_files(form: FormData, spec: ModelSpec) -> list[tuple[str, Any]]:
    """The text tower's ONNX graph and tokenizer an image-text model's ``[embedding.text]`` names.

    Both are required when the spec declares a text tower (a model folder without them would load
    and then fail every ``prompt_query``); their names are the spec's own, already checked against
    the spec's file-name pattern, so no client value becomes a path.
    """
    tower = spec.embedding.text
    if tower is None:
        return []
    files: list[tuple[str, Any]] = []
    for filename in (tower.onnx, tower.tokenizer):
        if filename in (spec.onnx, modelfiles.PLAN_FILE, "model.toml"):
            raise ApiError(400, "invalid_spec", f"embedding.text: {filename} collides with another file of the model")
        part = form.get(filename)
        if not isinstance(part, UploadFile):
            raise ApiError(400, "invalid_upload", f"the text tower's {filename} ([embedding.text]) is missing from the upload")
        files.append((filename, part.file))
    return files


@router.put("/admin/models/{name}", response_model=ModelDetail, responses=error_responses(401, 403, 411, 413, 415),
            summary="Upload or replace a model (model.toml + ONNX file, optional plan)", openapi_extra=_UPLOAD_BODY)
async def put_model(request: Request, models: ModelsDep, name: Annotated[str, name_param()],
                    _principal: Annotated[Principal, Depends(require("admin"))]) -> dict[str, Any]:
    """Validate the spec, then write the folder atomically and make the store use it."""
    modelfiles.check_name(name)
    raw, spec, files = await _read_upload(request, name)
    await run_in_threadpool(modelfiles.install, models.models_dir, name, raw, files)
    models.forget(name)
    log.info("model uploaded model=%s version=%s", name, spec.version)
    return _detail(models, _entry(models, name))


@router.patch("/admin/models/{name}", response_model=ModelDetail, responses=error_responses(401, 403, 404),
              summary="Change spec fields (JSON merge patch); the model reloads without a re-upload")
def patch_model(models: ModelsDep, patch: dict[str, Any], name: Annotated[str, name_param()],
                _principal: Annotated[Principal, Depends(require("admin"))]) -> dict[str, Any]:
    """Merge ``patch`` (RFC 7396) into the spec, validate, persist ``model.toml``, reload."""
    entry = _entry(models, name)
    if "name" in patch and patch["name"] != name:
        raise ApiError(400, "invalid_spec", "name: a model cannot be renamed by PATCH")
    current = modelfiles.parse_toml((entry.directory / "model.toml").read_bytes())
    merged = modelfiles.merge_patch(current, patch)
    spec = modelfiles.validate_spec(merged, name)
    if not (entry.directory / spec.onnx).is_file() or not _FILE_NAME.fullmatch(spec.onnx):
        raise ApiError(400, "invalid_spec", f"onnx: file {spec.onnx!r} is not in the model folder")
    modelfiles.write_spec(entry.directory, modelfiles.dump_toml(merged))
    # A Clara AIAA config loaded with the model no longer describes it: GET /admin/model draws one from the spec.
    (entry.directory / aiaa.CONFIG_FILE).unlink(missing_ok=True)
    models.forget(name)
    log.info("model patched model=%s fields=%s", name, ",".join(sorted(patch)))
    return _detail(models, _entry(models, name))


@router.delete("/admin/models/{name}", status_code=204, response_model=None,
               responses={204: {"description": "Removed"}, **error_responses(401, 403, 404)},
               summary="Remove a model folder")
def delete_model(models: ModelsDep, name: Annotated[str, name_param()],
                 _principal: Annotated[Principal, Depends(require("admin"))]) -> None:
    """Remove ``<models_dir>/<name>/``; jobs queued for it fail with 'no model'."""
    modelfiles.check_name(name)
    if not modelfiles.remove(models.models_dir, name):
        raise ApiError(404, "not_found", f"no model folder named {name!r}")
    models.forget(name)
