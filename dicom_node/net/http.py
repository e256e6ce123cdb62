"""The one outbound HTTP client: ``requests`` sessions that connect only to addresses the policy checked.

``requests`` is the single HTTP library of the running node because
dicomweb-client (STOW-RS delivery) is built on it and takes a
:class:`requests.Session`; everything else (DICOMweb sources, webhooks,
``dicomweb_uri`` fetches) uses the same sessions from :func:`new_session`.

Every session made here:

- sends each request through :class:`PinnedAdapter`, which checks the URL with
  the :class:`~dicom_node.net.policy.OutboundPolicy`, resolves the host *once*,
  checks every address, and connects to the checked address (DNS pinning); the
  Host header and TLS (SNI and certificate verification) keep the URL's host
  name, so HTTPS still verifies the name that was configured;
- never follows redirects by itself (a redirect could point anywhere the policy
  refuses): :func:`fetch` and :func:`post` answer a 3xx as a permanent failure of
  the URL ("redirect to <host> not followed"), unless the caller allows hops
  (``api.outbound_max_redirects``), and then each hop's URL goes through the same
  policy check and DNS pinning as the first, up to that many hops;
- ignores the environment (``trust_env = False``): no proxy variables, whose
  proxy would resolve names itself, and no ``.netrc`` credentials attached to
  URLs the configuration did not give them for;
- carries the configured credentials (:mod:`dicom_node.net.auth`) and CA bundle.

:class:`Outbound` is the service the node hands to its HTTP consumers: a policy
for caller-supplied URLs plus :meth:`Outbound.fetch` (bounded GET) and
:meth:`Outbound.post`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from dicom_node.net.auth import BasicAuth, BearerAuth, NoAuth
from dicom_node.net.policy import OutboundError, OutboundPolicy, OutboundRefused, Pinned

__all__ = ["HttpReply", "Outbound", "PinnedAdapter", "fetch", "new_session", "post"]

log = logging.getLogger(__name__)

#: Seconds to wait for a TCP (and TLS) connection; the read timeout is the caller's.
CONNECT_TIMEOUT = 10.0
_CHUNK = 64 * 1024


class PinnedAdapter(HTTPAdapter):
    """A transport adapter that connects to the address :meth:`OutboundPolicy.pin` checked.

    Parameters
    ----------
    policy : OutboundPolicy
        Judges every request's URL and resolved addresses.
    """

    def __init__(self, policy: OutboundPolicy) -> None:
        if not hasattr(HTTPAdapter, "get_connection_with_tls_context"):
            # requests < 2.32.2 looks up pools elsewhere: connections would go to the name, unpinned. Fail closed.
            raise RuntimeError("dicom_node.net needs requests >= 2.32.2 (connection pool hook for DNS pinning)")
        # The library's own retries stay off: callers own retry scheduling (RetryPolicy).
        super().__init__(max_retries=0)
        self.policy = policy
        # send() and the pool lookup it triggers run on the calling thread; the pin travels between them here.
        self._current = threading.local()

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: Any = None, verify: Any = True, cert: Any = None,
             proxies: Mapping[str, str] | None = None) -> requests.Response:
        """Check, resolve once and pin the request's host, then send it to that address.

        Raises
        ------
        OutboundRefused
            The URL or an address its host resolves to is refused, or it does not resolve.
        """
        pin = self.policy.pin(request.url or "")
        # The Host header names the host, not the address connected to (RFC 9110 7.2).
        default = 443 if pin.scheme == "https" else 80
        name = f"[{pin.host}]" if ":" in pin.host else pin.host
        request.headers["Host"] = name if pin.port == default else f"{name}:{pin.port}"
        self._current.pin = pin
        try:
            # No proxies ever: a proxy resolves the name itself, which would undo the pinning.
            return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=None)
        finally:
            self._current.pin = None

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Pool key of the pinned address; TLS verifies (and SNI names) the URL's host name."""
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        pin: Pinned | None = getattr(self._current, "pin", None)
        if pin is None:  # only reachable when called outside send(): fail closed
            raise OutboundRefused("outbound request without a policy check", retryable=False)
        host_params["host"] = pin.address_text
        host_params["port"] = pin.port
        if pin.scheme == "https":
            pool_kwargs["server_hostname"] = pin.host
            pool_kwargs["assert_hostname"] = pin.host
        return host_params, pool_kwargs


def new_session(policy: OutboundPolicy, auth: NoAuth | BearerAuth | BasicAuth | None = None,
                ca_file: Path | None = None) -> requests.Session:
    """A session whose every request passes ``policy`` and goes to the checked address.

    Parameters
    ----------
    policy : OutboundPolicy
        The policy for every URL this session requests.
    auth : NoAuth, BearerAuth or BasicAuth, optional
        Credentials sent with every request (secrets are read now).
    ca_file : Path, optional
        CA bundle for https; None = the system store.

    Raises
    ------
    OutboundError
        A secret file cannot be read (not retryable).
    """
    session = requests.Session()
    adapter = PinnedAdapter(policy)
    # Every scheme goes to the pinned adapter, so a file:// or ftp:// URL is refused by the policy
    # (naming the rule) instead of failing inside requests.
    for prefix in ("http://", "https://", ""):
        session.mount(prefix, adapter)
    session.max_redirects = 0
    session.trust_env = False
    session.verify = str(ca_file) if ca_file is not None else True
    if isinstance(auth, BasicAuth):
        session.auth = (auth.username, auth.secret())
    elif isinstance(auth, BearerAuth):
        session.headers["Authorization"] = f"Bearer {auth.secret()}"
    return session


@dataclass(frozen=True)
class HttpReply:
    """An HTTP answer: status, headers (case-insensitive) and the body read (bounded)."""

    status_code: int
    headers: CaseInsensitiveDict[str]
    content: bytes = b""

    @property
    def is_redirect(self) -> bool:
        """True for a 3xx answer (never followed)."""
        return 300 <= self.status_code < 400


def _redirect(exc: requests.RequestException) -> requests.Response | None:
    """The 3xx answer inside a TooManyRedirects (max_redirects = 0 raises it even without following)."""
    if isinstance(exc, requests.TooManyRedirects) and exc.response is not None:
        return exc.response
    return None


def _transport_error(exc: requests.RequestException) -> OutboundError:
    if isinstance(exc, requests.exceptions.SSLError):
        return OutboundError(f"TLS failure: {type(exc).__name__}", retryable=False)
    return OutboundError(f"request failed: {type(exc).__name__}: {exc}", retryable=True)


#: 3xx answers that carry a Location to follow (304 Not Modified and 300 Multiple Choices do not).
_FOLLOWABLE = frozenset({301, 302, 303, 307, 308})


def _request(session: requests.Session, method: str, url: str, body: bytes | None, headers: Mapping[str, str],
             timeout: float, max_redirects: int) -> requests.Response:
    """Send ``method`` to ``url``; a redirect is a permanent failure unless hops are allowed, then each is checked.

    Every hop is a new request through the session's :class:`PinnedAdapter`, so the
    policy checks its URL and pins its host exactly as it did the first one. A POST
    follows only 307 and 308 (which keep the method and body); credentials in
    ``headers`` are not sent to a different host.

    Raises
    ------
    OutboundRefused
        A redirect not followed (none allowed, too many hops, a POST turned into a
        GET, no Location) or a hop the policy refuses; never retryable.
    OutboundError
        The request failed (see :func:`_transport_error`).
    """
    hops = 0
    sent = dict(headers)
    origin = urlsplit(url).hostname
    while True:
        try:
            response = session.request(method, url, data=body, headers=sent, stream=True, allow_redirects=False,
                                       timeout=(min(CONNECT_TIMEOUT, timeout), timeout))
        except requests.RequestException as exc:
            redirect = _redirect(exc)
            if redirect is None:
                raise _transport_error(exc) from exc
            response = redirect
        code = response.status_code
        if code not in _FOLLOWABLE:
            return response
        location = response.headers.get("Location") or ""
        response.close()
        target = urljoin(url, location)
        host = urlsplit(target).hostname or "?"
        if not location:
            raise OutboundRefused(f"the server answered a redirect ({code}) without a Location", retryable=False)
        if max_redirects == 0:
            raise OutboundRefused(f"redirect ({code}) to {host} not followed (api.outbound_max_redirects = 0)",
                                  retryable=False)
        if hops >= max_redirects:
            raise OutboundRefused(f"redirect ({code}) to {host} not followed: more than {max_redirects} hops "
                                  "(api.outbound_max_redirects)", retryable=False)
        if method == "POST" and code not in (307, 308):
            raise OutboundRefused(f"redirect ({code}) to {host} not followed: it would turn the POST into a GET",
                                  retryable=False)
        hops += 1
        if host != origin:
            sent = {k: v for k, v in sent.items() if k.lower() not in ("authorization", "cookie")}
        log.info("following redirect code=%d host=%s hop=%d", code, host, hops)
        url = target


def fetch(url: str, policy: OutboundPolicy, headers: Mapping[str, str], max_bytes: int,
          timeout: float = 30.0, max_redirects: int = 0) -> HttpReply:
    """GET ``url`` under ``policy``, reading at most ``max_bytes``; redirects as :func:`_request` says.

    Returns
    -------
    HttpReply
        A 200 answer with its body.

    Raises
    ------
    OutboundRefused
        The policy refuses the URL or a redirect hop, or a redirect is not followed.
    OutboundError
        The server answers other than 200, the body is larger than ``max_bytes``,
        or the request fails.
    """
    with new_session(policy) as session:
        with _request(session, "GET", url, None, headers, timeout, max_redirects) as response:
            code = response.status_code
            if code != 200:
                raise OutboundError(f"the server answered HTTP {code}", retryable=code in (408, 429) or code >= 500)
            chunks: list[bytes] = []
            size = 0
            try:
                for chunk in response.iter_content(_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise OutboundError(f"the response is larger than {max_bytes} bytes (api.max_body_bytes)")
                    chunks.append(chunk)
            except requests.RequestException as exc:
                raise _transport_error(exc) from exc
            return HttpReply(code, CaseInsensitiveDict(response.headers), b"".join(chunks))


def post(url: str, policy: OutboundPolicy, body: bytes, headers: Mapping[str, str], timeout: float = 10.0,
         max_redirects: int = 0) -> HttpReply:
    """POST ``body`` to ``url`` under ``policy``; redirects as :func:`_request` says.

    Returns
    -------
    HttpReply
        Status and headers (the body is not kept); never a followable 3xx.

    Raises
    ------
    OutboundRefused
        The policy refuses the URL or a redirect hop, or a redirect is not followed
        (permanent; a name that does not resolve is retryable).
    OutboundError
        The connection failed or timed out (retryable), or TLS failed (not retryable).
    """
    with new_session(policy) as session:
        with _request(session, "POST", url, body, headers, timeout, max_redirects) as response:
            return HttpReply(response.status_code, CaseInsensitiveDict(response.headers))


class Outbound:
    """The node's outbound HTTP service: one policy for URLs that callers choose, one client stack.

    Parameters
    ----------
    allowlist : iterable of str
        ``api.outbound_allowlist``: hosts, addresses or networks that caller-supplied
        URLs may reach although they are not public.
    max_redirects : int
        ``api.outbound_max_redirects``: redirect hops followed, each checked by the
        policy (0 = a redirect is a permanent failure of the URL).
    """

    def __init__(self, allowlist: Iterable[str] = (), max_redirects: int = 0) -> None:
        self.caller_policy = OutboundPolicy.caller_supplied(allowlist)
        self.max_redirects = max_redirects

    def check(self, url: str) -> str:
        """Check a caller-supplied URL now (resolving its host); return it unchanged.

        Raises
        ------
        OutboundRefused
            With the rule that refused it.
        """
        self.caller_policy.pin(url)
        return url

    def session(self, policy: OutboundPolicy, auth: NoAuth | BearerAuth | BasicAuth | None = None,
                ca_file: Path | None = None) -> requests.Session:
        """A pinned session for an operator-configured peer (see :func:`new_session`)."""
        return new_session(policy, auth, ca_file)

    def fetch(self, url: str, headers: Mapping[str, str], max_bytes: int, timeout: float = 30.0) -> HttpReply:
        """Bounded GET of a caller-supplied URL (see :func:`fetch`)."""
        return fetch(url, self.caller_policy, headers, max_bytes, timeout, self.max_redirects)

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout: float = 10.0) -> HttpReply:
        """POST to a caller-supplied URL (see :func:`post`)."""
        return post(url, self.caller_policy, body, headers, timeout, self.max_redirects)
