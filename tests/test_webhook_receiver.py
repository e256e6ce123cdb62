"""A webhook receiver written only from the README verifies what a real node sends.

The README says: the body is POSTed with ``X-Signature-SHA256: sha256=<hex>``, the
HMAC-SHA256 of the raw body keyed with the content of ``api.webhook_secret_file``
or ``<storage.root>/webhook.key`` (64 hex characters made at first start), leading
and trailing ASCII whitespace removed. The receiver here is a plain stdlib
``http.server`` on loopback that checks the header itself, as a RIS would.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import wait_for

ENGINES = Path(__file__).resolve().parents[1] / "engines"


class ReadmeReceiver:
    """An HTTP server on loopback that verifies each POST with the key ``key()`` returns at that moment."""

    def __init__(self, key: Callable[[], bytes]) -> None:
        self.verdicts: list[bool] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw_body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                header = self.headers.get("X-Signature-SHA256", "")
                expected = "sha256=" + hmac.new(key(), raw_body, hashlib.sha256).hexdigest()
                outer.verdicts.append(hmac.compare_digest(header, expected))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                """Silence the default stderr access log."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


def dicom_bytes() -> bytes:
    buf = io.BytesIO()
    next(ct_datasets(SeriesSpec(slices=1, rows=32, columns=32, seed="receiver"))).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def invoke(node: Node, url: str) -> None:
    r = httpx.post(f"http://127.0.0.1:{node.api.port}/v1/invocations", headers={"Webhook-Url": url},
                   files={"image": ("scan.dcm", dicom_bytes(), "application/dicom")}, timeout=30)
    assert r.status_code == 202, r.text


@pytest.fixture
def receivers() -> Iterator[list[ReadmeReceiver]]:
    made: list[ReadmeReceiver] = []
    yield made
    for r in made:
        r.close()


def start(start_node: Any, **api: Any) -> Node:
    return start_node(inference={"models_dir": str(ENGINES), "backends": ["onnxruntime"]},
                      api={"outbound_allowlist": ["127.0.0.1"], **api})


def test_generated_key_file_is_exactly_the_key(start_node: Any, receivers: list[ReadmeReceiver]) -> None:
    node = start(start_node)
    key_file = node.config.storage.root / "webhook.key"
    assert re.fullmatch(rb"[0-9a-f]{64}", key_file.read_bytes())  # no trailing newline to trip a receiver
    receiver = ReadmeReceiver(key_file.read_bytes)  # the file's content, byte for byte
    receivers.append(receiver)
    invoke(node, receiver.url)
    assert wait_for(lambda: len(receiver.verdicts) == 1, 30)
    assert receiver.verdicts == [True]


def test_hand_edited_key_file_is_stripped(start_node: Any, receivers: list[ReadmeReceiver], tmp_path: Path) -> None:
    key_file = tmp_path / "hook.secret"
    key_file.write_bytes(b"  correct horse battery staple\n")  # as an editor saves it, with stray spaces
    node = start(start_node, webhook_secret_file=str(key_file))
    stripped = ReadmeReceiver(lambda: key_file.read_bytes().strip())
    verbatim = ReadmeReceiver(key_file.read_bytes)
    receivers += [stripped, verbatim]
    invoke(node, stripped.url)
    invoke(node, verbatim.url)
    assert wait_for(lambda: len(stripped.verdicts) == 1 and len(verbatim.verdicts) == 1, 30)
    assert stripped.verdicts == [True]
    assert verbatim.verdicts == [False]  # the whitespace is not part of the key, as the README says
