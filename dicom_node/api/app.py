"""The FastAPI application: routers, error handlers, request-size limit."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from dicom_node import __version__
from dicom_node.api.errors import error_body, install_error_handlers
from dicom_node.config import NodeConfig

log = logging.getLogger(__name__)

#: Router modules under dicom_node.api.routers, each exposing ``router``; missing ones are skipped.
ROUTERS = ["health", "models", "predict", "invocations", "jobs", "results", "worklist", "dicomweb"]


@dataclass
class ApiContext:
    """What request handlers reach through ``request.app.state.ctx``."""

    config: NodeConfig
    node: Any  # dicom_node.node.Node (typed loosely to keep the import one-way)


def create_app(ctx: ApiContext) -> FastAPI:
    """Build the application for one node.

    Parameters
    ----------
    ctx : ApiContext
        The node and its configuration.
    """
    app = FastAPI(title="dicom-node", version=__version__,
                  description="REST facade of a DICOM node: models, predict, invocations, jobs, results, DICOMweb.")
    app.state.ctx = ctx
    install_error_handlers(app)
    limit = ctx.config.api.max_body_bytes

    @app.middleware("http")
    async def _body_limit(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return JSONResponse(error_body("too_large", f"request body over the limit of {limit} bytes"), status_code=413)
        return await call_next(request)

    for name in ROUTERS:
        try:
            module = importlib.import_module(f"dicom_node.api.routers.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"dicom_node.api.routers.{name}":
                continue
            raise
        app.include_router(module.router)
    return app
