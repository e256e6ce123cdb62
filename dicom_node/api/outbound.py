"""Outbound URLs of the REST facade (``dicomweb_uri`` fetches, webhooks): the caller-supplied flavour of the policy.

The REST facade fetches and posts to URLs that *callers* choose, so it uses
:meth:`dicom_node.net.policy.OutboundPolicy.caller_supplied`, stricter than
result delivery (whose destinations an operator configures): on top of the
common rules (http/https only, no user info, no link-local or cloud metadata
address), every address the host resolves to must be public: loopback, private
(RFC 1918, fc00::/7), shared (100.64/10), reserved and unspecified ranges are
refused unless the host, the address or a network holding it is listed in
``api.outbound_allowlist``.

The check runs when a URL is accepted and again for each connection, which goes
to the address that was checked (DNS pinning, :mod:`dicom_node.net.http`).
Redirects are never followed (a redirect could point anywhere), and response
bodies are read with a size bound.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dicom_node.net import http
from dicom_node.net.http import HttpReply
from dicom_node.net.policy import OutboundError, OutboundPolicy, OutboundRefused

__all__ = ["HttpReply", "OutboundError", "OutboundRefused", "check_url", "fetch", "post"]


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
    policy = OutboundPolicy.caller_supplied(allowlist)
    if resolve:
        policy.pin(url)
    else:
        policy.check_url(url)
    return url


def fetch(url: str, allowlist: Sequence[str], headers: Mapping[str, str], max_bytes: int,
          timeout: float = 30.0) -> HttpReply:
    """GET ``url`` under the caller policy, without following redirects, reading at most ``max_bytes``.

    Returns
    -------
    HttpReply
        A 200 answer with its body (``reply.content``, ``reply.headers``).

    Raises
    ------
    OutboundRefused
        The URL is refused, the server redirects or answers other than 200, the
        body is too large or the request fails: for a caller every failure to
        fetch its URL is one outcome (``fetch_failed``), with the reason.
    """
    try:
        return http.fetch(url, OutboundPolicy.caller_supplied(allowlist), headers, max_bytes, timeout)
    except OutboundRefused:
        raise
    except OutboundError as exc:
        raise OutboundRefused(str(exc), retryable=exc.retryable) from exc


def post(url: str, allowlist: Sequence[str], body: bytes, headers: Mapping[str, str], timeout: float = 10.0) -> HttpReply:
    """POST ``body`` to ``url`` under the caller policy; redirects are not followed.

    Returns
    -------
    HttpReply
        The HTTP status and headers (a 3xx is returned, not followed).

    Raises
    ------
    OutboundRefused
        The URL is refused (permanent).
    OutboundError
        The connection failed (retryable).
    """
    return http.post(url, OutboundPolicy.caller_supplied(allowlist), body, headers, timeout)
