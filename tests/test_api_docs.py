"""``/docs`` works without internet: every asset it references is served by the node itself.

A real uvicorn node; the page is fetched over HTTP and each ``src``/``href`` it
references is fetched from the node. Where Chromium is installed, it renders
the page with every non-loopback request sent to a dead proxy (a hospital
network without internet) and must show the node's operations.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

import httpx

from dicom_node.node import Node
from tests.conftest import free_port, require_tool

#: The content type each kind of asset must carry for a browser to use it.
TYPES = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",), ".png": ("image/png",)}


def base(node: Node) -> str:
    return f"http://127.0.0.1:{node.api.port}"


def test_docs_page_references_only_local_assets(start_node: Any) -> None:
    node = start_node()
    page = httpx.get(base(node) + "/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://", page.text), "the page still points outside the node"
    refs = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", page.text)
    assert len(refs) == 3, refs  # the script, the stylesheet, the favicon
    for ref in refs:
        r = httpx.get(base(node) + ref)
        suffix = "." + ref.rsplit(".", 1)[-1]
        assert r.status_code == 200, ref
        assert r.headers["content-type"].split(";")[0] in TYPES[suffix], (ref, r.headers["content-type"])
        assert len(r.content) > 500, ref
    assert "'/openapi.json'" in page.text or '"/openapi.json"' in page.text
    assert httpx.get(base(node) + "/openapi.json").status_code == 200


def test_only_the_referenced_assets_are_served(start_node: Any) -> None:
    node = start_node()
    # The bundle's own index.html would load the Petstore example from the internet.
    for name in ("index.html", "swagger-initializer.js", "../../../../etc/passwd", ""):
        assert httpx.get(f"{base(node)}/docs/assets/{name}").status_code == 404, name
    assert httpx.get(base(node) + "/redoc").status_code == 404  # FastAPI's CDN-based ReDoc is not offered
    redirect = httpx.get(base(node) + "/docs/oauth2-redirect")
    assert redirect.status_code == 200 and not re.search(r"https?://", redirect.text)


def test_docs_render_in_chromium_without_internet(start_node: Any) -> None:
    chromium = require_tool("chromium", "apt-get install chromium")
    node = start_node()
    dead_proxy = f"http://127.0.0.1:{free_port()}"  # nothing listens: any request to the internet fails
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--proxy-server={dead_proxy}", "--virtual-time-budget=15000",  # loopback bypasses proxies
         "--dump-dom", base(node) + "/docs"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    assert "Unable to render this definition" not in dom
    assert 'class="opblock' in dom, dom[:2000]  # Swagger UI drew the operations
    assert "/v1/invocations" in dom
