"""The one outbound policy (SSRF rules) and its DNS pinning, without network peers."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from dicom_node.net.peers import DimsePeer
from dicom_node.net.policy import OutboundPolicy, OutboundRefused

CONFIGURED = OutboundPolicy.configured()

# --- the rules for operator-configured peers (moved from test_delivery_rules.py) -------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8042/dicom-web",
        "https://pacs.example.org/dicom-web/",
        "http://10.1.2.3/dicomweb",
        "http://192.168.0.5:8080/",
        "http://172.16.4.4/",
        "http://[::1]:8042/dicom-web",
        "http://localhost:8042/dicom-web",
    ],
)
def test_loopback_private_and_public_urls_pass(url: str) -> None:
    assert CONFIGURED.check_url(url).geturl() == url


#: URLs no peer may have, with the rule each breaks (also driven through the config by
#: tests/reliability/test_rel_ssrf.py).
FORBIDDEN: list[tuple[str, str]] = [
    ("http://169.254.169.254/latest/meta-data/", "169.254.0.0/16"),
    ("http://169.254.10.1:8042/", "169.254.0.0/16"),
    ("http://[fd00:ec2::254]/latest/", "fd00:ec2::254"),
    ("http://[fe80::1]/", "fe80::/10"),
    ("http://[::ffff:169.254.169.254]/", "169.254.0.0/16"),
    ("http://100.100.100.200/", "100.100.100.200"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
    ("http://0.0.0.0:8042/", "0.0.0.0/8"),
    ("ftp://pacs.example.org/", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("gopher://127.0.0.1:25/", "scheme"),
    ("http://user:pw@pacs.example.org/", "user info"),
    ("http://evil@169.254.169.254/", "user info"),
    ("http:///nohost", "no host"),
    ("http://pacs.example.org:99999/", "malformed"),
]


@pytest.mark.parametrize(("url", "why"), FORBIDDEN)
def test_forbidden_urls_are_refused_with_the_reason(url: str, why: str) -> None:
    with pytest.raises(OutboundRefused, match="refused|not allowed|no host|malformed|user info") as info:
        CONFIGURED.check_url(url)
    assert why in str(info.value) and not info.value.retryable


def test_link_local_can_be_allowed_explicitly() -> None:
    OutboundPolicy.configured(allow_link_local=True).check_url("http://169.254.1.2:8042/x")
    with pytest.raises(OutboundRefused, match="allow_link_local = true"):
        CONFIGURED.check_url("http://169.254.1.2:8042/x")


def test_resolved_host_names_are_checked() -> None:
    # "localhost" resolves to loopback: allowed for a configured peer, even when resolving.
    pin = CONFIGURED.pin("http://localhost:8042/")
    assert pin.address.is_loopback and pin.host == "localhost" and pin.port == 8042


def test_dimse_peer_hosts_follow_the_same_rules() -> None:
    with pytest.raises(ValidationError, match="169.254.0.0/16"):
        DimsePeer(ae_title="PACS", host="169.254.169.254", port=104)
    assert DimsePeer(ae_title="PACS", host="169.254.1.1", port=104, allow_link_local=True).host == "169.254.1.1"
    peer = DimsePeer(ae_title="PACS", host="localhost", port=104)
    assert peer.connect_host == "localhost" and peer.pinned().connect_host in ("127.0.0.1", "::1")


# --- the rules for caller-supplied URLs (REST: webhooks, dicomweb_uri) ----------------------------


# Caller-supplied URLs refused with their rule: tests/reliability/test_rel_ssrf.py drives them through
# every REST entry that takes a URL (predict dicomweb_uri, Webhook-Url) against a watched listener.


@pytest.mark.parametrize("entry", ["127.0.0.1", "127.0.0.0/8", "localhost"])
def test_the_allowlist_admits_a_host_an_address_or_a_network(entry: str) -> None:
    url = "http://localhost:8080/hook" if entry == "localhost" else "http://127.0.0.1:8080/hook"
    pin = OutboundPolicy.caller_supplied([entry]).pin(url)
    assert str(pin.address) in ("127.0.0.1", "::1")
    with pytest.raises(OutboundRefused):
        OutboundPolicy.caller_supplied([entry]).pin("http://10.0.0.1/hook")


def test_an_allowlisted_network_also_admits_ipv4_mapped_addresses() -> None:
    OutboundPolicy.caller_supplied(["127.0.0.0/8"]).pin("http://[::ffff:127.0.0.1]:8080/")


# --- resolution: once, every address -------------------------------------------------------------


Resolver = Callable[..., list[tuple[Any, ...]]]


def fake_resolver(answers: dict[str, list[list[str]]], calls: list[str]) -> Resolver:
    """A stand-in for ``socket.getaddrinfo`` that answers listed names from a script.

    Each lookup of a listed name takes the next answer (the last one repeats); other
    names (IP literals urllib3 resolves itself) go to the real resolver. No DNS server
    can be run in the tests, so DNS rebinding is simulated at this seam.
    """
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in answers:
            return real(host, port, *args, **kwargs)
        calls.append(name)
        script = answers[name]
        addrs = script.pop(0) if len(script) > 1 else script[0]
        out: list[tuple[Any, ...]] = []
        for addr in addrs:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            sockaddr = (addr, int(port or 0), 0, 0) if family == socket.AF_INET6 else (addr, int(port or 0))
            out.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        return out

    return getaddrinfo


def test_every_resolved_address_is_checked_not_only_the_first(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver({"mixed.test": [["8.8.8.8", "169.254.169.254"]]}, calls))
    with pytest.raises(OutboundRefused, match="169.254"):
        CONFIGURED.pin("http://mixed.test/")
    with pytest.raises(OutboundRefused, match="169.254"):
        OutboundPolicy.caller_supplied([]).pin("http://mixed.test/")


def test_a_name_that_does_not_resolve_is_a_retryable_refusal() -> None:
    with pytest.raises(OutboundRefused, match="cannot resolve") as info:
        CONFIGURED.pin("http://no-such-host.invalid/")
    assert info.value.retryable


def test_pin_resolves_once_and_returns_the_checked_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rebinding resolver answers a public address, then loopback: the pin keeps the public one."""
    calls: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver({"rebind.test": [["8.8.8.8"], ["127.0.0.1"]]}, calls))
    pin = OutboundPolicy.caller_supplied([]).pin("https://rebind.test/hook")
    assert (str(pin.address), pin.host, pin.port, pin.scheme) == ("8.8.8.8", "rebind.test", 443, "https")
    assert calls == ["rebind.test"]
