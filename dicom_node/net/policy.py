"""The one outbound policy: which URLs and hosts the node may contact, checked once and pinned.

Every outbound connection of the node (STOW-RS delivery, DICOMweb sources,
webhooks, ``dicomweb_uri`` fetches, C-STORE destinations, Q/R remotes) is judged
by an :class:`OutboundPolicy` against server-side request forgery (SSRF):

- only ``http`` and ``https``; no user info (``user:pass@``) in a URL, because
  credentials belong in the ``auth`` setting, not in URLs that end up in logs;
  a host and a port other than 0;
- never link-local or cloud metadata addresses (169.254.0.0/16, fe80::/10,
  fd00:ec2::254, 100.100.100.200, the ``metadata.google.internal`` family),
  "this host" (0.0.0.0/8, ::) or multicast, unless the policy allows link-local
  (an operator's ``allow_link_local = true`` for a PACS that really lives there);
- for URLs that *callers* choose (``public_only``), also no loopback, private
  (RFC 1918, fc00::/7), shared (100.64/10), reserved or otherwise non-global
  address, unless the host, the address or a network holding it is in the
  allowlist (``api.outbound_allowlist``).

DNS pinning: :meth:`OutboundPolicy.pin` resolves a host name once, checks
*every* address it resolves to, and returns the first one; the HTTP client
(:mod:`dicom_node.net.http`) and the DIMSE association
(:func:`dicom_node.net.peers.pinned_address`) then connect to that address,
sending the original name as Host header and TLS server name. A resolver that
answers differently the second time (DNS rebinding) therefore cannot redirect a
checked request to an address that was never checked.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

from dicom_node.errors import DicomNodeError

__all__ = ["Address", "OutboundError", "OutboundPolicy", "OutboundRefused", "Pinned"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Networks never reached unless link-local is allowed: link-local (where cloud
#: instance metadata services live), AWS's IPv6 metadata address, Alibaba's
#: metadata address, "this host" and multicast.
_BLOCKED_NETWORKS: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32",
        "0.0.0.0/8", "::/128", "224.0.0.0/4", "ff00::/8",
    )
)
_METADATA_HOSTNAMES = frozenset({"metadata", "metadata.google.internal", "metadata.goog", "instance-data"})

#: What an operator-configured destination sets to reach a link-local peer.
CONFIGURED_HINT = "set allow_link_local = true to allow it"
#: What lets a caller-supplied URL reach a non-public address.
CALLER_HINT = "add it to api.outbound_allowlist to allow it"


class OutboundError(DicomNodeError):
    """An outbound request could not be made or completed; ``retryable`` says whether a later try may help.

    The message names hosts and rules, never credentials or response bodies, so it
    is safe to log and to return to the caller who supplied the URL.
    """

    retryable: bool = False

    def __init__(self, message: str, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class OutboundRefused(OutboundError):
    """The policy refuses the URL or host (not retryable, except a name that does not resolve)."""


@dataclass(frozen=True)
class Pinned:
    """A URL or host that passed the policy, with the one address to connect to.

    Attributes
    ----------
    host : str
        The host name as written (lower case, no trailing dot, no IPv6 brackets);
        TLS verifies the certificate against it and it goes in the Host header.
    port : int
        The port (the scheme's default when the URL names none).
    address : Address
        The checked address the connection must go to.
    scheme : str
        ``http`` or ``https`` (empty for a bare host).
    """

    host: str
    port: int
    address: Address
    scheme: str = ""

    @property
    def address_text(self) -> str:
        """The address as a socket API takes it (no brackets)."""
        return str(self.address)


def _unmapped(addr: Address) -> Address:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _blocked_reason(addr: Address) -> str | None:
    addr = _unmapped(addr)
    for net in _BLOCKED_NETWORKS:
        if addr.version == net.version and addr in net:
            return f"address {addr} is in {net} (link-local, metadata or unroutable)"
    return None


def _non_public(addr: Address) -> str | None:
    addr = _unmapped(addr)
    for label, flag in (("loopback", addr.is_loopback), ("link-local", addr.is_link_local),
                        ("private", addr.is_private), ("reserved", addr.is_reserved),
                        ("multicast", addr.is_multicast), ("unspecified", addr.is_unspecified)):
        if flag:
            return label
    if not addr.is_global:
        return "non-public"
    return None


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _parse_allowlist(entries: Iterable[str]) -> tuple[frozenset[str], tuple[Network, ...]]:
    names: set[str] = set()
    networks: list[Network] = []
    for entry in entries:
        entry = entry.strip().lower()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.rstrip("."))
    return frozenset(names), tuple(networks)


@dataclass(frozen=True)
class OutboundPolicy:
    """Which hosts the node may contact; build one with :meth:`configured` or :meth:`caller_supplied`.

    Parameters
    ----------
    allow_link_local : bool
        Allow link-local and metadata addresses (an operator's explicit opt-in).
    public_only : bool
        Refuse every non-public address unless allowlisted (for URLs a caller chose).
    allowlist : tuple of str
        Host names, addresses or networks (CIDR) allowed although not public; an
        allowlisted host or address also passes the link-local rule.
    hint : str
        How to allow a refused host, appended to refusals.
    """

    allow_link_local: bool = False
    public_only: bool = False
    allowlist: tuple[str, ...] = ()
    hint: str = CONFIGURED_HINT
    _names: frozenset[str] = field(init=False, repr=False, compare=False)
    _networks: tuple[Network, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names, networks = _parse_allowlist(self.allowlist)
        object.__setattr__(self, "_names", names)
        object.__setattr__(self, "_networks", networks)

    @classmethod
    def configured(cls, allow_link_local: bool = False) -> OutboundPolicy:
        """The policy of a peer an operator configured: loopback and private ranges allowed (PACS live there)."""
        return cls(allow_link_local=allow_link_local)

    @classmethod
    def caller_supplied(cls, allowlist: Iterable[str]) -> OutboundPolicy:
        """The policy of a URL a REST caller chose: public addresses only, unless allowlisted."""
        return cls(public_only=True, allowlist=tuple(allowlist), hint=CALLER_HINT)

    # -- static checks (no DNS) -------------------------------------------------------------------------------

    def _allowed(self, host: str, addr: Address | None) -> bool:
        if host in self._names:
            return True
        if addr is None:
            return False
        # An IPv4-mapped IPv6 address matches the IPv4 networks too (it is the same host).
        candidates = {addr, _unmapped(addr)}
        return any(a.version == net.version and a in net for a in candidates for net in self._networks)

    def check_address(self, host: str, addr: Address) -> None:
        """Refuse ``addr`` (an address ``host`` is or resolves to) when the policy forbids it.

        Raises
        ------
        OutboundRefused
            Naming the host, the address and the rule.
        """
        if self._allowed(host, addr):
            return
        reason = _blocked_reason(addr)
        if reason is not None and not self.allow_link_local:
            raise OutboundRefused(f"host {host!r} refused: {reason}; {self.hint}", retryable=False)
        if self.public_only:
            label = _non_public(addr)
            if label is not None:
                raise OutboundRefused(f"host {host!r} resolves to {label} address {addr}; refused ({self.hint})",
                                      retryable=False)

    def check_host(self, host: str) -> str:
        """Check a host name or IP literal without resolving it (at configuration load, a PACS may be down).

        Parameters
        ----------
        host : str
            Host name or IP literal (IPv6 without brackets).

        Returns
        -------
        str
            The normalised host: lower case, no trailing dot.

        Raises
        ------
        OutboundRefused
            A metadata service name or a forbidden literal address.
        """
        name = host.strip().rstrip(".").lower()
        literal = _literal(name)
        if name in _METADATA_HOSTNAMES and not self.allow_link_local and not self._allowed(name, None):
            raise OutboundRefused(f"host {host!r} is a cloud metadata service name; refused; {self.hint}",
                                  retryable=False)
        if literal is not None:
            self.check_address(name, literal)
        return name

    def check_url(self, url: str) -> SplitResult:
        """Check a URL without resolving its host: scheme, user info, host, port, literal address.

        Returns
        -------
        urllib.parse.SplitResult
            The parsed URL.

        Raises
        ------
        OutboundRefused
            Naming the rule broken.
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise OutboundRefused(f"URL {url!r} is malformed: {exc}", retryable=False) from exc
        if parts.scheme not in ("http", "https"):
            raise OutboundRefused(f"URL scheme {parts.scheme!r} is not allowed (only http and https)", retryable=False)
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise OutboundRefused("URLs with user info are refused; put credentials in the auth setting",
                                  retryable=False)
        if not parts.hostname:
            raise OutboundRefused(f"URL {url!r} has no host", retryable=False)
        if port == 0:
            raise OutboundRefused(f"URL {url!r} has port 0", retryable=False)
        self.check_host(parts.hostname)
        return parts

    # -- resolution and pinning ---------------------------------------------------------------------------------

    def resolve(self, host: str, port: int = 0) -> list[Address]:
        """Resolve ``host`` once and check every address; return them in resolver order.

        Raises
        ------
        OutboundRefused
            Any address is forbidden (not retryable), or the name does not resolve
            (retryable: DNS outages are usually transient).
        """
        name = self.check_host(host)
        literal = _literal(name)
        if literal is not None:
            return [literal]
        try:
            infos = socket.getaddrinfo(name, port or None, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as exc:
            detail = getattr(exc, "strerror", None) or str(exc)
            raise OutboundRefused(f"cannot resolve host {name!r}: {detail}", retryable=True) from exc
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos))
        if not addresses:
            raise OutboundRefused(f"cannot resolve host {name!r}: no address", retryable=True)
        # Every address is checked, not only the one used: a name that can point at a forbidden
        # address is refused as a whole, whatever order the resolver answers in.
        for addr in addresses:
            self.check_address(name, addr)
        return addresses

    def pin_host(self, host: str, port: int) -> Pinned:
        """Resolve and check ``host``; the :class:`Pinned` address is the one to connect to."""
        name = self.check_host(host)
        return Pinned(name, port, self.resolve(name, port)[0])

    def pin(self, url: str) -> Pinned:
        """Check ``url`` and resolve its host once; the :class:`Pinned` address is the one to connect to.

        Raises
        ------
        OutboundRefused
            As :meth:`check_url` and :meth:`resolve`.
        """
        parts = self.check_url(url)
        host = self.check_host(parts.hostname or "")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return Pinned(host, port, self.resolve(host, port)[0], parts.scheme)
