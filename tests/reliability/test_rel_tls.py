"""DICOM TLS on the SCP (PS3.15 Annex B, BCP 195) against a real running node.

A CA, the server certificate and client certificates (valid, from another CA, expired,
another subject) are generated with ``cryptography`` into a temporary folder. Clients:
DCMTK ``echoscu`` / ``storescu`` with their TLS options, pynetdicom's TLS client, and
Python's ``ssl`` for the handshakes a DICOM client would not attempt (plain DICOM on
the TLS port, a silent peer, TLS 1.1).
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydicom.dataset import Dataset
from pynetdicom import AE

from dicom_node.config import load_config
from dicom_node.errors import ConfigError
from dicom_node.node import Node
from dicom_node.scp.negotiation import REASON_CALLING_AE
from tests.conftest import node_config, require_tool, wait_for
from tests.scu import make_ae

ENV = dict(os.environ, TCP_NODELAY="1")
VERIFICATION = "1.2.840.10008.1.1"
#: A bound for "the node answers or closes", not a timing assertion: without it a hang would hang the test.
HANG = 20.0


@dataclass(frozen=True)
class Pki:
    """Paths of the generated PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path  # CN=modality-a, from the CA
    client_key: Path
    other_subject_cert: Path  # CN=modality-b, from the CA
    other_subject_key: Path
    wrong_ca_cert: Path  # CN=modality-a, from another CA
    wrong_ca_key: Path
    expired_cert: Path  # CN=modality-a, from the CA, expired yesterday
    expired_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Hospital"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], cn: str, server: bool,
          expired: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    start, end = (now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)) if expired else \
        (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    builder = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca[0].subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                              else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if server:
        import ipaddress

        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(ca[1], hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate and the client certificates of every case."""
    d = tmp_path_factory.mktemp("pki")
    ca = _ca("Test DICOM CA")
    other_ca = _ca("Other CA")
    files: dict[str, Path] = {"ca": _write_cert(d / "ca.pem", ca[0])}
    for label, (cert, key) in {
        "server": _leaf(ca, "dicom-node", server=True),
        "client": _leaf(ca, "modality-a", server=False),
        "other_subject": _leaf(ca, "modality-b", server=False),
        "wrong_ca": _leaf(other_ca, "modality-a", server=False),
        "expired": _leaf(ca, "modality-a", server=False, expired=True),
    }.items():
        files[f"{label}_cert"] = _write_cert(d / f"{label}.crt", cert)
        files[f"{label}_key"] = _write_key(d / f"{label}.key", key)
    return Pki(**files)


def _tls_section(pki: Pki, **extra: object) -> dict[str, object]:
    return {"port": 0, "certificate": str(pki.server_cert), "private_key": str(pki.server_key),
            "ca_certificates": str(pki.ca), **extra}


def _client_context(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def _tls_associate(port: int, context: ssl.SSLContext, calling: str = "TEST_SCU"):  # -> Association
    return make_ae(calling).associate("127.0.0.1", port, ae_title="DICOM_NODE", tls_args=(context, "localhost"))


def _ct(tmp: Path) -> Path:
    from dicom_node.synthetic import SeriesSpec, write_ct_series

    return write_ct_series(tmp, SeriesSpec(slices=1, rows=16, columns=16, seed="tls"))[0]


def _echo_plain(node: Node) -> None:
    ae = AE(ae_title="TEST_SCU")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="DICOM_NODE")
    assert assoc.is_established, "the plain port must keep working"
    assert int(assoc.send_c_echo().Status) == 0
    assoc.release()


def _refused(caplog: pytest.LogCaptureFixture, expected: int = 1) -> list[str]:
    """The node's "TLS handshake refused" lines, once ``expected`` are there.

    The client sees the alert before the node's thread logs, so the lines are waited for.
    """
    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("TLS handshake refused")]

    wait_for(lambda: len(lines()) >= expected, timeout=HANG)
    return lines()


@pytest.fixture
def tls_node(start_node: Callable[..., Node], pki: Pki) -> Node:
    """A node with mutual TLS on an ephemeral port next to its plain port."""
    node = start_node(scp={"tls": _tls_section(pki, handshake_timeout=2.0)})
    assert node.scp.tls_port is not None
    return node


# -- clients that must get in ----------------------------------------------------------------

@pytest.mark.parametrize("profile", ["+py", "+px"], ids=["bcp195-nd", "bcp195"])
def test_dcmtk_echoscu_and_storescu_over_mutual_tls(tls_node: Node, pki: Pki, tmp_path: Path, profile: str) -> None:
    echoscu = require_tool("echoscu", "apt-get install dcmtk")
    storescu = require_tool("storescu", "apt-get install dcmtk")
    tls = ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca), profile]
    port = str(tls_node.scp.tls_port)
    out = subprocess.run([echoscu, *tls, "-aec", "DICOM_NODE", "127.0.0.1", port], env=ENV, capture_output=True,
                         timeout=HANG)
    assert out.returncode == 0, out.stderr
    ct = _ct(tmp_path)
    out = subprocess.run([storescu, *tls, "-aec", "DICOM_NODE", "-aet", "MODALITY", "127.0.0.1", port, str(ct)],
                         env=ENV, capture_output=True, timeout=HANG)
    assert out.returncode == 0, out.stderr
    rows = list(tls_node.index.reader().execute("SELECT calling_ae FROM instances"))
    assert [r["calling_ae"] for r in rows] == ["MODALITY"], "the instance sent over TLS is indexed like any other"


def test_pynetdicom_tls_client_stores_and_plain_port_still_serves(tls_node: Node, pki: Pki, tmp_path: Path) -> None:
    import pydicom

    assoc = _tls_associate(tls_node.scp.tls_port, _client_context(pki, pki.client_cert, pki.client_key))
    assert assoc.is_established
    ds: Dataset = pydicom.dcmread(_ct(tmp_path))
    assert int(assoc.send_c_store(ds).Status) == 0
    assoc.release()
    assert tls_node.index.counts()["instances"] == 1
    _echo_plain(tls_node)


# -- clients that must be refused ------------------------------------------------------------

@pytest.mark.parametrize(("case", "reason"), [
    ("wrong_ca", "client certificate not accepted"),
    ("expired", "certificate has expired"),
    ("no_certificate", "certificate"),
])
def test_bad_client_certificates_are_refused(tls_node: Node, pki: Pki, caplog: pytest.LogCaptureFixture,
                                             case: str, reason: str) -> None:
    caplog.set_level(logging.WARNING, logger="dicom_node.scp.tls")
    cert, key = {"wrong_ca": (pki.wrong_ca_cert, pki.wrong_ca_key), "expired": (pki.expired_cert, pki.expired_key),
                 "no_certificate": (None, None)}[case]
    assoc = _tls_associate(tls_node.scp.tls_port, _client_context(pki, cert, key))
    assert not assoc.is_established
    lines = _refused(caplog)
    assert len(lines) == 1 and reason in lines[0] and "peer=127.0.0.1" in lines[0], lines
    assert "modality-a" not in lines[0], "nothing from the certificate is logged"
    _echo_plain(tls_node)


def test_dcmtk_without_a_client_certificate_is_refused(tls_node: Node, pki: Pki) -> None:
    echoscu = require_tool("echoscu", "apt-get install dcmtk")
    out = subprocess.run([echoscu, "+tla", "+cf", str(pki.ca), "-aec", "DICOM_NODE", "127.0.0.1",
                          str(tls_node.scp.tls_port)], env=ENV, capture_output=True, timeout=HANG)
    assert out.returncode != 0


def test_subject_tied_to_an_ae_title(start_node: Callable[..., Node], pki: Pki) -> None:
    peers = [{"ae_title": "MODALITY_A", "certificate_subject": "CN=modality-a,O=Test Hospital"},
             {"ae_title": "TEST_SCU"}]
    node = start_node(scp={"tls": _tls_section(pki), "allowed_peers": peers})
    ok = _tls_associate(node.scp.tls_port, _client_context(pki, pki.client_cert, pki.client_key), "MODALITY_A")
    assert ok.is_established
    ok.release()
    # Another subject from the same CA: the handshake passes, the AE title is refused (PS3.8 Table 9-21).
    other = _tls_associate(node.scp.tls_port, _client_context(pki, pki.other_subject_cert, pki.other_subject_key),
                           "MODALITY_A")
    assert other.is_rejected
    rj = other.acceptor.primitive
    assert (int(rj.result), int(rj.result_source), int(rj.diagnostic)) == (1, 1, REASON_CALLING_AE)
    # The AE tied to a certificate cannot come in on the plain port either.
    plain = make_ae("MODALITY_A").associate("127.0.0.1", node.scp.port, ae_title="DICOM_NODE")
    assert plain.is_rejected
    # An AE not tied to a subject is unaffected, on either port.
    untied = _tls_associate(node.scp.tls_port, _client_context(pki, pki.other_subject_cert, pki.other_subject_key))
    assert untied.is_established
    untied.release()
    _echo_plain(node)


def test_plain_dicom_and_silent_peers_on_the_tls_port_are_closed(tls_node: Node, caplog: pytest.LogCaptureFixture
                                                                 ) -> None:
    caplog.set_level(logging.WARNING, logger="dicom_node.scp.tls")
    port = tls_node.scp.tls_port
    # pynetdicom speaking plain DICOM to the TLS port: no association.
    ae = make_ae()
    ae.acse_timeout = HANG
    assert not ae.associate("127.0.0.1", port, ae_title="DICOM_NODE").is_established
    # A silent peer: closed by the handshake timeout (2 s here), while the node keeps serving.
    with socket.create_connection(("127.0.0.1", port), timeout=HANG) as silent:
        _echo_plain(tls_node)  # the accept loop is not held by the silent handshake
        assert silent.recv(1) == b"", "a silent peer is closed by the handshake timeout"
    lines = _refused(caplog, 2)
    assert len(lines) == 2 and "no handshake within 2 s" in lines[1], lines
    _echo_plain(tls_node)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
@pytest.mark.parametrize(("version", "ciphers", "refusal"), [
    (ssl.TLSVersion.TLSv1_1, "ALL:@SECLEVEL=0", "unsupported protocol"),  # SECLEVEL=0: let OpenSSL offer 1.1
    (ssl.TLSVersion.TLSv1_2, "AES128-SHA256:AES256-GCM-SHA384", "no shared cipher"),  # no ECDHE: not BCP 195
    (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256", None),
    (ssl.TLSVersion.TLSv1_3, None, None),
], ids=["tls1.1", "tls1.2-rsa-kx", "tls1.2-bcp195", "tls1.3"])
def test_protocol_versions_and_cipher_suites(tls_node: Node, pki: Pki, caplog: pytest.LogCaptureFixture,
                                             version: ssl.TLSVersion, ciphers: str | None, refusal: str | None) -> None:
    caplog.set_level(logging.WARNING, logger="dicom_node.scp.tls")
    context = _client_context(pki, pki.client_cert, pki.client_key)
    context.minimum_version = context.maximum_version = version
    if ciphers is not None:
        context.set_ciphers(ciphers)
    if version == ssl.TLSVersion.TLSv1_1:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", tls_node.scp.tls_port), timeout=HANG) as raw:
        if refusal is None:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
                assert tls.compression() is None
            return
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(raw, server_hostname="localhost")
    lines = _refused(caplog)
    assert len(lines) == 1 and refusal in lines[0], lines


# -- configuration ---------------------------------------------------------------------------

def test_unreadable_key_stops_the_node_with_a_config_error(tmp_path: Path, pki: Pki) -> None:
    config = node_config(tmp_path / "node", scp={"tls": _tls_section(pki, private_key=str(tmp_path / "missing.key"))})
    with pytest.raises(ConfigError, match=r"scp\.tls\.certificate / private_key: cannot load .*missing\.key"):
        Node(config)
    config = node_config(tmp_path / "node2", scp={"tls": _tls_section(pki, private_key=str(pki.client_key))})
    with pytest.raises(ConfigError, match=r"scp\.tls"):  # a key that is not the certificate's
        Node(config)


def test_tls_config_paths_resolve_next_to_the_file_and_combinations_are_checked(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    toml = conf / "node.toml"
    toml.write_text('[scp.tls]\nport = 2762\ncertificate = "tls/server.crt"\nprivate_key = "tls/server.key"\n'
                    'ca_certificates = "tls/ca.pem"\n\n[[scp.allowed_peers]]\nae_title = "CT1"\n'
                    'certificate_subject = "CN=ct1,O=Hospital"\n')
    tls = load_config(toml, environ={}).scp.tls
    assert tls.certificate == conf / "tls" / "server.crt" and tls.ca_certificates == conf / "tls" / "ca.pem"
    assert tls.require_client_certificate and tls.plain

    def error(text: str) -> str:
        toml.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(toml, environ={})
        return str(info.value)

    assert "needs certificate and private_key" in error('[scp.tls]\nport = 2762\n')
    assert "needs client certificates" in error(
        '[scp.tls]\nport = 2762\ncertificate = "a"\nprivate_key = "b"\n\n'
        '[[scp.allowed_peers]]\nae_title = "CT1"\ncertificate_subject = "CN=ct1"\n')
    assert "unknown subject attribute 'XX'" in error('[[scp.allowed_peers]]\nae_title = "CT1"\n'
                                                     'certificate_subject = "XX=1"\n')
    assert "needs a TLS port" in error('[scp.tls]\nplain = false\n')
    assert "needs ca_certificates" in error(
        '[scp.tls]\nport = 2762\ncertificate = "a"\nprivate_key = "b"\nrequire_client_certificate = true\n')


def test_tls_only_node_does_not_listen_in_plain(start_node: Callable[..., Node], pki: Pki) -> None:
    node = start_node(scp={"tls": _tls_section(pki, plain=False)})
    assert node.scp.port == node.scp.tls_port
    assoc = _tls_associate(node.scp.tls_port, _client_context(pki, pki.client_cert, pki.client_key))
    assert assoc.is_established
    assoc.release()


def test_docs_example_is_a_valid_config(tmp_path: Path) -> None:
    """The TOML example of docs/tls.md loads through the config loader (files are read only at node start)."""
    import re

    text = (Path(__file__).resolve().parents[2] / "docs" / "tls.md").read_text(encoding="utf-8")
    block = re.search(r"```toml\n(.*?)```", text, flags=re.DOTALL)
    assert block is not None, "docs/tls.md has no TOML example"
    (tmp_path / "node.toml").write_text(block.group(1))
    scp = load_config(tmp_path / "node.toml", environ={}).scp
    assert scp.tls.port == 2762 and scp.tls.ca_certificates == tmp_path / "tls" / "ca.pem"
    assert [p.certificate_subject for p in scp.allowed_peers] == ["CN=ct-scanner-1,O=Hospital", None]
