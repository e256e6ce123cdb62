"""JSON errors for every failure: ``{"error": {"code": ..., "description": ...}}``, never a traceback."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from dicom_node.api.schemas import ErrorResponse
from dicom_node.errors import DicomNodeError

log = logging.getLogger(__name__)


class ApiError(DicomNodeError):
    """An error answered to the caller with ``status`` and a JSON body (in the tree of :mod:`dicom_node.errors`)."""

    def __init__(self, status: int, code: str, description: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description
        self.headers = headers


def error_body(code: str, description: str) -> dict[str, dict[str, str]]:
    """The one error shape of the API."""
    return {"error": {"code": code, "description": description}}


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception to a JSON error response (and document those answers in the OpenAPI schema)."""
    document_errors(app)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.description), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}.get(
            exc.status_code, "http_error"
        )
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # Starlette names only the first matching route's methods; a path served by several routes needs all.
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse(error_body("invalid_request", f"{where}: {first.get('msg')}"), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in the REST API")
        return JSONResponse(error_body("internal_error", f"internal error ({type(exc).__name__})"), status_code=500)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path (for the ``Allow`` header of a 405)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "\x00"})
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def document_errors(app: FastAPI) -> None:
    """Make the OpenAPI document say what the handlers answer: 400 (not FastAPI's 422) for invalid
    requests, 413 over the body limit and 500, each with the JSON error body."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        full = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(full.pop("$defs", {}))
        components["ErrorResponse"] = full
        ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                for status, text in (("400", "Invalid request"), ("413", "Request too large"), ("500", "Internal error")):
                    responses.setdefault(status, {"description": text, **ref})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
