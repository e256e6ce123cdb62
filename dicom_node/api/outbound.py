"""Outbound URLs of the REST facade (``dicomweb_uri`` fetches, webhooks), checked against SSRF.

The REST facade fetches and posts to URLs that *callers* choose, so it is
stricter than result delivery (whose destinations an operator configures):
on top of :func:`dicom_node.delivery.config.check_outbound_url` (http/https
only, no user info, no link-local or cloud metadata address), every address
the host resolves to must be public: loopback, private (RFC 1918, fc00::/7),
shared (100.64/10), reserved and unspecified ranges are refused unless the
host, the address or a network holding it is listed in ``api.outbound_allowlist``.

The check runs when a URL is accepted and again just before each connection.
Redirects are never followed (a redirect could point anywhere), and response
bodies are read with a size bound.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx

from dicom_node.delivery.config import check_outbound_url
from dicom_node.errors import DeliveryError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class OutboundRefused(Exception):
    """A caller-supplied URL may not be contacted; the message says why (safe to return to the caller)."""


def _allowed(host: str, addr: Address | None, allowlist: Sequence[str]) -> bool:
    for entry in allowlist:
        entry = entry.strip().lower()
        if entry == host:
            return True
        if addr is None:
            continue
        try:
            if addr in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def _non_public(addr: Address) -> str | None:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for label, flag in (("loopback", addr.is_loopback), ("link-local", addr.is_link_local),
                        ("private", addr.is_private), ("reserved", addr.is_reserved),
                        ("multicast", addr.is_multicast), ("unspecified", addr.is_unspecified)):
        if flag:
            return label
    if not addr.is_global:
        return "non-public"
    return None


def _resolve(host: str) -> list[Address]:
    try:
        return [ipaddress.ip_address(host.split("%", 1)[0])]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise OutboundRefused(f"cannot resolve host {host!r}: {exc.strerror or exc}") from exc
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def check_url(url: str, allowlist: Sequence[str], *, resolve: bool = True) -> str:
    """Check a caller-supplied URL; return it unchanged when it may be contacted.

    Parameters
    ----------
    url : str
        The URL (``Webhook-Url`` header, ``dicomweb_uri``).
    allowlist : sequence of str
        ``api.outbound_allowlist``: host names, IP addresses or networks (CIDR)
        allowed although they are not public.
    resolve : bool
        Resolve the host name and check every address (True just before sending).

    Returns
    -------
    str

    Raises
    ------
    OutboundRefused
        With the rule that refused it.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".").lower()
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    host_allowed = bool(host) and _allowed(host, literal, allowlist)
    try:
        check_outbound_url(url, allow_link_local=host_allowed)
    except DeliveryError as exc:
        raise OutboundRefused(str(exc).replace("; set allow_link_local = true to allow it", "")) from exc
    if not resolve:
        return url
    for addr in _resolve(host):
        reason = _non_public(addr)
        if reason is not None and not _allowed(host, addr, allowlist):
            raise OutboundRefused(
                f"host {host!r} resolves to {reason} address {addr}; refused (add it to api.outbound_allowlist to allow it)"
            )
    return url


def fetch(url: str, allowlist: Sequence[str], headers: dict[str, str], max_bytes: int,
          timeout: float = 30.0) -> httpx.Response:
    """GET ``url`` after :func:`check_url`, without following redirects, reading at most ``max_bytes``.

    Returns
    -------
    httpx.Response
        With its body read (``response.content``).

    Raises
    ------
    OutboundRefused
        The URL is refused, the server redirects, the body is too large or the request fails.
    """
    check_url(url, allowlist)
    try:
        with httpx.Client(follow_redirects=False, timeout=timeout, trust_env=False) as client, \
                client.stream("GET", url, headers=headers) as response:
            if response.is_redirect:
                raise OutboundRefused(f"the server answered a redirect ({response.status_code}); redirects are not followed")
            if response.status_code != 200:
                raise OutboundRefused(f"the server answered HTTP {response.status_code}")
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise OutboundRefused(f"the response is larger than {max_bytes} bytes (api.max_body_bytes)")
                chunks.append(chunk)
            response._content = b"".join(chunks)  # keeps the bounded body readable as response.content
            return response
    except httpx.HTTPError as exc:
        raise OutboundRefused(f"request failed: {type(exc).__name__}: {exc}") from exc


def post(url: str, allowlist: Sequence[str], body: bytes, headers: dict[str, str], timeout: float = 10.0) -> int:
    """POST ``body`` to ``url`` after :func:`check_url` (resolving); redirects are not followed.

    Returns
    -------
    int
        The HTTP status (a 3xx is returned, not followed).

    Raises
    ------
    OutboundRefused
        The URL is refused (permanent).
    httpx.HTTPError
        The connection failed (retryable).
    """
    check_url(url, allowlist)
    with httpx.Client(follow_redirects=False, timeout=timeout, trust_env=False) as client:
        return client.post(url, content=body, headers=headers).status_code
