"""Send the Clara AIAA example requests of ``tests/compat/aiaa/`` as their files write them, and check the answers.

A file holds ``request`` (``method``, ``path``, ``headers``; ``multipart`` parts as ``curl -F``
sends them, or ``data``: the text of a ``curl -d @data.json`` file) and ``expect`` (``status``,
``content_type``; ``fields``: the exact key set of a JSON object; ``list_fields``: keys every
entry of a JSON list has; ``names``/``includes``: entry names exactly/at least; ``status_field``;
``mentions``: words the answer contains; ``nifti``: the body is a NIfTI image). Placeholders
``{{NAME}}`` are filled by the test; an unfilled one fails it (the file would not be sent as written).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

COMPAT = Path(__file__).resolve().parent / "compat" / "aiaa"


def load(name: str) -> dict[str, Any]:
    """One example file."""
    return dict(json.loads((COMPAT / name).read_text()))


def fill(text: str, values: dict[str, str]) -> str:
    """Replace each ``{{NAME}}`` placeholder; an unknown one fails the test."""
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    assert "{{" not in text, f"unfilled placeholder in {text!r}"
    return text


def send(base: str, example: dict[str, Any], values: dict[str, str], files: dict[str, bytes]) -> httpx.Response:
    """Send one example as curl would: ``-F`` parts as multipart/form-data, ``-d @file`` with curl's defaults.

    ``curl -d @file`` strips carriage returns and newlines from the file and, without a
    ``Content-Type`` header, sends ``application/x-www-form-urlencoded``.
    """
    req = example["request"]
    headers = {k: fill(v, values) for k, v in req.get("headers", {}).items()}
    kwargs: dict[str, Any] = {}
    if "multipart" in req:
        kwargs["files"] = {name: (part["filename"], files[part["content"]], part["content_type"])
                           for name, part in req["multipart"].items()}
    elif "data" in req:
        text = req["data"]
        kwargs["content"] = (files[text] if text in files else fill(text, values).encode()).replace(b"\r", b"").replace(
            b"\n", b"")
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/x-www-form-urlencoded"
    return httpx.request(req["method"], base + fill(req["path"], values), headers=headers, timeout=120, **kwargs)


def check(reply: httpx.Response, example: dict[str, Any], values: dict[str, str]) -> Any:
    """Assert the documented status, content type and shape; returns the JSON answer (bytes for an image)."""
    expect = example["expect"]
    assert reply.status_code == expect["status"], reply.text[:2000]
    assert reply.headers["content-type"].split(";")[0] == expect["content_type"], reply.headers
    if expect.get("nifti"):
        assert reply.content[:2] == b"\x1f\x8b", "not a gzipped NIfTI"
        return reply.content
    body = reply.json()
    if "fields" in expect:
        assert isinstance(body, dict) and set(body) == set(expect["fields"]), body
    if "list_fields" in expect:
        assert isinstance(body, list) and all(set(expect["list_fields"]) <= set(m) for m in body), body
        names = [m["name"] for m in body]
        if "names" in expect:
            assert names == [fill(n, values) for n in expect["names"]], names
        for wanted in expect.get("includes", []):
            assert fill(wanted, values) in names, (wanted, names)
    if "status_field" in expect:
        assert body["status"] == expect["status_field"], body
    for word in expect.get("mentions", []):
        assert word in json.dumps(body), (word, body)
    return body
