"""DICOM over TLS on the SCP (PS3.15 Annex B, BCP 195 profile): the server context and the handshake.

A TLS association is a plain one on a wrapped socket: :class:`~dicom_node.scp.server.StorageServer`
accepts on the TLS port, the association's own thread runs :func:`handshake` with a bounded
socket timeout (so the accept loop never waits on a peer), and the wrapped socket goes to
the same :class:`~dicom_node.scp.association.AssociationHandler` as a plain connection.
The only TLS-specific decision later on is :func:`peer_subject`, which the calling-AE
allowlist compares with ``certificate_subject`` (:func:`dicom_node.config.tls.subject_allows`).

Certificate chains and validity periods (an expired client certificate) are checked by
OpenSSL during the handshake; every refused handshake is one log line with the reason and
the peer address, nothing from the certificate (it may name a person).
"""

from __future__ import annotations

import logging
import socket
import ssl

from dicom_node.config.tls import SUBJECT_ATTRIBUTES, ScpTlsConfig, Subject
from dicom_node.errors import ConfigError

log = logging.getLogger(__name__)

#: TLS 1.2 cipher suites of BCP 195 (RFC 7525 section 4.2, as updated by RFC 9325 section 4.2:
#: TLS_ECDHE_{RSA,ECDSA}_WITH_AES_{128,256}_GCM_SHA{256,384}) plus ECDHE with ChaCha20-Poly1305
#: (RFC 7905), which RFC 9325 lists as acceptable. The DHE_RSA GCM suites of the same list are
#: left out: they need configured DH parameters and every BCP 195 client offers ECDHE.
#: TLS 1.3 suites are all AEAD and are OpenSSL's defaults (RFC 8446); this string does not touch them.
BCP195_TLS12_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
))


def server_context(config: ScpTlsConfig) -> ssl.SSLContext:
    """Build the server-side context of the TLS listener from ``[scp.tls]``.

    TLS 1.2 and 1.3 only, the BCP 195 suites, no compression, no renegotiation
    (RFC 7525 sections 3.3 and 3.4 / RFC 9325); client certificates verified against
    ``ca_certificates`` when set (mutual TLS).

    Parameters
    ----------
    config : ScpTlsConfig
        An enabled ``[scp.tls]`` section (certificate and key are set).

    Returns
    -------
    ssl.SSLContext
        Ready for ``wrap_socket(..., server_side=True)``.

    Raises
    ------
    ConfigError
        A certificate, key or CA file is missing, unreadable or not a matching PEM
        (the message names the key and the file), so the node does not start.
    """
    assert config.certificate is not None and config.private_key is not None  # ScpTlsConfig checks it
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_TLS12_CIPHERS)
    # OP_NO_RENEGOTIATION: a client may not renegotiate a TLS 1.2 session (a cheap CPU drain and
    # the classic renegotiation attacks); TLS 1.3 has no renegotiation at all.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(str(config.certificate), str(config.private_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"scp.tls.certificate / private_key: cannot load {config.certificate} with {config.private_key}: "
            f"{_why(exc)}"
        ) from exc
    if config.ca_certificates is not None:
        try:
            context.load_verify_locations(cafile=str(config.ca_certificates))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"scp.tls.ca_certificates: cannot load {config.ca_certificates}: {_why(exc)}") from exc
        context.verify_mode = ssl.CERT_REQUIRED if config.require_client_certificate else ssl.CERT_OPTIONAL
    return context


def _why(exc: OSError | ssl.SSLError) -> str:
    """A one-line reason: ``reason`` of an SSL error, ``strerror`` of an OS error."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return exc.strerror or type(exc).__name__


def handshake(conn: socket.socket, peer_host: str, context: ssl.SSLContext, timeout: float) -> ssl.SSLSocket | None:
    """Run the server side of the TLS handshake on an accepted connection, within ``timeout`` seconds.

    Called in the association's thread, so a silent peer holds only that thread,
    and only until the timeout.

    Parameters
    ----------
    conn : socket.socket
        The accepted TCP connection.
    peer_host : str
        Peer IP address, for the log line.
    context : ssl.SSLContext
        From :func:`server_context`.
    timeout : float
        Seconds for the whole handshake (``scp.tls.handshake_timeout``); the association's
        own timeouts apply after it.

    Returns
    -------
    ssl.SSLSocket or None
        The wrapped socket, or None when the handshake was refused; the connection is
        then closed and one WARNING line says why (a peer speaking plain DICOM here,
        a certificate from another CA, an expired one, TLS below 1.2, a timeout).
    """
    conn.settimeout(timeout)
    try:
        tls = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
    except (OSError, ValueError) as exc:  # the peer already reset the connection
        log.warning("TLS handshake refused peer=%s reason=%s", peer_host, type(exc).__name__)
        conn.close()
        return None
    try:
        tls.do_handshake()
    except ssl.SSLCertVerificationError as exc:
        reason = f"client certificate not accepted: {exc.verify_message}"
    except ssl.SSLError as exc:
        # OpenSSL's reason code, e.g. WRONG_VERSION_NUMBER (plain DICOM here), UNSUPPORTED_PROTOCOL (TLS 1.1).
        reason = str(exc.reason or exc.library or type(exc).__name__).replace("_", " ").lower()
    except TimeoutError:
        reason = f"no handshake within {timeout:g} s"
    except OSError as exc:
        reason = f"connection lost during the handshake ({type(exc).__name__})"
    else:
        return tls
    log.warning("TLS handshake refused peer=%s reason=%s", peer_host, reason)
    tls.close()
    return None


def peer_subject(sock: socket.socket) -> Subject | None:
    """The subject of the verified client certificate on ``sock``, or None.

    None for a plain connection and for a TLS one without a (verified) client
    certificate; names are normalised like :func:`dicom_node.config.tls.parse_subject`'s.
    """
    if not isinstance(sock, ssl.SSLSocket):
        return None
    cert = sock.getpeercert()
    if not cert:
        return None
    subject = cert.get("subject", ())
    pairs: set[tuple[str, str]] = set()
    for rdn in subject if isinstance(subject, tuple) else ():  # a tuple of RDNs, each a tuple of (name, value)
        for attribute in rdn:
            if isinstance(attribute, tuple):
                name, value = attribute
                pairs.add((SUBJECT_ATTRIBUTES.get(name.upper(), name.upper()), value))
    return frozenset(pairs)
