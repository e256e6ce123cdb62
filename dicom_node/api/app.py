"""The FastAPI application: routers, error handlers, request-size limit."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from dicom_node import __version__
from dicom_node.api.bodyguard import SlowBodyMiddleware
from dicom_node.api.deps import ApiServices
from dicom_node.api.docs import install_docs
from dicom_node.api.errors import install_error_handlers
from dicom_node.api.limits import BodyLimitMiddleware
from dicom_node.api.routers import (
    aiaa_admin,
    aiaa_geometry,
    aiaa_infer,
    aiaa_sessions,
    dicomweb,
    facade,
    health,
    invocations,
    jobs,
    models,
    predict,
    qido,
    results,
    sessions,
    wado,
    worklist,
)
from dicom_node.config import NodeConfig

log = logging.getLogger(__name__)

#: Router modules, each exposing ``router``, in the order their routes are matched.
ROUTERS = (health, models, predict, invocations, facade, jobs, results, worklist, dicomweb, wado, qido, sessions,
           aiaa_admin, aiaa_sessions, aiaa_infer, aiaa_geometry)


def create_app(config: NodeConfig, services: ApiServices | None) -> FastAPI:
    """Build the application for one node.

    Parameters
    ----------
    config : NodeConfig
        The node's configuration (limits, authentication).
    services : ApiServices or None
        What the routes use of the node (see :mod:`dicom_node.api.deps`); None builds
        an application that only renders its OpenAPI schema (every route needing a
        service answers 503).
    """
    # FastAPI's own /docs and /redoc load their scripts from public CDNs; ours serves them itself.
    app = FastAPI(title="dicom-node", version=__version__, docs_url=None, redoc_url=None,
                  description="REST facade of a DICOM node: models, predict, invocations, jobs, results, DICOMweb.")
    app.state.config = config
    app.state.services = services
    install_docs(app)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit=config.api.max_body_bytes)
    # Added last, so it runs first: a stalled or trickled body is cut off before anything reads it.
    app.add_middleware(SlowBodyMiddleware, idle_timeout=config.api.body_idle_timeout,
                       min_rate=config.api.body_min_rate, grace=config.api.body_rate_grace,
                       max_uploads=config.api.max_concurrent_uploads)
    if config.api.cors_allowed_origins:
        # Outermost, so a preflight is answered before authentication and every answer (errors
        # included) carries the headers; a viewer sends its bearer token in Authorization.
        app.add_middleware(CORSMiddleware, allow_origins=config.api.cors_allowed_origins,
                           allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Accept", "Content-Type", "X-API-Key"],
                           expose_headers=["Warning", "Content-Type", "Content-Location", "Location"],
                           max_age=600)
    for module in ROUTERS:
        app.include_router(module.router)
    return app
