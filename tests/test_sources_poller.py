"""DICOMweb poller against a real Orthanc (QIDO-RS + WADO-RS): counts, restarts, growth, outages, auth, backoff."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite

from dicom_node.synthetic import SeriesSpec, ct_datasets, synthetic_uid
from tests.conftest import free_port, require_tool, wait_for

NAME = "orth"
SOURCE = f"dicomweb:{NAME}"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- helpers shared with tests/test_sources_cli.py -------------------------------------------------------------


def orthanc_available() -> None:
    """Skip (or fail under DICOM_NODE_REQUIRE_PEERS=1) without Orthanc and its DICOMweb plugin."""
    require_tool("Orthanc", "apt-get install orthanc orthanc-dicomweb")
    from tests.peers.orthanc import find_dicomweb_plugin

    if find_dicomweb_plugin() is None:
        require_tool("libOrthancDicomWeb.so (orthanc-dicomweb)", "apt-get install orthanc-dicomweb")


def series(seed: str, slices: int, *, study_of: str | None = None, size: int = 16, start: int = 0) -> list[Dataset]:
    """Synthetic CT slices ``start..slices-1``; ``study_of`` puts the series into the study of that seed."""
    out = []
    for ds in ct_datasets(SeriesSpec(slices=slices, rows=size, columns=size, seed=seed)):
        if int(ds.InstanceNumber) <= start:
            continue
        if study_of is not None:
            ds.StudyInstanceUID = synthetic_uid(study_of, "study")
            ds.PatientID = "SYNTH-" + study_of[:8]
        ds.StudyDate = dt.date.today().strftime("%Y%m%d")
        out.append(ds)
    return out


def load(peer: Any, datasets: list[Dataset]) -> None:
    """Store datasets in Orthanc through its REST API (POST /instances with PS3.10 bytes)."""
    for ds in datasets:
        buf = io.BytesIO()
        dcmwrite(buf, ds, enforce_file_format=True)
        request = urllib.request.Request(peer.http_url + "/instances", data=buf.getvalue(), method="POST")
        if peer.user is not None:
            import base64

            token = base64.b64encode(f"{peer.user[0]}:{peer.user[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with _OPENER.open(request, timeout=10) as response:
            assert response.status == 200


def poller(url: str, **extra: Any) -> dict[str, Any]:
    """A [[sources.pollers]] entry with short waits."""
    entry: dict[str, Any] = {"name": NAME, "kind": "dicomweb", "url": url, "interval": 3600.0, "page_size": 2,
                             "backoff_initial": 0.3, "backoff_max": 2.0, "study_date_days": 3}
    entry.update(extra)
    return entry


def rows(node: Any, sql: str, *args: Any) -> list[Any]:
    conn = node.index.reader()
    try:
        return [tuple(r) for r in conn.execute(sql, args).fetchall()]
    finally:
        conn.close()


def source_row(node: Any) -> dict[str, Any]:
    return node.pollers.status().get(NAME, {})


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Any]:
    orthanc_available()
    from tests.peers.orthanc import run_orthanc

    with run_orthanc(tmp_path / "orthanc") as peer:
        yield peer


# -- tests ---------------------------------------------------------------------------------------------------


def test_poll_retrieves_studies_whole_and_a_restart_fetches_nothing(start_node, orthanc, tmp_path: Path) -> None:
    a1, a2, b1 = series("pa", 5), series("pa2", 3, study_of="pa"), series("pb", 4)
    old = series("pold", 2)
    for ds in old:
        ds.StudyDate = "20000101"  # outside the StudyDate window: never fetched
    load(orthanc, a1 + a2 + b1 + old)
    sources = {"pollers": [poller(orthanc.dicomweb_url, page_size=1)]}  # page_size 1: paging over 2 studies
    node = start_node(tmp_path / "node", api={"enabled": False}, sources=sources)
    assert wait_for(lambda: source_row(node).get("polls", 0) >= 1, timeout=20)
    assert source_row(node)["state"] == "idle" and source_row(node)["retrieved"] == 12
    stored = rows(node, "SELECT sop_instance_uid, series_instance_uid, source, calling_ae FROM instances")
    assert {r[0] for r in stored} == {str(ds.SOPInstanceUID) for ds in a1 + a2 + b1}
    assert {(r[2], r[3]) for r in stored} == {(SOURCE, NAME)}
    # Every series completes with the right count: the pseudo-associations were released.
    assert wait_for(lambda: node.index.counts()["complete"] == 3, timeout=10)
    counts = dict(rows(node, "SELECT series_instance_uid, instance_count FROM series"))
    assert counts == {str(a1[0].SeriesInstanceUID): 5, str(a2[0].SeriesInstanceUID): 3, str(b1[0].SeriesInstanceUID): 4}
    assert rows(node, "SELECT COUNT(*), MIN(state) FROM associations WHERE calling_ae = ?", NAME) == [(3, "released")]
    assert rows(node, "SELECT COUNT(*) FROM source_seen WHERE source = ?", NAME) == [(12,)]
    node.stop()

    # A new node on the same storage root polls again and retrieves nothing: the seen set persisted.
    again = start_node(tmp_path / "node", api={"enabled": False}, sources=sources)
    assert wait_for(lambda: source_row(again).get("polls", 0) >= 2, timeout=20)
    report = again.pollers.run_cycle(NAME)
    assert report.ok and report.arrived == [] and report.studies == 2
    assert source_row(again)["last_retrieved"] == 0 and source_row(again)["retrieved"] == 12
    assert rows(again, "SELECT COUNT(*) FROM associations WHERE calling_ae = ?", NAME) == [(3,)]
    assert again.index.counts()["instances"] == 12


def test_a_study_that_grows_gets_only_what_is_new(start_node, orthanc, tmp_path: Path) -> None:
    first = series("ga", 4)
    load(orthanc, first)
    node = start_node(api={"enabled": False}, sources={"pollers": [poller(orthanc.dicomweb_url)]})
    assert wait_for(lambda: source_row(node).get("polls", 0) >= 1, timeout=20)
    assert node.index.counts()["instances"] == 4
    # The study gains a series, and the first series gains two slices.
    new_series = series("ga2", 3, study_of="ga")
    grown = series("ga", 6, start=4)
    load(orthanc, new_series + grown)
    report = node.pollers.run_cycle(NAME)
    assert report.ok
    got = {a.series_instance_uid: (a.stored, a.duplicates) for a in report.arrived}
    assert got == {str(new_series[0].SeriesInstanceUID): (3, 0), str(first[0].SeriesInstanceUID): (2, 0)}
    assert node.index.counts()["instances"] == 9
    assert report.retrieved == 5


def _kill_orthanc(peer: Any) -> None:
    """SIGKILL the Orthanc process this test started (found by its own configuration path)."""
    config = str(peer.storage.parent / "orthanc.json").encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if config in cmdline.split(b"\0"):
            os.kill(int(pid), signal.SIGKILL)
            return
    raise AssertionError("Orthanc process not found")


def test_orthanc_killed_mid_retrieval_then_restarted_loses_nothing(start_node, tmp_path: Path) -> None:
    orthanc_available()
    from tests.peers.orthanc import run_orthanc

    folder, ports = tmp_path / "orthanc", (free_port(), free_port())
    big = series("kill", 160, size=256)  # 160 x 128 KiB: far more than the loopback socket buffers hold
    with run_orthanc(folder, http_port=ports[0], dicom_port=ports[1]) as peer:
        load(peer, big)
        node = start_node(api={"enabled": False}, sources={"pollers": [poller(peer.dicomweb_url)]})
        assert wait_for(lambda: node.index.counts()["instances"] >= 10, timeout=30)
        _kill_orthanc(peer)
    killed_at = node.index.counts()["instances"]
    assert killed_at < len(big), "the retrieval finished before Orthanc was killed; nothing was tested"
    assert wait_for(lambda: source_row(node).get("state") == "backoff", timeout=10)
    error = source_row(node)["last_error"]
    assert any(text in error for text in ("cut short", "transfer broke off", "cannot reach")), error
    with run_orthanc(folder, http_port=ports[0], dicom_port=ports[1]):
        assert wait_for(lambda: node.index.counts()["instances"] == len(big), timeout=60)
        assert wait_for(lambda: source_row(node).get("state") == "idle", timeout=10)
    uids = rows(node, "SELECT sop_instance_uid FROM instances")
    assert sorted(u for (u,) in uids) == sorted(str(ds.SOPInstanceUID) for ds in big)
    assert sum(1 for p in node.spool.files.rglob("*") if p.is_file()) == len(big)
    assert not any(node.spool.tmp.iterdir())
    assert rows(node, "SELECT COUNT(*) FROM source_seen WHERE source = ?", NAME) == [(len(big),)]
    # The interrupted pseudo-association was aborted, the retry released: the series completes once.
    states = rows(node, "SELECT state FROM associations WHERE calling_ae = ? ORDER BY started_at", NAME)
    assert states[0] == ("aborted",) and states[-1] == ("released",)
    assert wait_for(lambda: node.index.counts()["complete"] == 1, timeout=10)


def test_wrong_password_stops_the_source_and_readyz_says_so(start_node, tmp_path: Path) -> None:
    orthanc_available()
    from tests.peers.orthanc import run_orthanc

    with run_orthanc(tmp_path / "orthanc", users={"alice": "right"}) as peer:
        load(peer, series("auth", 2))
        entry = poller(peer.dicomweb_url, auth={"type": "basic", "username": "alice", "password": "wrong"})
        node = start_node(sources={"pollers": [entry]})
        assert wait_for(lambda: source_row(node).get("state") == "stopped", timeout=20)
        assert "HTTP 401" in source_row(node)["reason"]
        try:
            _OPENER.open(f"http://127.0.0.1:{node.api.port}/readyz", timeout=10)
            raise AssertionError("/readyz answered 200 with a stopped source")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            body = json.loads(exc.read())
        assert body["checks"]["sources"][NAME].startswith("stopped: ") and "401" in body["checks"]["sources"][NAME]
        # Prometheus sees it too: the stopped state, the polls and no instances retrieved.
        with _OPENER.open(f"http://127.0.0.1:{node.api.port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert f'dicom_node_source_state{{source="{NAME}",state="stopped"}} 1.0' in metrics
        assert f'dicom_node_source_state{{source="{NAME}",state="idle"}} 0.0' in metrics
        assert f'dicom_node_source_instances_retrieved_total{{source="{NAME}"}} 0.0' in metrics
        assert 'dicom_node_sessions{status="ready"} 0.0' in metrics
        # A stopped source is not polled again by the service.
        polls = source_row(node)["polls"]
        time.sleep(1.0)
        assert source_row(node)["polls"] == polls
        assert node.index.counts()["instances"] == 0


class _Flaky(BaseHTTPRequestHandler):
    """QIDO-RS stand-in: the scripted answers first (503, 503, 429 with Retry-After), then an empty result."""

    script: list[tuple[int, dict[str, str]]] = []
    times: list[float] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        type(self).times.append(time.monotonic())
        code, headers = type(self).script.pop(0) if type(self).script else (200, {})
        body = b"[]" if code == 200 else b"busy"
        self.send_response(code)
        for key, value in {"Content-Type": "application/dicom+json", **headers}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
        return


def test_503_and_429_back_off_exponentially_and_honour_retry_after(start_node) -> None:
    _Flaky.script = [(503, {}), (503, {}), (429, {"Retry-After": "1"})]
    _Flaky.times = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        node = start_node(api={"enabled": False}, sources={"pollers": [poller(url, backoff_initial=0.2)]})
        assert wait_for(lambda: source_row(node).get("state") == "backoff", timeout=10)
        row = source_row(node)
        assert "HTTP 503" in row["last_error"] and row["backoff_until"] > time.time()
        assert wait_for(lambda: len(_Flaky.times) >= 4 and source_row(node).get("state") == "idle", timeout=15)
        gaps = [b - a for a, b in zip(_Flaky.times, _Flaky.times[1:], strict=False)]
        assert gaps[0] >= 0.2 and gaps[1] >= 0.4  # 0.2 s, then doubled
        assert gaps[2] >= 1.0 and gaps[2] < 1.0 + 1.5  # Retry-After 1 s beats the 0.8 s backoff
        row = source_row(node)
        assert row["failures"] == 0 and row["polls"] == 4 and row["last_success_at"]
    finally:
        server.shutdown()
        server.server_close()


def test_a_pollers_rules_restrict_routing_of_what_it_brought_in(start_node, orthanc, ct_series: list[Path]) -> None:
    from tests.scu import send_all

    load(orthanc, series("route", 3))
    routing = {"rules": [
        {"name": "ct-all", "models": ["model-a"], "match": {"modality": "CT"}},
        {"name": "ct-pulled", "models": ["model-b"], "match": {"modality": "CT"}},
    ]}
    node = start_node(api={"enabled": False}, routing=routing,
                      sources={"pollers": [poller(orthanc.dicomweb_url, rules=["ct-pulled"])]})
    # The same kind of series pushed by C-STORE is routed by every rule.
    assert set(send_all(node.scp.port, [dcmread(p) for p in ct_series])) == {0}
    assert wait_for(lambda: len(rows(node, "SELECT id FROM jobs")) == 3, timeout=20)
    jobs = rows(node, "SELECT j.rule, j.model, i.source FROM jobs j JOIN instances i "
                      "ON i.series_instance_uid = j.series_instance_uid GROUP BY j.id, j.rule, j.model, i.source")
    assert sorted(jobs) == sorted([("ct-all", "model-a", "dimse"), ("ct-pulled", "model-b", "dimse"),
                                   ("ct-pulled", "model-b", SOURCE)])


def test_the_same_cycle_polls_a_dimse_source_by_c_find_and_c_get(start_node, tmp_path: Path) -> None:
    orthanc_available()
    from tests.peers.orthanc import run_orthanc

    first, grown = series("dq", 4), series("dq", 6, start=4)
    extra = {"DicomModalities": {"node": {"AET": "DICOM_NODE", "Host": "127.0.0.1", "Port": free_port()}}}
    with run_orthanc(tmp_path / "orthanc", extra=extra) as peer:
        load(peer, first)
        remote = {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": peer.dicom_port,
                  "retrieve": "c-get", "acse_timeout": 10, "dimse_timeout": 20, "network_timeout": 20}
        entry = {"name": NAME, "kind": "dimse", "remote": "pacs", "interval": 3600.0, "study_date_days": 3}
        node = start_node(api={"enabled": False}, sources={"remotes": [remote], "pollers": [entry]})
        assert wait_for(lambda: source_row(node).get("polls", 0) >= 1, timeout=30), source_row(node)
        assert source_row(node)["state"] == "idle", source_row(node)
        assert rows(node, "SELECT COUNT(*), MIN(source), MIN(calling_ae) FROM instances") == [(4, "qr:pacs", NAME)]
        load(peer, grown)
        report = node.pollers.run_cycle(NAME)
        assert report.ok and [(a.stored, a.duplicates) for a in report.arrived] == [(2, 0)]
        assert node.index.counts()["instances"] == 6


def test_max_studies_defers_the_rest_and_the_watermark_moves_only_after_a_full_scan(start_node, orthanc) -> None:
    from dicom_node.sources.poller import study_filters

    load(orthanc, series("m1", 2) + series("m2", 2) + series("m3", 2))
    node = start_node(api={"enabled": False},
                      sources={"pollers": [poller(orthanc.dicomweb_url, max_studies=1, page_size=10)]})
    assert wait_for(lambda: source_row(node).get("polls", 0) >= 1, timeout=20)
    assert source_row(node)["last_retrieved"] == 2 and source_row(node)["watermark"] is None
    second = node.pollers.run_cycle(NAME)
    assert second.retrieved == 2 and not second.complete and source_row(node)["watermark"] is None
    third = node.pollers.run_cycle(NAME)
    today = dt.date.today()
    assert third.retrieved == 2 and third.complete
    watermark = source_row(node)["watermark"]
    assert watermark == (today - dt.timedelta(days=3)).strftime("%Y%m%d")
    assert node.index.counts()["instances"] == 6
    # After ten days down, the next window still starts at the watermark: nothing that arrived meanwhile is missed.
    later = today + dt.timedelta(days=10)
    filters, start = study_filters(node.config.sources.pollers[0], watermark, later)
    assert filters["StudyDate"] == f"{watermark}-{later:%Y%m%d}"
    assert start == (later - dt.timedelta(days=3)).strftime("%Y%m%d")
    # Seen rows keep the StudyDate; a complete scan at the watermark keeps them (still in the window),
    # and once the window has moved past their date they go: no later query can list those studies.
    from dicom_node.index import sources as state

    dates = {r[0] for r in rows(node, "SELECT DISTINCT study_date FROM source_seen WHERE source = ?", NAME)}
    assert dates == {today.strftime("%Y%m%d")}
    node.writer.run(lambda c: state.succeeded(c, NAME, "test", time.time(), time.time() + 60, 0, watermark))
    assert rows(node, "SELECT COUNT(*) FROM source_seen WHERE source = ?", NAME) == [(6,)]
    node.writer.run(lambda c: state.mark_seen(c, NAME, [state.Seen("1.2.3.4", "1.2.3", "1.2.3.5", "stored")], 0.0))
    node.writer.run(lambda c: state.succeeded(c, NAME, "test", time.time(), time.time() + 60, 0, start))
    assert rows(node, "SELECT sop_instance_uid FROM source_seen WHERE source = ?", NAME) == [("1.2.3.4",)]


def test_retry_after_forms_and_the_accept_header_order() -> None:
    import email.utils

    from dicom_node.net.retry import parse_retry_after as retry_after_seconds
    from dicom_node.sources.dicomweb import ACCEPTED_SYNTAXES, accept_header

    now = time.time()
    assert retry_after_seconds("120") == 120.0
    assert 25 <= (retry_after_seconds(email.utils.formatdate(now + 30, usegmt=True), now) or 0) <= 31
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
    # Orthanc 1.10 honours only the last media range: Explicit VR Little Endian, which any server produces.
    header = accept_header(ACCEPTED_SYNTAXES)
    assert header.endswith('type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1')
    assert "1.2.840.10008.1.2.4.90" in header and header.count("multipart/related") == len(ACCEPTED_SYNTAXES)
