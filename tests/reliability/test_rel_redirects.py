"""Outbound redirects against real local HTTP servers: never followed by default, every hop checked when allowed.

Before this suite a 3xx answer to a webhook POST was retried as pending for ever
(10 attempts); now a redirect is a permanent failure of the URL unless
``api.outbound_max_redirects`` allows hops, and then each hop passes the one
outbound policy (and its DNS pinning) like the first request. The disallowed
target is a listener on 127.0.0.2 (loopback, not in the allowlist ``127.0.0.1``)
that counts the connections it accepts: it must see none.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

from dicom_node.net.http import Outbound
from dicom_node.net.policy import OutboundRefused
from tests.conftest import wait_for
from tests.test_api_invocations import dicom_bytes, invoke, start, status

CODES = (301, 302, 307, 308)


class _Redirector(BaseHTTPRequestHandler):
    """``/r/<code>?to=<url>`` answers ``code`` with Location ``to``; ``/ok`` answers 200 with the body it got."""

    seen: ClassVar[list[tuple[str, str, bytes]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        type(self).seen.append((self.command, self.path, body))
        parts = urlsplit(self.path)
        if parts.path.startswith("/r/"):
            self.send_response(int(parts.path.rsplit("/", 1)[1]))
            self.send_header("Location", parse_qs(parts.query)["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        payload = b"hello" + body
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _answer  # noqa: N815 (the name http.server dispatches to)
    do_POST = _answer  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
        return


class Watcher:
    """A listener that counts every connection it accepts (the place SSRF must never reach)."""

    def __init__(self, host: str = "127.0.0.2") -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.host = host
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def redirector() -> Iterator[str]:
    _Redirector.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def watcher() -> Iterator[Watcher]:
    try:
        w = Watcher()
    except OSError as exc:  # 127.0.0.2 is loopback on Linux; elsewhere it may not be bindable
        pytest.skip(f"cannot listen on 127.0.0.2: {exc}")
    yield w
    w.close()


@pytest.mark.parametrize("code", CODES)
def test_a_redirect_is_a_permanent_failure_by_default(code: int, redirector: str, watcher: Watcher) -> None:
    outbound = Outbound(["127.0.0.1"])
    for target in (f"{redirector}/ok", watcher.url):
        hop = f"{redirector}/r/{code}?to={target}"
        host = urlsplit(target).hostname
        with pytest.raises(OutboundRefused, match=rf"redirect \({code}\) to {host} not followed") as info:
            outbound.fetch(hop, {}, 1000)
        assert not info.value.retryable
        with pytest.raises(OutboundRefused, match="not followed") as info:
            outbound.post(hop, b"{}", {})
        assert not info.value.retryable
    assert [p for _m, p, _b in _Redirector.seen if p == "/ok"] == []  # the allowed target was not reached either
    assert watcher.connections == 0


@pytest.mark.parametrize("code", CODES)
def test_allowed_hops_are_each_checked(code: int, redirector: str, watcher: Watcher) -> None:
    outbound = Outbound(["127.0.0.1"], max_redirects=2)
    assert outbound.fetch(f"{redirector}/r/{code}?to={redirector}/ok", {}, 1000).content == b"hello"
    for target in (watcher.url, "http://169.254.169.254/latest/meta-data/", "http://[::ffff:127.0.0.2]/"):
        with pytest.raises(OutboundRefused) as info:
            outbound.fetch(f"{redirector}/r/{code}?to={target}", {}, 1000)
        assert not info.value.retryable
    # POST keeps its method and body only through 307 and 308; 301 and 302 would turn it into a GET.
    hop = f"{redirector}/r/{code}?to={redirector}/ok"
    if code in (307, 308):
        assert outbound.post(hop, b"payload", {}).status_code == 200
        assert ("POST", "/ok", b"payload") in _Redirector.seen
    else:
        with pytest.raises(OutboundRefused, match="POST into a GET"):
            outbound.post(hop, b"payload", {})
    assert watcher.connections == 0


def test_the_hop_limit_holds(redirector: str) -> None:
    outbound = Outbound(["127.0.0.1"], max_redirects=2)
    chain = f"{redirector}/ok"
    for _ in range(3):
        chain = f"{redirector}/r/302?to={chain}"
    with pytest.raises(OutboundRefused, match="more than 2 hops"):
        outbound.fetch(chain, {}, 1000)
    assert [p for _m, p, _b in _Redirector.seen if p == "/ok"] == []


def test_a_webhook_answered_with_a_redirect_fails_at_once(start_node: Any, redirector: str, watcher: Watcher) -> None:
    node = start(start_node)
    r = invoke(node, dicom_bytes(), {"Webhook-Url": f"{redirector}/r/302?to={watcher.url}"})
    assert r.status_code == 202, r.text
    rid = r.json()["request_uuid"]
    assert wait_for(lambda: status(node, rid)["webhook"]["state"] not in ("pending", "none"), 30)
    webhook = status(node, rid)["webhook"]
    assert webhook["state"] in ("refused", "failed") and webhook["attempts"] == 1, webhook
    assert "not followed" in str(webhook), webhook
    assert watcher.connections == 0
