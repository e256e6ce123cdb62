"""Slow clients against a real node: trickled and stalled bodies, the upload cap, slow headers.

Each case failed on the node before ``dicom_node.api.bodyguard``: a body trickled a
byte at a time was held for as long as the client liked. The socket timeouts here
only stop a broken node from hanging the suite; no test asserts a duration.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx

from dicom_node.node import Node
from tests.test_api_predict import b64, dicom_files

ROOT = Path(__file__).resolve().parents[2]
#: Upper bound before a test calls the node hung (far above every configured timeout).
HANG = 30.0


def url(node: Node, path: str) -> str:
    return f"http://127.0.0.1:{node.api.port}{path}"


def open_upload(node: Node, path: str = "/v1/models/ct-body:predict", length: int = 100_000) -> socket.socket:
    """A connection that sent a POST's headers and no body yet."""
    sock = socket.create_connection(("127.0.0.1", node.api.port), timeout=HANG)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {length}\r\n\r\n".encode())
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the one answer on ``sock`` (raises on a hang)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed without an answer: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def start(start_node: Any, **api: Any) -> Node:
    return start_node(inference={"models_dir": str(ROOT / "engines"), "backends": ["onnxruntime"]}, api=api)


def test_hundred_tricklers_get_408_while_the_node_answers_others(start_node: Any) -> None:
    node = start(start_node, body_idle_timeout=5.0, body_min_rate=200, body_rate_grace=1.0,
                 max_concurrent_uploads=200)
    socks = [open_upload(node) for _ in range(100)]
    for s in socks:
        s.setblocking(False)
    answers: dict[int, int] = {}
    checked_others = False
    deadline = time.monotonic() + HANG
    while len(answers) < len(socks) and time.monotonic() < deadline:
        for i, s in enumerate(socks):
            if i in answers:
                continue
            try:
                s.send(b"{")  # one byte per round: far under 200 bytes/s
            except OSError:
                pass
            try:
                if s.recv(1, socket.MSG_PEEK):
                    s.setblocking(True)
                    answers[i] = read_answer(s)[0]
            except BlockingIOError:
                pass
            except OSError:
                answers[i] = 0  # closed without an answer (also a refusal)
        if not checked_others:
            # While all hundred trickle, the node still answers a health check and a real predict.
            checked_others = True
            assert httpx.get(url(node, "/healthz"), timeout=HANG).status_code == 200
            r = httpx.post(url(node, "/v1/models/ct-body:predict"), timeout=HANG,
                           json={"instances": [{"input_bytes": b64(dicom_files(1, 32, seed="slow")[0])}]})
            assert r.status_code == 200, r.text
        time.sleep(0.3)
    for s in socks:
        s.close()
    assert len(answers) == 100, f"{100 - len(answers)} trickling connections still held"
    assert set(answers.values()) <= {408, 0} and 408 in answers.values(), answers


def test_stalled_body_is_answered_408_json(start_node: Any) -> None:
    node = start(start_node, body_idle_timeout=1.0)
    with open_upload(node) as sock:
        sock.sendall(b'{"instances": [')
        status, headers, body = read_answer(sock)
    assert status == 408
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout" and "api.body_idle_timeout" in error["description"]


def test_uploads_over_the_cap_get_503_with_retry_after(start_node: Any) -> None:
    node = start(start_node, body_idle_timeout=30.0, body_min_rate=0, max_concurrent_uploads=2)
    held = [open_upload(node), open_upload(node)]
    for s in held:
        s.sendall(b"{")
    try:
        # The held uploads are in the middleware once a byte of theirs was read; poll until the cap is full.
        deadline = time.monotonic() + HANG
        while True:
            r = httpx.post(url(node, "/v1/models/ct-body:predict"), content=b"{}", timeout=HANG,
                           headers={"content-type": "application/json"})
            if r.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"].isdigit()
        assert "api.max_concurrent_uploads" in r.json()["error"]["description"]
        # Requests without a body are not uploads and still pass.
        assert httpx.get(url(node, "/healthz"), timeout=HANG).status_code == 200
    finally:
        for s in held:
            s.close()
    # Closing the held uploads frees the slots.
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        r = httpx.post(url(node, "/v1/models/ct-body:predict"), content=b"{}", timeout=HANG,
                       headers={"content-type": "application/json"})
        if r.status_code != 503:
            break
        time.sleep(0.2)
    assert r.status_code != 503


def test_slow_headers_are_closed(start_node: Any) -> None:
    node = start(start_node, header_timeout=1.0)
    with socket.create_connection(("127.0.0.1", node.api.port), timeout=HANG) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: node\r\n")
        closed = False
        for _ in range(int(HANG / 0.5)):
            try:
                sock.sendall(b"X")
            except OSError:
                closed = True
                break
            sock.settimeout(0.5)
            try:
                if sock.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        assert closed, "a connection trickling its headers was never closed"
    # A normal request on a new connection is answered.
    assert httpx.get(url(node, "/healthz"), timeout=HANG).status_code == 200
