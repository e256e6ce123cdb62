"""The published OHIF viewer, in headless Chromium, browses the node's DICOMweb and shows its results.

Real parts only: the node (C-STORE in, ``ct-body`` on ONNX Runtime, SEG + SR
written), ``@ohif/app``'s built ``dist/`` from npm (``tests/peers/install_ohif.sh``)
served by ``dicom-node viewer``'s app on its own origin (so every DICOMweb call is
cross-origin and goes through the node's CORS), Debian's Chromium driven by
Playwright's Python API (no browser download). The test asserts on the page:
the study row in the study list, the CT and the result series in the study
browser, and the segment label of the node's SEG in the segmentation panel
once the SEG is loaded as an overlay. Screenshots go to the test's tmp folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
import uvicorn
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicom_node.api.viewer import default_dist, viewer_app
from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, write_ct_series
from tests.conftest import free_port, peers_required, wait_for

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
API_KEY = "viewer-test-key-0123456789abcdef"


def _missing(reason: str) -> None:
    if peers_required():
        pytest.fail(f"{reason} (DICOM_NODE_REQUIRE_PEERS=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def ohif_dist() -> Path:
    dist = Path(os.environ.get("DICOM_NODE_OHIF_DIST") or default_dist())
    if not (dist / "index.html").is_file():
        _missing(f"OHIF viewer not found at {dist}: run tests/peers/install_ohif.sh (needs npm)")
    return dist


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        _missing("chromium not installed (Debian package chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("playwright (Python) not installed: pip install -e '.[test]'")
    return str(path)


@pytest.fixture
def serve_viewer() -> Iterator[Callable[[Path, str, int, str | None], str]]:
    servers: list[uvicorn.Server] = []

    def _serve(dist: Path, dicomweb_root: str, port: int, token: str | None = None) -> str:
        server = uvicorn.Server(uvicorn.Config(viewer_app(dist, dicomweb_root, token), host="127.0.0.1", port=port,
                                               log_level="warning", lifespan="off"))
        threading.Thread(target=server.run, name="viewer", daemon=True).start()
        assert wait_for(lambda: server.started, 15)
        servers.append(server)
        return f"http://127.0.0.1:{port}"

    yield _serve
    for server in servers:
        server.should_exit = True


def _send(node: Node, files: list[Path]) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="DICOM_NODE")
    assert assoc.is_established
    try:
        for path in files:
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0
    finally:
        assoc.release()


def _jobs_done(base: str, headers: dict[str, str]) -> bool:
    jobs = requests.get(f"{base}/v1/jobs", headers=headers, timeout=10).json()["jobs"]
    return bool(jobs) and all(job["status"] == "done" for job in jobs)


def test_ohif_shows_the_study_the_ct_and_the_seg_overlay(start_node: Any, tmp_path: Path, ohif_dist: Path, chromium: str,
                                                         serve_viewer: Callable[..., str]) -> None:
    from playwright.sync_api import sync_playwright

    viewer_port = free_port()
    origin = f"http://127.0.0.1:{viewer_port}"
    # A viewer that logs in with a bearer token: the node requires a key for everything, as in production.
    node = start_node(
        api={"cors_allowed_origins": [origin], "api_keys": [{"name": "viewer", "sha256": hashlib.sha256(API_KEY.encode()).hexdigest(),
                                                              "scopes": ["read"]}]},
        inference={"models_dir": str(ROOT / "engines"), "backends": ["onnxruntime"]},
        routing={"rules": [{"name": "ct", "models": ["ct-body"], "destinations": [], "match": {"modality": "CT"}}]})
    base = f"http://127.0.0.1:{node.api.port}"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    _send(node, write_ct_series(tmp_path / "ct", SeriesSpec(slices=16, rows=128, columns=128, seed="ohif")))
    assert wait_for(lambda: _jobs_done(base, headers), 120), "the ct-body job did not finish"
    assert requests.get(f"{base}/dicomweb/studies", timeout=10).status_code == 401  # the token is what lets OHIF in
    study = requests.get(f"{base}/dicomweb/studies", headers=headers, timeout=10).json()[0]["0020000D"]["Value"][0]

    viewer = serve_viewer(ohif_dist, f"{base}/dicomweb", viewer_port, API_KEY)
    failures: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            # A returning user: OHIF's first-visit tour (a modal overlay that swallows clicks, shown a moment
            # after the viewer opens) and its investigational-use notice were dismissed before. Clicking them
            # away raced their appearance and failed CI.
            page.add_init_script("localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"
                                 "sessionStorage.setItem('investigationalUseDialog', 'hidden');")
            page.on("response", lambda r: failures.append(f"{r.status} {r.url}")
                    if "/dicomweb/" in r.url and r.status >= 400 else None)
            page.goto(f"{viewer}/")
            # The study list: one row, the patient and the modalities of the CT and the node's results.
            row = page.get_by_text("SYNTHETIC, PHANTOM")
            row.first.wait_for(timeout=60_000)
            page.get_by_text("CT\\SEG\\SR").first.wait_for(timeout=10_000)
            page.screenshot(path=str(tmp_path / "ohif-study-list.png"))

            page.goto(f"{viewer}/viewer?StudyInstanceUIDs={study}")
            page.get_by_text("Synthetic CT").first.wait_for(timeout=60_000)
            page.locator('[data-cy="study-browser-thumbnail"]').first.wait_for(timeout=30_000)
            page.get_by_text("AI measurement report").first.wait_for(timeout=10_000)
            # Load the SEG as an overlay on the CT, then open the segmentation panel.
            page.get_by_text("AI segmentation").first.dblclick()
            page.get_by_role("button", name="Yes").first.click(timeout=60_000)  # "Do you want to open this Segmentation?"
            page.locator('[data-cy="panelSegmentation-btn"]').click()
            page.get_by_text("Body", exact=True).first.wait_for(timeout=60_000)
            time.sleep(2)  # let the overlay render before the picture is taken
            page.screenshot(path=str(tmp_path / "ohif-seg-overlay.png"))
        finally:
            browser.close()
    assert not failures, failures
    assert (tmp_path / "ohif-seg-overlay.png").stat().st_size > 10_000
