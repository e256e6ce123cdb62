"""The FastAPI application: routers, error handlers, request-size limit."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from dicom_node import __version__
from dicom_node.api.docs import install_docs
from dicom_node.api.errors import install_error_handlers
from dicom_node.api.limits import BodyLimitMiddleware
from dicom_node.config import NodeConfig

log = logging.getLogger(__name__)

#: Router modules under dicom_node.api.routers, each exposing ``router``; missing ones are skipped.
ROUTERS = ["health", "models", "predict", "invocations", "jobs", "results", "worklist", "dicomweb", "sessions"]


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
    # FastAPI's own /docs and /redoc load their scripts from public CDNs; ours serves them itself.
    app = FastAPI(title="dicom-node", version=__version__, docs_url=None, redoc_url=None,
                  description="REST facade of a DICOM node: models, predict, invocations, jobs, results, DICOMweb.")
    app.state.ctx = ctx
    install_docs(app)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit=ctx.config.api.max_body_bytes)

    for name in ROUTERS:
        try:
            module = importlib.import_module(f"dicom_node.api.routers.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"dicom_node.api.routers.{name}":
                continue
            raise
        app.include_router(module.router)
    return app
