"""``POST /v1/models/{name}:predict``: synchronous, micro-batched prediction (Vertex AI style).

Body ``{"instances": [...], "parameters": {...}}``; each instance holds
``input_bytes`` (base64 of a DICOM Part 10 file, PNG or JPEG; ``{"b64": ...}``
is accepted too) or ``dicomweb_uri`` (a WADO-RS study, series or instance URL)
with an optional ``bearer_token``, or ``session_id`` with an optional ``series_uid``.
The answer lists one prediction or one ``{"error": {"code", "description"}}`` per
instance, in order; one failing instance never fails the others. A field the
node does not read is that instance's error, naming the field, never silently
dropped (``prompt_query``: no model here accepts text; see :func:`check_fields`). Instances run concurrently on the model's one
shared predictor (``ModelRegistry.predictor``), so they and other callers' work
(REST and DICOM jobs alike) fill the same micro-batches.

Each prediction is :func:`dicom_node.api.predictions.summarise`'s JSON (its module docstring
lists the output per task).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends
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
from dicom_node.api.predictions import instance_error, run_decoded
from dicom_node.api.schemas import UID_PATTERN, error_responses
from dicom_node.config import NodeConfig
from dicom_node.errors import ModelError
from dicom_node.net.http import Outbound
from dicom_node.net.policy import OutboundError
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
#: One instance as the node reads it (INSTANCE_FIELDS): exactly one input, with only its companions.
_INSTANCE_SCHEMA: dict[str, Any] = {"oneOf": [
    {"type": "object", "additionalProperties": False, "required": ["input_bytes"], "properties": {
        "input_bytes": {"oneOf": [_B64, {"type": "object", "additionalProperties": False, "required": ["b64"],
                                         "properties": {"b64": _B64}}]}}},
    {"type": "object", "additionalProperties": False, "required": ["dicomweb_uri"], "properties": {
        "dicomweb_uri": {"type": "string", "format": "uri", "pattern": r"^https?://[^\s/@?#]+(/[^\s]*)?$"},
        "bearer_token": {"type": "string", "minLength": 1}}},
    {"type": "object", "additionalProperties": False, "required": ["session_id"], "properties": {
        "session_id": {"type": "string", "minLength": 1},
        "series_uid": {"type": "string", "pattern": UID_PATTERN, "maxLength": 64}}},
]}


class PredictRequest(BaseModel):
    """The request body; any other top-level field is refused with 400 naming it (never ignored)."""

    model_config = {"extra": "forbid"}

    instances: list[dict[str, Any]] = Field(min_length=1, description="Each: input_bytes, dicomweb_uri (+ bearer_token), or session_id (+ series_uid)",
                                            json_schema_extra={"items": _INSTANCE_SCHEMA})
    parameters: dict[str, Any] = Field(default_factory=dict, description="Model parameters, e.g. {\"threshold\": 0.4}")


class PredictResponse(BaseModel):
    """The answer: one prediction or ``{"error": {"code", "description"}}`` per instance, in order."""

    predictions: list[dict[str, Any]]
    model: str
    modelVersionId: str


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": PredictResponse, "description": "One entry per instance, in order"},
    **error_responses(401, 403, 404, 413, 503),
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
        return base64.b64decode(text, validate=True)
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


#: Each input field of an instance and the fields that may come with it.
INSTANCE_FIELDS: dict[str, frozenset[str]] = {
    "input_bytes": frozenset({"input_bytes"}),
    "dicomweb_uri": frozenset({"dicomweb_uri", "bearer_token"}),
    "session_id": frozenset({"session_id", "series_uid"}),
}
_KNOWN_FIELDS = frozenset().union(*INSTANCE_FIELDS.values())
_FIELDS_HELP = "an instance takes input_bytes, dicomweb_uri (with bearer_token) or session_id (with series_uid)"


def check_fields(spec: ModelSpec, instance: dict[str, Any]) -> str:
    """The input field of an instance, after refusing every field the node would otherwise ignore.

    Vertex AI instances may carry more than an image (``prompt_query`` for a text
    embedding, ``gcs_uri``); none of this node's models reads them, so each is a
    named per-instance error rather than silently dropped.

    Raises
    ------
    InputRejected
        ``unsupported_field`` naming the field (``prompt_query``: the model takes no text),
        ``invalid_instance`` without exactly one input field.
    """
    if "prompt_query" in instance:
        raise InputRejected("unsupported_field", f"prompt_query: model {spec.name!r} does not accept text")
    unknown = sorted(k for k in instance if k not in _KNOWN_FIELDS)
    if unknown:
        raise InputRejected("unsupported_field", f"{', '.join(str(k)[:64] for k in unknown[:10])}: not supported; "
                            f"{_FIELDS_HELP}")
    given = [k for k in INSTANCE_FIELDS if k in instance]
    if len(given) != 1:
        raise InputRejected("invalid_instance", "an instance needs exactly one of input_bytes, dicomweb_uri or session_id")
    stray = sorted(set(instance) - INSTANCE_FIELDS[given[0]])
    if stray:
        raise InputRejected("unsupported_field", f"{', '.join(stray)}: not used with {given[0]}; {_FIELDS_HELP}")
    return given[0]


def decode_instance(services: ApiServices, config: NodeConfig, spec: ModelSpec, instance: Any) -> DecodedInput:
    """Decode one request instance (``input_bytes``, ``dicomweb_uri`` or ``session_id``) for ``spec``.

    Raises
    ------
    InputRejected
        With a code and an actionable description (see :func:`check_fields` for the fields).
    """
    tmp = services.storage.spool.tmp
    if not isinstance(instance, dict):
        raise InputRejected("invalid_instance", "an instance must be an object with input_bytes, dicomweb_uri or session_id")
    check_fields(spec, instance)
    if "session_id" in instance:
        return decode_session(services.sessions, config, spec, instance)
    if "input_bytes" in instance:
        return decode_for_model(_input_bytes(instance["input_bytes"]), spec, tmp,
                                config.api.max_pixels, gpu=config.pixels.gpu_decode)
    uri, token = instance["dicomweb_uri"], instance.get("bearer_token")
    if not isinstance(uri, str) or (token is not None and not isinstance(token, str)):
        raise InputRejected("invalid_instance", "dicomweb_uri and bearer_token must be strings")
    parts = fetch_dicomweb(services.outbound, config, uri, token)
    return decode_dicom(parts, spec, tmp, config.api.max_pixels, gpu=config.pixels.gpu_decode)


def run_instance(services: ApiServices, config: NodeConfig, predictor: Predictor, instance: Any,
                 params: dict[str, Any]) -> dict[str, Any]:
    """One instance from request to answer entry; never raises for a bad input."""
    try:
        decoded = decode_instance(services, config, predictor.spec, instance)
    except InputRejected as exc:
        return instance_error(exc.code, exc.description)
    except (OSError, MemoryError) as exc:
        log.exception("instance could not be read model=%s", predictor.spec.name)
        return instance_error("internal_error", f"the input could not be processed ({type(exc).__name__})")
    return run_decoded(predictor, decoded, params)


@router.post("/v1/models/{name}:predict", summary="Synchronous micro-batched prediction (Vertex AI style)",
             responses=_RESPONSES, response_class=JSONResponse)
async def predict(name: str, body: PredictRequest, services: ServicesDep, config: ConfigDep,
                  _: Submitter) -> JSONResponse:
    """Answer one prediction or error per instance, in order.

    Raises
    ------
    ApiError
        400 over ``api.max_instances`` or with invalid parameters, 404 unknown model,
        503 when no backend can run it.
    """
    predictor = await run_in_threadpool(get_predictor, services.models, name)
    cap = config.api.max_instances
    if len(body.instances) > cap:
        raise ApiError(400, "too_many_instances",
                       f"{len(body.instances)} instances sent; at most {cap} per request (api.max_instances)")
    try:
        predictor.spec.resolve_parameters(body.parameters)  # checked once: shared by every instance
    except ParameterError as exc:
        raise ApiError(400, "invalid_parameters", str(exc)) from exc
    predictions = await asyncio.gather(
        *(run_in_threadpool(run_instance, services, config, predictor, inst, body.parameters)
          for inst in body.instances)
    )
    log.info("predict model=%s instances=%d errors=%d", name, len(predictions),
             sum(1 for p in predictions if "error" in p))
    # JSONResponse directly: the answer is plain JSON already, and FastAPI's encoder walks long RLE lists slowly.
    return JSONResponse({"predictions": list(predictions), "model": predictor.spec.name,
                         "modelVersionId": predictor.spec.version})
