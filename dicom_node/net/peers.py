"""DICOM network peers: where an association goes, its TLS settings, and why one did not come up.

:class:`DimsePeer` is the configuration model shared by delivery destinations
(``[[delivery.destinations]]`` of ``kind = "dimse"``) and query/retrieve remotes
(``[[sources.remotes]]``). Its host passes the outbound policy
(:class:`~dicom_node.net.policy.OutboundPolicy`, configured flavour) at load time
and is resolved, checked and pinned again just before connecting
(:meth:`DimsePeer.pinned`), so the association goes to the address that was checked
while TLS still verifies the certificate against the configured name.

:class:`AssociationProbe` records what pynetdicom does not keep (whether TCP
connected, the A-ASSOCIATE response) for both senders' error messages.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ASSOCIATE

from dicom_node.net.policy import OutboundPolicy, OutboundRefused
from dicom_node.validators import check_ae_title

__all__ = ["AssociationProbe", "DimsePeer"]


class DimsePeer(BaseModel):
    """Where a DICOM association goes: AE title, address, optional TLS (PS3.15 B.1), limits.

    Shared by delivery destinations and query/retrieve remotes
    (:class:`dicom_node.config.sources.RemoteNode`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

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
    #: The checked address to connect to, set by :meth:`pinned`; not configuration.
    _address: str | None = PrivateAttr(default=None)

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return check_ae_title(v, "AE title")

    @model_validator(mode="after")
    def _peer_checks(self) -> DimsePeer:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (TLS client certificate)")
        try:
            self.policy().check_host(self.host)
        except OutboundRefused as exc:
            raise ValueError(str(exc)) from exc
        return self

    def policy(self) -> OutboundPolicy:
        """The outbound policy of this peer (an operator configured it: private ranges allowed)."""
        return OutboundPolicy.configured(self.allow_link_local)

    def pinned(self) -> Self:
        """A copy that connects to one checked address of ``host`` (:attr:`connect_host`).

        Raises
        ------
        OutboundRefused
            The host resolves to a forbidden address, or does not resolve (retryable).
        """
        pin = self.policy().pin_host(self.host, self.port)
        copy = self.model_copy()
        copy._address = pin.address_text
        return copy

    @property
    def connect_host(self) -> str:
        """Where the TCP connection goes: the pinned address after :meth:`pinned`, else ``host``."""
        return self._address or self.host

    @property
    def uses_tls(self) -> bool:
        """True when the association runs over TLS."""
        return self.tls or any(f is not None for f in (self.ca_file, self.cert_file, self.key_file))

    def tls_args(self) -> tuple[ssl.SSLContext, str] | None:
        """pynetdicom's ``tls_args`` (client context, server host name), or None without TLS.

        The server name is always the configured ``host``, also when connecting to a
        pinned address, so certificate verification and SNI use the name.

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


@dataclass
class AssociationProbe:
    """Captures what pynetdicom does not keep: whether TCP connected and the A-ASSOCIATE response.

    Bind ``on_open`` to ``evt.EVT_CONN_OPEN`` and ``on_acse`` to ``evt.EVT_ACSE_RECV``; used by
    delivery and by the query/retrieve sources to say why an association did not come up.
    """

    connected: bool = False
    response: A_ASSOCIATE | None = None

    def on_open(self, event: Event) -> None:
        """EVT_CONN_OPEN: the TCP (and TLS) connection is up."""
        self.connected = True

    def on_acse(self, event: Event) -> None:
        """EVT_ACSE_RECV: keep the A-ASSOCIATE-AC/RJ primitive (PS3.8 9.3.3, 9.3.4)."""
        # pynetdicom attaches ``primitive`` to ACSE events at run time; Event does not declare it.
        primitive = getattr(event, "primitive", None)
        if isinstance(primitive, A_ASSOCIATE) and primitive.result is not None:
            self.response = primitive
