"""``[scp.tls]``: DICOM over TLS on the SCP (PS3.15 Annex B), and certificate subjects of allowed peers.

The files are read when the node is built (:mod:`dicom_node.scp.tls`), where an
unreadable certificate or key stops start-up with a :class:`~dicom_node.errors.ConfigError`;
here only their presence and the combinations are checked. Relative paths resolve
against the config file's folder like every :class:`~pathlib.Path` key.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Subject attribute names accepted in ``certificate_subject`` (RFC 4514 short names, plus
#: the long names ssl reports) -> the one name both sides are compared under.
SUBJECT_ATTRIBUTES: dict[str, str] = {
    "CN": "CN", "COMMONNAME": "CN",
    "O": "O", "ORGANIZATIONNAME": "O",
    "OU": "OU", "ORGANIZATIONALUNITNAME": "OU",
    "C": "C", "COUNTRYNAME": "C",
    "L": "L", "LOCALITYNAME": "L",
    "ST": "ST", "STATEORPROVINCENAME": "ST",
    "DC": "DC", "DOMAINCOMPONENT": "DC",
    "SERIALNUMBER": "SERIALNUMBER",
    "EMAILADDRESS": "EMAILADDRESS",
}

#: Split an RFC 4514 string on the commas that are not escaped with a backslash.
_UNESCAPED_COMMA = re.compile(r"(?<!\\),")

#: A certificate subject as compared: the set of (attribute, value) pairs, order ignored
#: (RFC 4514 writes the most specific RDN first, OpenSSL's one-line form the opposite).
Subject = frozenset[tuple[str, str]]


def parse_subject(text: str) -> Subject:
    """Parse ``"CN=modality1,O=Hospital"`` into the pairs a peer certificate is compared with.

    Parameters
    ----------
    text : str
        Comma-separated ``ATTRIBUTE=value`` pairs; ``\\,`` is a comma inside a value.

    Returns
    -------
    Subject
        Attribute names normalised (``commonName`` and ``cn`` both read ``CN``); values kept as written.

    Raises
    ------
    ValueError
        An empty subject, a pair without ``=``, an empty value or an unknown attribute (the message names it).
    """
    pairs: set[tuple[str, str]] = set()
    for part in _UNESCAPED_COMMA.split(text):
        name, sep, value = part.partition("=")
        key = SUBJECT_ATTRIBUTES.get(name.strip().upper())
        value = value.strip().replace("\\,", ",")
        if not sep or not value:
            raise ValueError(f"{part.strip()!r} is not ATTRIBUTE=value (e.g. 'CN=modality1,O=Hospital')")
        if key is None:
            raise ValueError(f"unknown subject attribute {name.strip()!r} (known: CN, O, OU, C, L, ST, DC, "
                             "serialNumber, emailAddress)")
        pairs.add((key, value))
    if not pairs:
        raise ValueError("empty certificate subject")
    return frozenset(pairs)


def subject_allows(required: str | None, presented: Subject | None) -> bool:
    """True when a peer may use an allowlist entry tied to ``required`` with a certificate of ``presented``.

    Parameters
    ----------
    required : str or None
        The entry's ``certificate_subject``; None = not tied to a certificate.
    presented : Subject or None
        The verified client certificate's subject; None on a plain connection or
        without a client certificate, which an entry tied to a subject refuses.
    """
    if required is None:
        return True
    return presented is not None and parse_subject(required) == presented


class ScpTlsConfig(BaseModel):
    """DICOM TLS listener of the SCP: a second port whose associations run over TLS 1.2 / 1.3.

    Disabled while ``port`` is unset. ``ca_certificates`` turns on client certificates
    (mutual TLS): required unless ``require_client_certificate = false``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: TLS port (2762 is the registered "dicom-tls" port); unset = no TLS listener. 0 = ephemeral (tests).
    port: int | None = Field(None, ge=0, le=65535)
    #: Server certificate chain (PEM; the server certificate first).
    certificate: Path | None = None
    #: Private key of the server certificate (PEM, unencrypted).
    private_key: Path | None = None
    #: CA bundle (PEM) that client certificates must chain to; set = mutual TLS.
    ca_certificates: Path | None = None
    #: With ca_certificates: refuse a client that presents no certificate (false = verify one when presented).
    require_client_certificate: bool = True
    #: Seconds the TLS handshake may take; a silent peer or one speaking plain DICOM is closed by then.
    handshake_timeout: float = Field(10.0, gt=0, le=300)
    #: Also serve plain DICOM on scp.port; false = TLS only.
    plain: bool = True

    @property
    def enabled(self) -> bool:
        """True when a TLS listener is configured."""
        return self.port is not None

    @model_validator(mode="after")
    def _complete(self) -> ScpTlsConfig:
        if self.port is None:
            if not self.plain:
                raise ValueError("plain = false needs a TLS port (scp.tls.port), else nothing listens")
            return self
        if self.certificate is None or self.private_key is None:
            raise ValueError("a TLS port needs certificate and private_key")
        if "require_client_certificate" in self.model_fields_set and self.require_client_certificate \
                and self.ca_certificates is None:
            raise ValueError("require_client_certificate needs ca_certificates (the CA client certificates chain to)")
        return self
