"""``/docs`` served entirely by the node: Swagger UI's assets come from a packaged copy, never a CDN.

FastAPI's built-in ``/docs`` page loads Swagger UI's JavaScript and CSS from a
public CDN and its favicon from fastapi.tiangolo.com; on a hospital network
without internet access the page stays blank. Here the page points at
``/docs/assets/...``, served from the ``openapi-ui-bundles`` package
(``openapi_ui_bundles.swagger_ui.static_path``).

Why that package and not ``swagger-ui-bundle``: the latter (1.1.0, the newest)
ships Swagger UI 4.15.5, which renders only ``openapi: 3.0.n`` documents and
answers "Unable to render this definition" for the ``openapi: 3.1.0`` document
FastAPI generates. ``openapi-ui-bundles`` ships Swagger UI 5, which reads 3.1.

Only the files the page references are served (an allow-list): the bundle's
own ``index.html`` would load the Petstore example from the internet.
``/docs`` and its assets are as open as ``/openapi.json`` (no credentials), as
FastAPI's default ``/docs`` was. ReDoc (``/redoc``) is not offered.

When the package is missing, ``/docs`` answers 503 naming it, and the rest of
the API serves as usual.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

log = logging.getLogger(__name__)

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
#: The files the page references; nothing else of the bundle is served.
JS, CSS, FAVICON = "swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"
ASSETS = frozenset({JS, CSS, FAVICON})
PACKAGE = "openapi-ui-bundles"


def swagger_ui_dir() -> Path | None:
    """The folder of the packaged Swagger UI assets, or None when the package is not installed."""
    try:
        from openapi_ui_bundles.swagger_ui import static_path
    except ImportError:
        return None
    return Path(static_path)


class _AllowListedFiles(StaticFiles):
    """Static files limited to :data:`ASSETS` (404 for every other name in the folder)."""

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        """Resolve only allow-listed names; see :meth:`starlette.staticfiles.StaticFiles.lookup_path`."""
        if path not in ASSETS:
            return "", None
        return super().lookup_path(path)


def install_docs(app: FastAPI) -> None:
    """Add ``/docs``, ``/docs/oauth2-redirect`` and ``/docs/assets/*`` to ``app``.

    The app must be created with ``docs_url=None`` and ``redoc_url=None`` so that
    FastAPI's CDN-based pages are not registered.

    Parameters
    ----------
    app : FastAPI
        The application; its ``openapi_url`` is the document the page shows.
    """
    folder = swagger_ui_dir()
    openapi_url = app.openapi_url or "/openapi.json"
    if folder is None:
        log.warning("the /docs page is unavailable: the %s package is not installed", PACKAGE)

        @app.get(DOCS_URL, include_in_schema=False)
        def docs_unavailable() -> Response:
            return PlainTextResponse(f"/docs needs the {PACKAGE} package (pip install {PACKAGE}); "
                                     f"the OpenAPI document is at {openapi_url}", status_code=503)
        return

    app.mount(ASSETS_URL, _AllowListedFiles(directory=folder), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        # root_path: behind a reverse proxy that strips a prefix, links must carry it (as FastAPI's own page does).
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/{JS}", swagger_css_url=f"{root}{ASSETS_URL}/{CSS}",
            swagger_favicon_url=f"{root}{ASSETS_URL}/{FAVICON}", oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
