"""SSRF through every entry a user reaches that takes a URL, against a real node and a watched listener.

Entries: ``dicomweb_uri`` of ``POST /v1/models/{name}:predict`` (a per-instance
``fetch_failed`` with the rule), ``Webhook-Url`` of ``POST /v1/invocations`` (400
``webhook_refused``), ``PUT /v1/sessions`` (takes configured names only, never a
URL), and the operator's URLs in config (``[[sources.pollers]]`` DICOMweb sources,
``[[delivery.destinations]]`` STOW-RS), which may name private hosts (PACS live
there) but never link-local or metadata addresses. Every form is also tried behind
a redirect from an allowlisted server, with hops allowed.

The forms that can point at this machine aim at a listener on 127.0.0.2 (loopback,
never allowlisted here) and, where IPv6 loopback exists, one on ``[::1]``; both count
the connections they accept, and every test ends asserting they saw none. A host
name that resolves to the listener is simulated at ``socket.getaddrinfo``, the
resolver the policy uses (no DNS server can run in the tests).
"""

from __future__ import annotations

import io
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from pydantic import ValidationError

from dicom_node.config import NodeConfig
from dicom_node.node import Node
from tests.conftest import node_config, wait_for
from tests.reliability.test_rel_redirects import Watcher, redirector  # noqa: F401 (fixture)
from tests.test_net_policy import FORBIDDEN, fake_resolver

ENGINES = Path(__file__).resolve().parents[2] / "engines"

#: Caller URLs refused with the rule they break (moved here from test_net_policy.py).
RULES = [
    ("http://127.0.0.1:9/hook", "loopback"),
    ("http://10.20.30.40/hook", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://[fc00::1]/hook", "private"),
    ("http://100.64.0.1/hook", "non-public"),
    ("http://localhost/hook", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "169.254"),
    ("http://[fd00:ec2::254]/latest/", "fd00:ec2::254"),
    ("http://[fe80::1]/", "fe80::/10"),
    ("http://100.100.100.200/", "100.100.100.200"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
    ("http://0.0.0.0:9/", "0.0.0.0/8"),
    ("file:///etc/passwd", "scheme"),
    ("gopher://127.0.0.1:25/", "scheme"),
]


def watched_forms(port: int, port6: int | None) -> list[str]:
    """Every spelling of the watched listener's address a URL parser or resolver may accept."""
    forms = [
        f"http://127.0.0.2:{port}/",
        f"http://2130706434:{port}/",             # decimal
        f"http://0177.0.0.2:{port}/",             # octal
        f"http://0x7f000002:{port}/",             # hex
        f"http://0x7f.0.0.2:{port}/",             # mixed
        f"http://127.2:{port}/",                  # short form
        f"http://[::ffff:127.0.0.2]:{port}/",     # IPv4-mapped IPv6
        f"http://user@127.0.0.2:{port}/",         # user info
        f"http://public.example.org@127.0.0.2:{port}/",
        f"http://127.0.0.2:{port}#@public.example.org/",
        f"http://127.0.0.2:{port}\\@public.example.org/",
        f"http://watched.example:{port}/",       # a name resolving to the listener
    ]
    if port6 is not None:
        forms.append(f"http://[::1]:{port6}/")
    return forms


@pytest.fixture
def watchers(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Watcher, Watcher | None]]:
    try:
        v4 = Watcher("127.0.0.2")
    except OSError as exc:
        pytest.skip(f"cannot listen on 127.0.0.2: {exc}")
    try:
        v6: Watcher | None = Watcher("::1") if socket.has_ipv6 else None
    except OSError:
        v6 = None
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver({"watched.example": [["127.0.0.2"]]}, []))
    yield v4, v6
    v4.close()
    if v6 is not None:
        v6.close()


def _connections(watchers: tuple[Watcher, Watcher | None]) -> int:
    return sum(w.connections for w in watchers if w is not None)


def _forms(watchers: tuple[Watcher, Watcher | None]) -> list[str]:
    v4, v6 = watchers
    return watched_forms(v4.port, v6.port if v6 is not None else None)


def predict_uris(node: Node, uris: list[str]) -> list[dict[str, Any]]:
    r = httpx.post(f"http://127.0.0.1:{node.api.port}/v1/models/ct-body:predict", timeout=120,
                   json={"instances": [{"dicomweb_uri": u} for u in uris]})
    assert r.status_code == 200, r.text
    return list(r.json()["predictions"])


def invoke(node: Node, webhook: str) -> httpx.Response:
    from tests.test_api_invocations import dicom_bytes

    return httpx.post(f"http://127.0.0.1:{node.api.port}/v1/invocations", headers={"Webhook-Url": webhook},
                      files={"image": ("scan.dcm", io.BytesIO(dicom_bytes()), "application/octet-stream")}, timeout=60)


def test_predict_dicomweb_uri_refuses_every_form(start_node: Any, watchers: tuple[Watcher, Watcher | None]) -> None:
    node = start_node(inference={"models_dir": str(ENGINES), "backends": ["onnxruntime"]})
    forms = _forms(watchers)
    for uri, prediction in zip(forms, predict_uris(node, forms), strict=True):
        assert prediction.get("error", {}).get("code") == "fetch_failed", (uri, prediction)
    uris = [u for u, _ in RULES]
    for (uri, why), prediction in zip(RULES, predict_uris(node, uris), strict=True):
        error = prediction.get("error", {})
        assert error.get("code") == "fetch_failed" and why in error.get("description", ""), (uri, prediction)
    assert _connections(watchers) == 0


def test_webhook_url_refuses_every_form(start_node: Any, watchers: tuple[Watcher, Watcher | None]) -> None:
    node = start_node(inference={"models_dir": str(ENGINES), "backends": ["onnxruntime"]})
    for url in _forms(watchers):
        r = invoke(node, url)
        assert r.status_code == 400 and r.json()["error"]["code"] == "webhook_refused", (url, r.text)
    for url, why in RULES:
        r = invoke(node, url)
        assert r.status_code == 400, (url, r.text)
        assert why in r.json()["error"]["description"], (url, r.text)
    assert _connections(watchers) == 0


def test_redirects_to_every_form_are_refused_hop_by_hop(start_node: Any, redirector: str,  # noqa: F811
                                                        watchers: tuple[Watcher, Watcher | None]) -> None:
    """The redirector is allowlisted and hops are allowed: each hop still meets the policy."""
    node = start_node(inference={"models_dir": str(ENGINES), "backends": ["onnxruntime"]},
                      api={"outbound_allowlist": ["127.0.0.1"], "outbound_max_redirects": 3})
    # Not the rules' 127.0.0.1 and localhost forms: this node allowlists 127.0.0.1 for the redirector.
    forms = [f for f in _forms(watchers) if "watched.example" not in f] + [
        u for u, _ in RULES if u.startswith("http") and "127.0.0.1" not in u and "localhost" not in u]
    hops = [f"{redirector}/r/{code}?to={quote(target, safe='')}" for target in forms for code in (302, 307)]
    for hop, prediction in zip(hops, predict_uris(node, hops[:32]), strict=False):
        assert prediction.get("error", {}).get("code") == "fetch_failed", (hop, prediction)
    for hop, prediction in zip(hops[32:], predict_uris(node, hops[32:]), strict=False):
        assert prediction.get("error", {}).get("code") == "fetch_failed", (hop, prediction)
    # A webhook accepted for the allowlisted redirector fails at the hop, for good, without a connection.
    r = invoke(node, f"{redirector}/r/307?to={watchers[0].url}")
    assert r.status_code == 202, r.text
    rid = r.json()["request_uuid"]

    def webhook() -> dict[str, Any]:
        return dict(httpx.get(f"http://127.0.0.1:{node.api.port}/v1/invocations/{rid}", timeout=30).json()["webhook"])

    assert wait_for(lambda: webhook()["state"] not in ("pending", "none"), 60), webhook()
    assert webhook()["state"] in ("refused", "failed") and "loopback" in str(webhook()), webhook()
    assert _connections(watchers) == 0


def test_sessions_take_configured_names_never_urls(start_node: Any, watchers: tuple[Watcher, Watcher | None]) -> None:
    node = start_node()
    url = f"http://127.0.0.1:{node.api.port}/v1/sessions"
    target = watchers[0].url
    for body in ({"dicomweb": {"node": "x", "url": target}}, {"dicomweb": {"node": target, "study_uid": "1.2.3"}},
                 {"dicom": {"server_address": "127.0.0.2", "server_port": watchers[0].port, "ae_title": "ANY",
                            "study_uid": "1.2.3"}}):
        r = httpx.put(url, json=body, timeout=30)
        assert r.status_code in (400, 403) and "error" in r.json(), (body, r.text)
    assert _connections(watchers) == 0


@pytest.mark.parametrize(("url", "why"), FORBIDDEN)
def test_configured_dicomweb_sources_and_stow_destinations_refuse_metadata(tmp_path: Path, url: str, why: str) -> None:
    """Operator URLs may be private (a PACS) but never link-local or metadata; the config says so at load."""
    with pytest.raises(ValidationError, match=re.escape(why)):
        node_config(tmp_path, sources={"pollers": [{"name": "src", "kind": "dicomweb", "url": url}]})
    with pytest.raises(ValidationError, match=re.escape(why)):
        node_config(tmp_path, delivery={"destinations": [{"name": "pacs", "kind": "stowrs", "url": url}]})
    assert isinstance(node_config(tmp_path), NodeConfig)
