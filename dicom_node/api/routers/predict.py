"""Synchronous, micro-batched prediction, Vertex AI style, on one implementation behind two paths.

- ``POST /v1/models/{name}:predict``: the node's own path, by model name;
- ``POST /v1/projects/{project}/locations/{location}/endpoints/{endpoint}:predict``: Vertex AI's
  documented path, served verbatim for callers of Google's Health AI Developer Foundations
  (CXR Foundation, Derm Foundation). ``{endpoint}`` maps to a model through ``api.vertex_endpoints``,
  else to the model of that name; any project and location.

Body ``{"instances": [...], "parameters": {...}}``; each instance holds one image input:
``input_bytes`` (base64 of a DICOM Part 10 file, PNG or JPEG; ``{"b64": ...}`` is accepted too),
``gcs_uri`` (``gs://bucket/object``, with an optional ``bearer_token`` used for that read only),
``dicomweb_uri`` (a WADO-RS study, series or instance URL, optional ``bearer_token``), or
``session_id`` (optional ``series_uid``); and/or a ``prompt_query`` (text) for a model with a text
tower (``[embedding.text]``): text alone answers a text embedding, with an image both. The answer
is Vertex AI's PredictResponse: ``predictions`` (one prediction or one ``{"error": {"code",
"description"}}`` per instance, in order; one failing instance never fails the others),
``deployedModelId``, ``model``, ``modelVersionId``, ``modelDisplayName`` and ``metadata``
(https://cloud.google.com/vertex-ai/docs/reference/rest/v1/PredictResponse). A field the node does
not read is that instance's error, naming the field, never silently dropped (:func:`check_fields`).

Micro-batching: at most ``api.max_instances`` instances (default 32) per request; they run
concurrently on the model's one shared predictor (``ModelRegistry.predictor``), so they and other
callers' work (REST and DICOM jobs alike) fill the same backend batches of up to the model's
``tensors.max_batch`` items (text towers: ``embedding.text.max_batch``).

Each prediction is :func:`dicom_node.api.predictions.summarise`'s JSON (its module docstring
lists the output per task).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from dicom_node.api.auth import Principal, require
from dicom_node.api.deps import ApiServices, ConfigDep, ServicesDep
from dicom_node.api.errors import ApiError
from dicom_node.api.inputs import (
    DecodedInput,
    InputRejected,
    decode_dicom,
    decode_dicom_files,
    decode_for_model,
    sniff,
    split_multipart,
)
from dicom_node.api.predictions import instance_error, run_decoded_many, run_texts
from dicom_node.api.schemas import UID_PATTERN, error_responses
from dicom_node.config import NodeConfig
from dicom_node.config.api import VERTEX_ID
from dicom_node.errors import ModelError
from dicom_node.net.http import Outbound
from dicom_node.net.policy import OutboundError
from dicom_node.objects import ObjectNotFound, ObjectStoreError, ObjectStores, ObjectTooLarge, ObjectUrl
from dicom_node.registry import ModelRegistry
from dicom_node.sources.sessions import SessionService
from dicom_node.sources.sessions_plan import SessionUnavailable
from inference.errors import (
    ParameterError,
)
from inference.predictor import Predictor
from inference.spec import ModelSpec

log = logging.getLogger(__name__)

router = APIRouter(tags=["predict"])

#: The caller, who must hold the ``submit`` scope.
Submitter = Annotated[Principal, Depends(require("submit"))]

_WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


_B64 = {"type": "string", "contentEncoding": "base64", "minLength": 1}
_TOKEN = {"type": "string", "minLength": 1}
#: Text for a model's text tower (its own limits, embedding.text.max_chars / max_tokens, are checked per model).
_PROMPT = {"type": "string", "minLength": 1, "maxLength": 65536}
_GCS_URI = {"type": "string", "pattern": r"^gs://[a-z0-9][a-z0-9._-]{1,221}/[^\s?#]+$"}
_DICOMWEB_URI = {"type": "string", "format": "uri", "pattern": r"^https?://[^\s/@?#]+(/[^\s]*)?$"}


def _shape(required: str, **companions: dict[str, Any]) -> dict[str, Any]:
    props = {**companions, "prompt_query": _PROMPT}
    return {"type": "object", "additionalProperties": False, "required": [required], "properties": props}


#: One instance as the node reads it (INSTANCE_FIELDS): one image input with only its companions,
#: and/or a prompt_query (CXR Foundation's instance schema, with the node's session input added).
_INSTANCE_SCHEMA: dict[str, Any] = {"oneOf": [
    _shape("input_bytes", input_bytes={"oneOf": [_B64, {"type": "object", "additionalProperties": False,
                                                        "required": ["b64"], "properties": {"b64": _B64}}]}),
    _shape("gcs_uri", gcs_uri=_GCS_URI, bearer_token=_TOKEN),
    _shape("dicomweb_uri", dicomweb_uri=_DICOMWEB_URI, bearer_token=_TOKEN),
    _shape("session_id", session_id={"type": "string", "minLength": 1},
           series_uid={"type": "string", "pattern": UID_PATTERN, "maxLength": 64}),
    {"type": "object", "additionalProperties": False, "required": ["prompt_query"],
     "properties": {"prompt_query": _PROMPT}},
]}

_CAP = ("At most api.max_instances instances (default 32) per request (more: 400 too_many_instances); they "
        "share the model's micro-batches of up to tensors.max_batch items with every other caller")


class PredictRequest(BaseModel):
    """The request body; any other top-level field is refused with 400 naming it (never ignored)."""

    model_config = {"extra": "forbid"}

    instances: list[dict[str, Any]] = Field(
        min_length=1, json_schema_extra={"items": _INSTANCE_SCHEMA},
        description="Each: one of input_bytes, gcs_uri (+ bearer_token), dicomweb_uri (+ bearer_token) or "
                    f"session_id (+ series_uid), and/or prompt_query. {_CAP}.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="Model parameters, e.g. {\"threshold\": 0.4}")


class PredictResponse(BaseModel):
    """Vertex AI's PredictResponse: one prediction or ``{"error": {"code", "description"}}`` per instance, in order."""

    predictions: list[dict[str, Any]]
    deployedModelId: str = Field(description="The model serving the request (its name)")
    model: str = Field(description="The model: its name on /v1/models, its resource name "
                                   "projects/{p}/locations/{l}/models/{name} on the Vertex path")
    modelVersionId: str
    modelDisplayName: str
    metadata: dict[str, Any] = Field(description="task, instances, errors, maxInstances, maxBatch")


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": PredictResponse, "description": "One entry per instance, in order"},
    **error_responses(400, 401, 403, 404, 413, 503),
}


def get_predictor(models: ModelRegistry, name: str) -> Predictor:
    """The node's shared predictor of ``name``, or an :class:`ApiError` (404 unknown, 503 no backend)."""
    try:
        return models.predictor(name)
    except ModelError as exc:
        if exc.kind == "not_found":
            raise ApiError(404, "model_not_found", str(exc)) from exc
        if exc.kind == "unavailable":
            raise ApiError(503, "model_unavailable", str(exc)) from exc
        raise


def _input_bytes(value: Any) -> bytes:
    text = value.get("b64") if isinstance(value, dict) else value
    if not isinstance(text, str):
        raise InputRejected("invalid_instance", "input_bytes must be a base64 string (or {\"b64\": string})")
    try:
        # Strict standard-alphabet base64 (RFC 4648 section 4), as b64decode(validate=True) checks it, but
        # without its regular expression pass over the text: a third of decoding a 32-image request.
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        try:
            return base64.urlsafe_b64decode(text)
        except (binascii.Error, ValueError) as exc:
            raise InputRejected("invalid_instance", "input_bytes is not valid base64") from exc


def fetch_dicomweb(outbound: Outbound, config: NodeConfig, uri: str, token: str | None) -> list[bytes]:
    """WADO-RS retrieve of a study, series or instance: the Part 10 payloads (PS3.18 10.4).

    Raises
    ------
    InputRejected
        ``fetch_failed`` (refused URL, HTTP error, size bound) or ``undecodable``.
    """
    api = config.api
    # One media range: Orthanc's DICOMweb plugin (1.7) reads everything after "transfer-syntax=" as the
    # syntax and answers 400 to a list; a server answering application/dicom anyway is still read below.
    headers = {"Accept": _WADO_ACCEPT}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = outbound.fetch(uri, headers, api.max_body_bytes)
    except OutboundError as exc:  # refused by the policy, or the request failed: one outcome for the caller
        raise InputRejected("fetch_failed", f"dicomweb_uri: {exc}") from exc
    content_type = response.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/"):
        parts = split_multipart(response.content, content_type)
    else:
        parts = [response.content]
    if len(parts) > api.max_multipart_parts:
        raise InputRejected("fetch_failed", f"dicomweb_uri returned {len(parts)} instances, more than "
                            f"api.max_multipart_parts = {api.max_multipart_parts}")
    bad = sum(1 for p in parts if sniff(p) != "dicom")
    if bad or not parts:
        raise InputRejected("undecodable", f"dicomweb_uri returned {bad or 'no'} part(s) that are not DICOM Part 10")
    return parts


def decode_session(sessions: SessionService, config: NodeConfig, spec: ModelSpec, instance: dict[str, Any]) -> DecodedInput:
    """Decode one series of a ready retrieval session (``{"session_id", "series_uid"?}``).

    Raises
    ------
    InputRejected
        ``session_unavailable`` (unknown, expired, not ready, ambiguous series) or any code of the decoders.
    """
    session_id, series_uid = instance["session_id"], instance.get("series_uid")
    if not isinstance(session_id, str) or (series_uid is not None and not isinstance(series_uid, str)):
        raise InputRejected("invalid_instance", "session_id and series_uid must be strings")
    try:
        paths = sessions.series_files(session_id, series_uid)  # reads the index; needs no running service
    except SessionUnavailable as exc:
        raise InputRejected("session_unavailable", str(exc)) from exc
    return decode_dicom_files(paths, spec, config.api.max_pixels, gpu=config.pixels.gpu_decode)


def fetch_object(stores: ObjectStores, config: NodeConfig, uri: str, token: str | None) -> bytes:
    """Read a ``gcs_uri`` object through the node's object stores (bucket allowlist, size cap).

    ``bearer_token`` is the caller's OAuth 2.0 token, used for this read only and never logged
    (Derm and CXR Foundation read ``gcs_uri`` the same way).

    Raises
    ------
    InputRejected
        ``invalid_instance`` (not a ``gs://`` object URL), ``not_found``, ``too_large`` or ``fetch_failed``
        (bucket not allowlisted, access denied, store unreachable), each naming the URL's bucket.
    """
    try:
        url = ObjectUrl.parse(uri)
    except ObjectStoreError as exc:
        raise InputRejected("invalid_instance", f"gcs_uri: {exc}") from exc
    if url.scheme != "gs" or not url.key or url.key.endswith("/"):
        raise InputRejected("invalid_instance", "gcs_uri must name one object: gs://bucket/path/to/file")
    try:
        return stores.get(url, max_bytes=config.api.max_body_bytes, bearer_token=token)
    except ObjectNotFound as exc:
        raise InputRejected("not_found", f"gcs_uri: {exc}") from exc
    except ObjectTooLarge as exc:
        raise InputRejected("too_large", f"gcs_uri: {exc}") from exc
    except ObjectStoreError as exc:
        raise InputRejected("fetch_failed", f"gcs_uri: {exc}") from exc


#: Each image input field of an instance and the fields that may come with it.
INSTANCE_FIELDS: dict[str, frozenset[str]] = {
    "input_bytes": frozenset({"input_bytes"}),
    "gcs_uri": frozenset({"gcs_uri", "bearer_token"}),
    "dicomweb_uri": frozenset({"dicomweb_uri", "bearer_token"}),
    "session_id": frozenset({"session_id", "series_uid"}),
}
#: Text for a model's text tower; goes with any image input or alone.
PROMPT_FIELD = "prompt_query"
_KNOWN_FIELDS = frozenset().union(*INSTANCE_FIELDS.values(), {PROMPT_FIELD})
_FIELDS_HELP = ("an instance takes one of input_bytes, gcs_uri (with bearer_token), dicomweb_uri (with bearer_token) "
                "or session_id (with series_uid), and/or prompt_query")


def check_fields(spec: ModelSpec, instance: dict[str, Any]) -> tuple[str | None, str | None]:
    """The image input field of an instance and its ``prompt_query``, after refusing what the node would ignore.

    Returns
    -------
    tuple
        ``(input field or None, prompt text or None)``; at least one is set.

    Raises
    ------
    InputRejected
        ``unsupported_field`` naming the field (``prompt_query``: the model has no text tower), or
        ``invalid_instance`` with no input, two image inputs, or a prompt that is not a string.
    """
    unknown = sorted(str(k)[:64] for k in instance if k not in _KNOWN_FIELDS)
    if unknown:
        raise InputRejected("unsupported_field", f"{', '.join(unknown[:10])}: not supported; {_FIELDS_HELP}")
    prompt = instance.get(PROMPT_FIELD)
    if PROMPT_FIELD in instance:
        if spec.embedding.text is None:
            raise InputRejected("unsupported_field", f"prompt_query: model {spec.name!r} does not accept text: it has "
                                "no text tower ([embedding.text] in its model.toml)")
        if not isinstance(prompt, str):
            raise InputRejected("invalid_instance", "prompt_query must be a string")
    given = [k for k in INSTANCE_FIELDS if k in instance]
    if len(given) > 1:
        raise InputRejected("invalid_instance", f"{', '.join(given)}: an instance takes one image input; {_FIELDS_HELP}")
    if not given:
        if prompt is None:
            stray = sorted(instance)
            if stray:
                raise InputRejected("unsupported_field", f"{', '.join(stray)}: not used without an image input; "
                                    f"{_FIELDS_HELP}")
            raise InputRejected("invalid_instance", f"the instance is empty; {_FIELDS_HELP}")
        return None, prompt
    stray = sorted(set(instance) - INSTANCE_FIELDS[given[0]] - {PROMPT_FIELD})
    if stray:
        raise InputRejected("unsupported_field", f"{', '.join(stray)}: not used with {given[0]}; {_FIELDS_HELP}")
    return given[0], prompt


def _strings(instance: dict[str, Any], *keys: str) -> list[str | None]:
    values = [instance.get(k) for k in keys]
    if any(v is not None and not isinstance(v, str) for v in values):
        raise InputRejected("invalid_instance", f"{' and '.join(keys)} must be strings")
    return values


def decode_instance(services: ApiServices, config: NodeConfig, spec: ModelSpec, instance: dict[str, Any],
                    field: str) -> DecodedInput:
    """Decode the image input ``field`` of one instance (as :func:`check_fields` found it) for ``spec``.

    Raises
    ------
    InputRejected
        With a code and an actionable description.
    """
    tmp = services.storage.spool.tmp
    gpu = config.pixels.gpu_decode
    if field == "session_id":
        return decode_session(services.sessions, config, spec, instance)
    if field == "input_bytes":
        return decode_for_model(_input_bytes(instance["input_bytes"]), spec, tmp, config.api.max_pixels, gpu=gpu)
    if field == "gcs_uri":
        uri, token = _strings(instance, "gcs_uri", "bearer_token")
        assert uri is not None  # present: check_fields found it
        data = fetch_object(services.objects, config, uri, token)
        return decode_for_model(data, spec, tmp, config.api.max_pixels, gpu=gpu)
    uri, token = _strings(instance, "dicomweb_uri", "bearer_token")
    assert uri is not None
    parts = fetch_dicomweb(services.outbound, config, uri, token)
    return decode_dicom(parts, spec, tmp, config.api.max_pixels, gpu=gpu)


@dataclass
class Prepared:
    """One instance after phase 1 (fields checked, image fetched and decoded): what phase 2 runs, or its error."""

    decoded: DecodedInput | None = None
    prompt: str | None = None
    error: dict[str, Any] | None = None


def prepare_instance(services: ApiServices, config: NodeConfig, spec: ModelSpec, instance: Any) -> Prepared:
    """Phase 1 of one instance (run concurrently with the others); never raises for a bad input."""
    if not isinstance(instance, dict):
        return Prepared(error=instance_error("invalid_instance", f"an instance must be an object; {_FIELDS_HELP}"))
    try:
        field, prompt = check_fields(spec, instance)
        decoded = decode_instance(services, config, spec, instance, field) if field else None
    except InputRejected as exc:
        return Prepared(error=instance_error(exc.code, exc.description))
    except (OSError, MemoryError) as exc:
        log.exception("instance could not be read model=%s", spec.name)
        return Prepared(error=instance_error("internal_error",
                                             f"the input could not be processed ({type(exc).__name__})"))
    return Prepared(decoded, prompt)


def phase_one_groups(instances: list[Any], cores: int) -> list[list[int]]:
    """Which instances share a phase-1 thread: indices, each group decoded in turn by one worker thread.

    An instance that fetches (``gcs_uri``, ``dicomweb_uri``, ``session_id``) gets a thread of its own, as
    it mostly waits. ``input_bytes`` instances are CPU work on bytes already here (base64, image decode,
    which releases the GIL) and are dealt round-robin into one group per core: a thread hand-off per
    instance (event loop, anyio's limiter, the GIL) cost about as much as decoding a 256x256 PNG.
    """
    local = [i for i, inst in enumerate(instances) if isinstance(inst, dict) and "input_bytes" in inst]
    local_set = set(local)
    groups = [local[k::cores] for k in range(min(cores, len(local)))]
    return groups + [[i] for i in range(len(instances)) if i not in local_set]


def prepare_group(services: ApiServices, config: NodeConfig, spec: ModelSpec, instances: list[Any]) -> list[Prepared]:
    """Phase 1 of a group of instances (:func:`phase_one_groups`), one after the other; never raises for a bad input."""
    return [prepare_instance(services, config, spec, inst) for inst in instances]


def run_prepared(predictor: Predictor, prepared: list[Prepared], params: dict[str, Any]) -> list[dict[str, Any]]:
    """Phase 2: every decoded image in one submission, then every prompt in one, so the request's instances
    fill the model's micro-batches together; one answer per instance, in order (image fields, text fields, or both).
    """
    images = {i: p.decoded for i, p in enumerate(prepared) if p.error is None and p.decoded is not None}
    image_answers = dict(zip(images, run_decoded_many(predictor, list(images.values()), params), strict=True))
    prompts = {i: p.prompt for i, p in enumerate(prepared)
               if p.error is None and p.prompt is not None and "error" not in image_answers.get(i, {})}
    text_answers = dict(zip(prompts, run_texts(predictor, list(prompts.values())), strict=True))
    out: list[dict[str, Any]] = []
    for i, p in enumerate(prepared):
        answer = p.error or image_answers.get(i, {})
        text = text_answers.get(i)
        if text is not None:
            answer = text if "error" in text else {**answer, **text}
        out.append(answer)
    return out


def endpoint_model(config: NodeConfig, endpoint: str) -> str:
    """The model a Vertex endpoint ID names: ``api.vertex_endpoints[endpoint]``, else the model of that name."""
    return config.api.vertex_endpoints.get(endpoint, endpoint)


async def answer(name: str, body: PredictRequest, services: ApiServices, config: NodeConfig,
                 model_resource: str | None = None) -> JSONResponse:
    """Predict every instance on model ``name`` and answer Vertex AI's PredictResponse (both paths).

    Raises
    ------
    ApiError
        400 over ``api.max_instances`` or with invalid parameters, 404 unknown model,
        503 when no backend can run it.
    """
    predictor = await run_in_threadpool(get_predictor, services.models, name)
    spec = predictor.spec
    cap = config.api.max_instances
    if len(body.instances) > cap:
        raise ApiError(400, "too_many_instances",
                       f"{len(body.instances)} instances sent; at most {cap} per request (api.max_instances)")
    try:
        spec.resolve_parameters(body.parameters)  # checked once: shared by every instance
    except ParameterError as exc:
        raise ApiError(400, "invalid_parameters", str(exc)) from exc
    # Phase 1 (fetch, decode) runs the instances concurrently; phase 2 hands them to the model together.
    groups = phase_one_groups(body.instances, os.cpu_count() or 1)
    done = await asyncio.gather(
        *(run_in_threadpool(prepare_group, services, config, spec, [body.instances[i] for i in g]) for g in groups)
    )
    by_index = {i: p for g, group_done in zip(groups, done, strict=True) for i, p in zip(g, group_done, strict=True)}
    prepared = [by_index[i] for i in range(len(body.instances))]
    predictions = await run_in_threadpool(run_prepared, predictor, prepared, body.parameters)
    errors = sum(1 for p in predictions if "error" in p)
    log.info("predict model=%s instances=%d errors=%d", name, len(predictions), errors)
    # JSONResponse directly: the answer is plain JSON already, and FastAPI's encoder walks long RLE lists slowly.
    return JSONResponse({
        "predictions": list(predictions), "deployedModelId": spec.name, "model": model_resource or spec.name,
        "modelVersionId": spec.version, "modelDisplayName": spec.name,
        "metadata": {"task": spec.task, "instances": len(predictions), "errors": errors, "maxInstances": cap,
                     "maxBatch": spec.tensors.max_batch},
    })


@router.post("/v1/models/{name}:predict", summary="Synchronous micro-batched prediction (Vertex AI style)",
             responses=_RESPONSES, response_class=JSONResponse, description=f"{_CAP}.")
async def predict(name: str, body: PredictRequest, services: ServicesDep, config: ConfigDep,
                  _: Submitter) -> JSONResponse:
    """Answer one prediction or error per instance, in order (see :func:`answer`)."""
    return await answer(name, body, services, config)


_VertexId = Annotated[str, PathParam(pattern=VERTEX_ID)]


@router.post("/v1/projects/{project}/locations/{location}/endpoints/{endpoint}:predict",
             summary="Vertex AI predict (CXR / Derm Foundation's documented path), served verbatim",
             responses=_RESPONSES, response_class=JSONResponse,
             description=f"{{endpoint}} is a model through api.vertex_endpoints, else the model of that name; any "
                         f"project and location. {_CAP}.")
async def vertex_predict(project: _VertexId, location: _VertexId, endpoint: _VertexId, body: PredictRequest,
                         services: ServicesDep, config: ConfigDep, _: Submitter) -> JSONResponse:
    """Vertex AI's ``projects.locations.endpoints.predict`` on the model the endpoint maps to (see :func:`answer`)."""
    name = endpoint_model(config, endpoint)
    try:
        return await answer(name, body, services, config, f"projects/{project}/locations/{location}/models/{name}")
    except ApiError as exc:
        if exc.status != 404:
            raise
        raise ApiError(404, "endpoint_not_found", f"endpoint {endpoint!r} is not deployed here: no "
                       f"api.vertex_endpoints entry maps it and {exc}") from exc
