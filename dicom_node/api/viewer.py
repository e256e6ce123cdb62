"""Serve a built OHIF viewer (``@ohif/app``'s ``dist/``) pointed at the node's DICOMweb.

OHIF is a single-page application built for the root of its origin
(``window.PUBLIC_URL = "/"``), so it gets its own origin (another port) and
reads the node's DICOMweb cross-origin: the node must list the viewer's origin
in ``api.cors_allowed_origins``. This app serves the files of ``dist/``
unchanged, except ``/app-config.js``, which it writes: one DICOMweb data
source (QIDO-RS, WADO-RS, thumbnails and bulk data all at ``dicomweb_root``)
and, when given, the bearer token the viewer sends with each request. Any
path that is not a file (OHIF's client-side routes such as ``/viewer``)
answers ``index.html``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

#: The ``@ohif/app`` release this node is tested with (tests/peers/install_debian_peers.sh fetches it).
OHIF_VERSION = "3.13.2"


def default_dist() -> Path:
    """Where ``tests/peers/install_ohif.sh`` (``make viewer``) unpacks OHIF's ``dist/``."""
    cache = Path(os.environ.get("DICOM_NODE_CACHE") or Path.home() / ".cache" / "dicom-node")
    return cache / f"ohif-{OHIF_VERSION}" / "package" / "dist"


def app_config(dicomweb_root: str, token: str | None = None) -> str:
    """The ``app-config.js`` of a viewer reading everything from ``dicomweb_root``.

    Parameters
    ----------
    dicomweb_root : str
        Absolute URL of the node's DICOMweb root, e.g. ``http://127.0.0.1:8080/dicomweb``.
    token : str, optional
        A bearer token (an API key or a JWT) sent as ``Authorization`` with every request to
        ``dicomweb_root`` (see ``_AUTH_SHIM``).
    """
    source: dict[str, object] = {
        "friendlyName": "dicom-node",
        "name": "dicom-node",
        "wadoUriRoot": dicomweb_root,
        "qidoRoot": dicomweb_root,
        "wadoRoot": dicomweb_root,
        "qidoSupportsIncludeField": True,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": False,
        "supportsWildcard": True,
        "staticWado": False,
        "singlepart": "bulkdata,video",
        "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        "omitQuotationForMultipartRequest": True,
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "defaultDataSourceName": "dicom-node",
        "dataSources": [{"namespace": "@ohif/extension-default.dataSourcesModule.dicomweb", "sourceName": "dicom-node",
                         "configuration": source}],
    }
    script = f"window.config = {json.dumps(config, indent=2)};\n"
    if token:
        script += _AUTH_SHIM.replace("__ROOT__", json.dumps(dicomweb_root)).replace("__AUTH__", json.dumps(f"Bearer {token}"))
    return script


# OHIF sends an Authorization header only from its OpenID Connect login (``oidc`` in app-config, the
# production setup: the node checks those JWTs against api.jwks_file). For a fixed token (an API key
# on a workstation) this shim adds the header to the viewer's own requests to the node's DICOMweb,
# XMLHttpRequest (dicomweb-client) and fetch alike, and to no other origin.
_AUTH_SHIM = """
(function () {
  const root = __ROOT__, auth = __AUTH__;
  const ours = (url) => String(url).startsWith(root + "/") || String(url) === root;
  const open = XMLHttpRequest.prototype.open, send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.open = function (method, url) { this.__dicomNode = ours(url); return open.apply(this, arguments); };
  XMLHttpRequest.prototype.send = function () {
    if (this.__dicomNode) { this.setRequestHeader("Authorization", auth); }
    return send.apply(this, arguments);
  };
  const fetch = window.fetch.bind(window);
  window.fetch = function (input, init) {
    const url = typeof input === "string" || input instanceof URL ? String(input) : input.url;
    if (!ours(url)) { return fetch(input, init); }
    const headers = new Headers((init && init.headers) || (input instanceof Request ? input.headers : undefined));
    headers.set("Authorization", auth);
    return fetch(input, Object.assign({}, init, { headers: headers }));
  };
})();
"""


class _SinglePageFiles(StaticFiles):
    """Static files whose misses (client-side routes) answer ``index.html``."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            return await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code != 404:
                raise
            return await super().get_response("index.html", scope)


def viewer_app(dist: Path, dicomweb_root: str, token: str | None = None) -> Starlette:
    """The ASGI app serving OHIF's ``dist`` with a generated ``app-config.js``.

    Raises
    ------
    FileNotFoundError
        ``dist`` has no ``index.html`` (not a built OHIF viewer).
    """
    if not (dist / "index.html").is_file():
        raise FileNotFoundError(f"{dist} has no index.html: give the dist/ folder of @ohif/app")
    config = app_config(dicomweb_root, token)

    async def config_js(_: Request) -> Response:
        return Response(config, media_type="application/javascript", headers={"Cache-Control": "no-store"})

    return Starlette(routes=[Route("/app-config.js", config_js),
                             Mount("/", app=_SinglePageFiles(directory=dist, html=True))])
