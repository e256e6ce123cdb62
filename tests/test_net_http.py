"""The one HTTP client against real servers on loopback: pinning, Host header, TLS on the name, bounds."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dicom_node.net.auth import BearerAuth
from dicom_node.net.http import Outbound, fetch, new_session, post
from dicom_node.net.policy import OutboundError, OutboundPolicy, OutboundRefused
from tests.test_net_policy import fake_resolver


class _Handler(BaseHTTPRequestHandler):
    """Answers by path: /ok (a body), /big (a large body), /redirect (302), /status/NNN; records requests."""

    seen: ClassVar[list[tuple[str, str, dict[str, str], bytes]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        type(self).seen.append((self.command, self.path, dict(self.headers.items()), body))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        code, payload = 200, b"hello"
        if self.path == "/big":
            payload = b"x" * 100_000
        elif self.path.startswith("/status/"):
            code, payload = int(self.path.rsplit("/", 1)[1]), b""
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        if code == 503:
            self.send_header("Retry-After", "7")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _answer  # noqa: N815 (the name http.server dispatches to)
    do_POST = _answer  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
        return


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    _Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def _port(httpd: ThreadingHTTPServer) -> int:
    return int(httpd.server_address[1])


#: The Outbound service as the node builds it with ``api.outbound_allowlist = ["127.0.0.1"]``.
ALLOWED = Outbound(["127.0.0.1"])
#: ... and with an empty allowlist (the default).
DEFAULT = Outbound()


def test_fetch_and_post_reach_an_allowlisted_loopback_server(server: ThreadingHTTPServer) -> None:
    base = f"http://127.0.0.1:{_port(server)}"
    reply = ALLOWED.fetch(base + "/ok", {"Accept": "text/plain"}, max_bytes=1000)
    assert reply.status_code == 200 and reply.content == b"hello" and reply.headers["content-type"] == "text/plain"
    assert ALLOWED.post(base + "/hook", b'{"a": 1}', {"Content-Type": "application/json"}).status_code == 200
    assert [(m, p, b) for m, p, _h, b in _Handler.seen] == [("GET", "/ok", b""), ("POST", "/hook", b'{"a": 1}')]
    assert _Handler.seen[0][2]["Host"] == f"127.0.0.1:{_port(server)}"


def test_without_the_allowlist_nothing_is_sent(server: ThreadingHTTPServer) -> None:
    with pytest.raises(OutboundRefused, match="loopback"):
        DEFAULT.check(f"http://127.0.0.1:{_port(server)}/hook")
    assert ALLOWED.check(f"http://127.0.0.1:{_port(server)}/hook").endswith("/hook")
    with pytest.raises(OutboundRefused, match="loopback"):
        DEFAULT.post(f"http://127.0.0.1:{_port(server)}/hook", b"{}", {})
    with pytest.raises(OutboundRefused, match="api.outbound_allowlist"):
        DEFAULT.fetch(f"http://127.0.0.1:{_port(server)}/ok", {}, 1000)
    with pytest.raises(OutboundRefused, match="scheme"):  # every scheme reaches the policy, not a requests error
        ALLOWED.fetch("file:///etc/passwd", {}, 1000)
    assert _Handler.seen == []


def test_redirects_are_not_followed_and_bodies_are_bounded(server: ThreadingHTTPServer) -> None:
    base = f"http://127.0.0.1:{_port(server)}"
    with pytest.raises(OutboundRefused, match="redirect .* not followed") as info:
        ALLOWED.fetch(base + "/redirect", {}, 1000)
    assert not info.value.retryable
    # A 3xx to a POST (webhooks) is a permanent failure too, not an answer to retry.
    with pytest.raises(OutboundRefused, match=r"redirect \(302\) to 169.254.169.254 not followed") as info:
        ALLOWED.post(base + "/redirect", b"", {})
    assert not info.value.retryable
    with pytest.raises(OutboundError, match="larger than 1000 bytes"):
        ALLOWED.fetch(base + "/big", {}, 1000)
    reply = ALLOWED.post(base + "/status/503", b"", {})
    assert reply.status_code == 503 and reply.headers["Retry-After"] == "7"
    assert [p for _m, p, _h, _b in _Handler.seen] == ["/redirect", "/redirect", "/big", "/status/503"]


def test_a_connection_failure_is_a_retryable_outbound_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(OutboundError, match="request failed") as info:
        post(f"http://127.0.0.1:{port}/", OutboundPolicy.configured(), b"", {}, timeout=2)
    assert info.value.retryable and not isinstance(info.value, OutboundRefused)


def test_session_checks_each_request_and_carries_credentials(server: ThreadingHTTPServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n", encoding="utf-8")
    with new_session(OutboundPolicy.configured(), BearerAuth(type="bearer", token_file=token)) as session:
        assert session.get(f"http://127.0.0.1:{_port(server)}/ok", timeout=5).status_code == 200
        with pytest.raises(OutboundRefused, match="169.254"):
            session.get("http://169.254.169.254/latest/meta-data/", timeout=5)
        with pytest.raises(requests.TooManyRedirects):
            session.get(f"http://127.0.0.1:{_port(server)}/redirect", timeout=5)
    assert _Handler.seen[0][2]["Authorization"] == "Bearer s3cret"


# --- DNS pinning (rebinding simulated at socket.getaddrinfo: no DNS server can run in the tests) ----


def test_the_connection_goes_to_the_checked_address_not_a_second_answer(
    server: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """First answer 127.0.0.1 (allowlisted, where the server listens), then 127.0.0.2: the request still
    reaches 127.0.0.1, so the name was resolved once and the checked address connected to."""
    calls: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver({"hooks.test": [["127.0.0.1"], ["127.0.0.2"]]}, calls))
    reply = ALLOWED.post(f"http://hooks.test:{_port(server)}/hook", b"{}", {})
    assert reply.status_code == 200 and calls == ["hooks.test"]
    assert _Handler.seen[0][2]["Host"] == f"hooks.test:{_port(server)}"


def test_a_rebinding_resolver_cannot_lead_to_loopback(server: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A public address first, 127.0.0.1 the second time: the only connection attempted is to the public one."""
    calls: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver({"rebind.test": [["8.8.8.8"], ["127.0.0.1"]]}, calls))
    connects: list[Any] = []
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        connects.append(address)
        if address[0] != "127.0.0.1":  # keep the test off the internet: the public address is "unreachable"
            raise OSError(101, "Network is unreachable (test)")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    with pytest.raises(OutboundError) as info:
        post(f"http://rebind.test:{_port(server)}/hook", OutboundPolicy.caller_supplied([]), b"{}", {}, timeout=2)
    assert info.value.retryable and not isinstance(info.value, OutboundRefused)
    assert calls == ["rebind.test"]
    assert [a[0] for a in connects] == ["8.8.8.8"]
    assert _Handler.seen == []


# --- TLS: connect to the pinned address, verify the certificate against the name -------------------


def _tls_files(tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for ``name`` (no IP address in it), as PEM files."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_file, cert_file, key_file


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[ThreadingHTTPServer, Path, list[str]]]:
    ca_file, cert_file, key_file = _tls_files(tmp_path, "pacs.test")
    sni: list[str] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    context.sni_callback = lambda _sock, name, _ctx: sni.append(str(name))  # type: ignore[assignment,misc]
    _Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd, ca_file, sni
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_https_to_a_pinned_address_verifies_the_certificate_of_the_name(
    tls_server: tuple[ThreadingHTTPServer, Path, list[str]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    httpd, ca_file, sni = tls_server
    calls: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver(
        {"pacs.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]}, calls))
    with new_session(OutboundPolicy.configured(), ca_file=ca_file) as session:
        response = session.get(f"https://pacs.test:{_port(httpd)}/ok", timeout=5)
        assert response.status_code == 200 and response.content == b"hello"
        # Same address, another name: the certificate (for pacs.test) must not be accepted.
        with pytest.raises(requests.exceptions.SSLError):
            session.get(f"https://other.test:{_port(httpd)}/ok", timeout=5)
    assert sni[:2] == ["pacs.test", "other.test"]
    assert _Handler.seen[0][2]["Host"] == f"pacs.test:{_port(httpd)}" and len(_Handler.seen) == 1


def test_fetch_uses_the_same_stack(server: ThreadingHTTPServer) -> None:
    reply = fetch(f"http://127.0.0.1:{_port(server)}/ok", OutboundPolicy.configured(), {}, 10)
    assert reply.content == b"hello" and not reply.is_redirect
