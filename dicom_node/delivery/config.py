"""Configuration of result delivery: destinations, retry policy, known peers.

The ``[delivery]`` section of the node configuration (hung off
``NodeConfig.delivery``)::

    [delivery.retry]
    attempts = 10          # total attempts per object and destination
    initial = 30.0         # seconds before the second attempt, doubling
    cap = 600.0

    [[delivery.destinations]]
    kind = "dimse"         # C-STORE, PS3.4 Annex B
    name = "pacs"
    ae_title = "PACS"
    host = "10.1.2.3"
    port = 104

    [[delivery.destinations]]
    kind = "stowrs"        # STOW-RS, PS3.18 10.5
    name = "archive"
    url = "https://pacs.example.org/dicom-web"
    auth = { type = "bearer", token_file = "/run/secrets/pacs-token" }

    [[delivery.destinations]]
    kind = "reply"         # back to the AE that sent the study
    name = "caller"

    [[delivery.known_peers]]
    ae_title = "CT01"
    host = "10.1.5.20"
    port = 104

Outbound URLs are checked against server-side request forgery
(:func:`check_outbound_url`): only ``http``/``https``, no user info in the URL,
and no link-local or cloud metadata addresses unless a destination opts in.
Loopback and private ranges are allowed because PACS live there.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from dicom_node.errors import DeliveryError
from dicom_node.validators import check_ae_title, is_loopback

__all__ = [
    "BasicAuth", "BearerAuth", "DeliveryConfig", "Destination", "DimseDestination", "DimsePeer", "KnownPeer", "NoAuth",
    "ReplyToCaller", "RetryPolicy", "StowDestination", "check_outbound_host", "check_outbound_url",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

#: Networks never reached unless a destination sets ``allow_link_local``: link-local
#: (where cloud instance metadata services live), AWS's IPv6 metadata address,
#: Alibaba's metadata address, "this host" and multicast.
_BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32",
        "0.0.0.0/8", "::/128", "224.0.0.0/4", "ff00::/8",
    )
)
_METADATA_HOSTNAMES = frozenset({"metadata", "metadata.google.internal", "metadata.goog", "instance-data"})


def _blocked_reason(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for net in _BLOCKED_NETWORKS:
        if addr.version == net.version and addr in net:
            return f"address {addr} is in {net} (link-local, metadata or unroutable)"
    return None


def check_outbound_host(host: str, *, allow_link_local: bool = False, resolve: bool = False) -> None:
    """Refuse a destination host that points at link-local or metadata services.

    Parameters
    ----------
    host : str
        Host name or IP literal (IPv6 without brackets).
    allow_link_local : bool
        Skip the link-local/metadata check (for a PACS that really lives there).
    resolve : bool
        Also resolve a host name and check every address it resolves to; used
        just before sending, not at configuration load (a PACS may be down then).

    Raises
    ------
    DeliveryError
        Not retryable; the message names the host and the rule.
    """
    if allow_link_local:
        return
    name = host.strip().rstrip(".").lower()
    if name in _METADATA_HOSTNAMES:
        raise DeliveryError(f"host {host!r} is a cloud metadata service name; refused", retryable=False)
    try:
        addresses = [ipaddress.ip_address(name.split("%", 1)[0])]
    except ValueError:
        addresses = _resolve(name) if resolve else []
    for addr in addresses:
        reason = _blocked_reason(addr)
        if reason is not None:
            raise DeliveryError(f"host {host!r} refused: {reason}; set allow_link_local = true to allow it", retryable=False)


def _resolve(name: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        # Name resolution failures are usually transient (DNS down); the sender retries.
        raise DeliveryError(f"cannot resolve host {name!r}: {exc}", retryable=True) from exc
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def check_outbound_url(url: str, *, allow_link_local: bool = False, resolve: bool = False) -> str:
    """Validate a URL the node will send data to (STOW-RS, webhooks) against SSRF.

    Only ``http`` and ``https`` are allowed; user info (``user:pass@``) is
    refused because credentials belong in the ``auth`` setting, not in URLs that
    end up in logs; link-local and cloud metadata addresses (169.254.0.0/16,
    fe80::/10, fd00:ec2::254, ...) are refused unless ``allow_link_local``.
    Loopback and private ranges are allowed.

    Parameters
    ----------
    url : str
        The URL.
    allow_link_local : bool
        Allow link-local/metadata addresses.
    resolve : bool
        Resolve host names and check the addresses too.

    Returns
    -------
    str
        ``url`` without a trailing slash.

    Raises
    ------
    DeliveryError
        Not retryable (except DNS failure while resolving), naming the rule broken.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DeliveryError(f"URL {url!r} is malformed: {exc}", retryable=False) from exc
    if parts.scheme not in ("http", "https"):
        raise DeliveryError(f"URL scheme {parts.scheme!r} is not allowed (only http and https)", retryable=False)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise DeliveryError("URLs with user info are refused; put credentials in the auth setting", retryable=False)
    if not parts.hostname:
        raise DeliveryError(f"URL {url!r} has no host", retryable=False)
    if port == 0:
        raise DeliveryError(f"URL {url!r} has port 0", retryable=False)
    check_outbound_host(parts.hostname, allow_link_local=allow_link_local, resolve=resolve)
    return url.rstrip("/")


def _read_secret(inline: SecretStr | None, path: Path | None, what: str) -> str:
    if inline is not None:
        return inline.get_secret_value()
    assert path is not None  # guaranteed by the model validators
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise DeliveryError(f"cannot read {what} file {path}: {exc.strerror}", retryable=False) from exc


class _Model(BaseModel):
    """Base: unknown keys are errors and values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoAuth(_Model):
    """No HTTP authentication."""

    type: Literal["none"] = "none"


class BearerAuth(_Model):
    """``Authorization: Bearer`` (RFC 6750); the token inline or, better, in a file."""

    type: Literal["bearer"]
    token: SecretStr | None = None
    token_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> BearerAuth:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("bearer auth needs exactly one of token or token_file")
        return self

    def secret(self) -> str:
        """Return the token (read from ``token_file`` at each call so rotation needs no restart)."""
        return _read_secret(self.token, self.token_file, "token")


class BasicAuth(_Model):
    """HTTP Basic authentication (RFC 7617); the password inline or in a file."""

    type: Literal["basic"]
    username: str = Field(min_length=1)
    password: SecretStr | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> BasicAuth:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("basic auth needs exactly one of password or password_file")
        return self

    def secret(self) -> str:
        """Return the password."""
        return _read_secret(self.password, self.password_file, "password")


HttpAuth = Annotated[NoAuth | BearerAuth | BasicAuth, Field(discriminator="type")]


class _NamedDestination(_Model):
    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.fullmatch(v):
            raise ValueError(f"destination name {v!r}: use 1-64 letters, digits, '_', '.', '-'")
        return v


class DimsePeer(_Model):
    """Where a DICOM association goes: AE title, address, optional TLS (PS3.15 B.1), limits.

    Shared by delivery destinations and query/retrieve remotes
    (:class:`dicom_node.config.sources.RemoteNode`).
    """

    ae_title: str
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    #: TLS is used when ``tls`` is true or any of the files is set; no ca_file = system CAs.
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(120.0, gt=0)
    network_timeout: float = Field(60.0, gt=0)
    max_pdu: int = Field(131072, ge=4096, le=16 * 1024 * 1024)
    allow_link_local: bool = False

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return check_ae_title(v, "AE title")

    @model_validator(mode="after")
    def _peer_checks(self) -> DimsePeer:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (TLS client certificate)")
        try:
            check_outbound_host(self.host, allow_link_local=self.allow_link_local)
        except DeliveryError as exc:
            raise ValueError(str(exc)) from exc
        return self

    @property
    def uses_tls(self) -> bool:
        """True when the association runs over TLS."""
        return self.tls or any(f is not None for f in (self.ca_file, self.cert_file, self.key_file))

    def tls_args(self) -> tuple[ssl.SSLContext, str] | None:
        """pynetdicom's ``tls_args`` (client context, server host name), or None without TLS.

        Raises
        ------
        OSError, ssl.SSLError
            A TLS file cannot be read or loaded (callers wrap it in their own error).
        """
        if not self.uses_tls:
            return None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context, self.host


class DimseDestination(_NamedDestination, DimsePeer):
    """A C-STORE SCP (PS3.4 Annex B), optionally over TLS (PS3.15 B.1)."""

    kind: Literal["dimse"] = "dimse"
    calling_ae: str = "DICOM_NODE"

    @field_validator("calling_ae")
    @classmethod
    def _calling(cls, v: str) -> str:
        return check_ae_title(v, "AE title")


class StowDestination(_NamedDestination):
    """A DICOMweb origin server taking STOW-RS (PS3.18 10.5); ``url`` is the service root."""

    kind: Literal["stowrs"] = "stowrs"
    url: str
    auth: HttpAuth = Field(default_factory=NoAuth)
    timeout: float = Field(60.0, gt=0, le=3600)
    #: CA bundle for https; None = the system store.
    ca_file: Path | None = None
    #: Instances per STOW-RS request.
    batch_size: int = Field(50, ge=1, le=10000)
    allow_link_local: bool = False
    #: Credentials over plain http are refused except to loopback unless this is set.
    allow_insecure_http: bool = False

    @model_validator(mode="after")
    def _checks(self) -> StowDestination:
        try:
            url = check_outbound_url(self.url, allow_link_local=self.allow_link_local)
        except DeliveryError as exc:
            raise ValueError(str(exc)) from exc
        parts = urlsplit(url)
        if (
            parts.scheme == "http" and self.auth.type != "none" and not self.allow_insecure_http
            and not is_loopback(parts.hostname or "")
        ):
            raise ValueError("credentials over plain http are refused; use https or set allow_insecure_http = true")
        return self


class ReplyToCaller(_NamedDestination):
    """Send results back to the AE that sent the study (C-STORE).

    DICOM carries no return address, so the caller's Storage SCP is found in
    ``[[delivery.known_peers]]`` by calling AE title; a caller not listed there
    gets results at its source host on ``port`` when set, else they are dead-lettered.
    """

    kind: Literal["reply"] = "reply"
    port: int | None = Field(None, ge=1, le=65535)
    #: Calling AE title -> the AE title of that caller's Storage SCP, where they differ.
    ae_titles: dict[str, str] = Field(default_factory=dict)
    calling_ae: str = "DICOM_NODE"
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(120.0, gt=0)
    network_timeout: float = Field(60.0, gt=0)

    @field_validator("ae_titles")
    @classmethod
    def _titles(cls, v: dict[str, str]) -> dict[str, str]:
        return {check_ae_title(k, "AE title"): check_ae_title(t, "AE title") for k, t in v.items()}


class KnownPeer(_Model):
    """Where the Storage SCP of a calling AE title listens."""

    ae_title: str
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return check_ae_title(v, "AE title")


class RetryPolicy(_Model):
    """Bounded exponential backoff: ``initial * factor**(n-1)`` seconds after the n-th failure, at most ``cap``."""

    attempts: int = Field(10, ge=1, le=1000)
    initial: float = Field(30.0, ge=0.0)
    factor: float = Field(2.0, ge=1.0, le=10.0)
    cap: float = Field(600.0, ge=0.0)


Destination = Annotated[DimseDestination | StowDestination | ReplyToCaller, Field(discriminator="kind")]


class DeliveryConfig(_Model):
    """The ``[delivery]`` section: destinations, retry policy and known peers."""

    destinations: list[Destination] = Field(default_factory=list)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    known_peers: list[KnownPeer] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> DeliveryConfig:
        names = [d.name for d in self.destinations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destination names must be unique: {', '.join(dupes)}")
        titles = [p.ae_title for p in self.known_peers]
        dupes = sorted({t for t in titles if titles.count(t) > 1})
        if dupes:
            raise ValueError(f"known_peers AE titles must be unique: {', '.join(dupes)}")
        return self
