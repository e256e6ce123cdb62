"""Delivery rules without peers: destination config and SSRF checks, failure classification, backoff."""

from __future__ import annotations

import ssl

import pytest
from pydantic import ValidationError

from dicom_node.delivery.classify import (
    Verdict,
    backoff,
    classify_dimse_status,
    classify_exception,
    classify_http_status,
    classify_rejection,
)
from dicom_node.delivery.config import DeliveryConfig, RetryPolicy, StowDestination, check_outbound_url
from dicom_node.errors import DeliveryError

# --- SSRF ----------------------------------------------------------------------------------------


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
    assert check_outbound_url(url) == url.rstrip("/")


@pytest.mark.parametrize(
    ("url", "why"),
    [
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
    ],
)
def test_forbidden_urls_are_refused_with_the_reason(url: str, why: str) -> None:
    with pytest.raises(DeliveryError, match="refused|not allowed|no host|malformed|user info") as info:
        check_outbound_url(url)
    assert why in str(info.value) and not info.value.retryable


def test_link_local_can_be_allowed_explicitly() -> None:
    assert check_outbound_url("http://169.254.1.2:8042/x", allow_link_local=True) == "http://169.254.1.2:8042/x"


def test_resolved_host_names_are_checked() -> None:
    # "localhost" resolves to loopback: allowed even when resolving.
    check_outbound_url("http://localhost:8042/", resolve=True)


def test_destination_config_rejects_bad_urls_and_cleartext_credentials() -> None:
    with pytest.raises(ValidationError, match="169.254"):
        StowDestination(name="x", url="http://169.254.169.254/")
    with pytest.raises(ValidationError, match="plain http"):
        StowDestination(name="x", url="http://10.0.0.5/dicom-web", auth={"type": "basic", "username": "u", "password": "p"})
    ok = StowDestination(name="x", url="http://127.0.0.1/dicom-web", auth={"type": "basic", "username": "u", "password": "hunter2"})
    assert "hunter2" not in repr(ok) and ok.auth.secret() == "hunter2"
    with pytest.raises(ValidationError, match="exactly one of token"):
        StowDestination(name="x", url="https://pacs/dicom-web", auth={"type": "bearer"})


def test_delivery_section_parses_a_discriminated_union_and_rejects_unknown_keys() -> None:
    config = DeliveryConfig.model_validate({
        "destinations": [
            {"kind": "dimse", "name": "pacs", "ae_title": "PACS", "host": "10.1.2.3", "port": 104},
            {"kind": "stowrs", "name": "web", "url": "https://pacs.example.org/dicom-web",
             "auth": {"type": "bearer", "token": "t"}},
            {"kind": "reply", "name": "caller", "port": 104, "ae_titles": {"CT01": "CT01_STORE"}},
        ],
        "retry": {"attempts": 5},
        "known_peers": [{"ae_title": "CT01", "host": "10.1.5.20", "port": 104}],
    })
    assert [d.kind for d in config.destinations] == ["dimse", "stowrs", "reply"]
    assert config.retry.attempts == 5 and config.retry.initial == 30.0 and config.retry.cap == 600.0
    for bad in (
        {"destinations": [{"kind": "smtp", "name": "x"}]},
        {"destinations": [{"kind": "dimse", "name": "p", "ae_title": "P", "host": "h", "port": 1, "colour": 1}]},
        {"destinations": [{"kind": "dimse", "name": "p", "ae_title": "P", "host": "h", "port": 1}] * 2},
        {"destinations": [{"kind": "dimse", "name": "p", "ae_title": "BAD\\AE", "host": "h", "port": 1}]},
        {"destinations": [{"kind": "dimse", "name": "p", "ae_title": "P", "host": "169.254.169.254", "port": 1}]},
        {"destinations": [{"kind": "dimse", "name": "p", "ae_title": "P", "host": "h", "port": 1, "cert_file": "c.pem"}]},
        {"retry": {"attempts": 0}},
    ):
        with pytest.raises(ValidationError):
            DeliveryConfig.model_validate(bad)


# --- classification --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (0x0000, Verdict.SUCCESS),
        (0xB000, Verdict.WARNING), (0xB007, Verdict.WARNING), (0xB006, Verdict.WARNING), (0x0001, Verdict.WARNING),
        (0xA700, Verdict.RETRY), (0xA7FF, Verdict.RETRY), (0xA701, Verdict.RETRY),
        (0x0110, Verdict.RETRY),
        (0xA900, Verdict.DEAD), (0xA9FF, Verdict.DEAD),
        (0xC000, Verdict.DEAD), (0xCFFF, Verdict.DEAD), (0xC211, Verdict.DEAD),
        (0x0122, Verdict.DEAD), (0x0124, Verdict.DEAD),
    ],
)
def test_dimse_status_table(status: int, verdict: Verdict) -> None:
    assert classify_dimse_status(status) is verdict


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        (200, Verdict.SUCCESS), (202, Verdict.SUCCESS),
        (408, Verdict.RETRY), (429, Verdict.RETRY), (500, Verdict.RETRY), (502, Verdict.RETRY), (503, Verdict.RETRY),
        (504, Verdict.RETRY),
        (400, Verdict.DEAD), (401, Verdict.DEAD), (403, Verdict.DEAD), (404, Verdict.DEAD), (409, Verdict.DEAD),
        (413, Verdict.DEAD), (415, Verdict.DEAD), (301, Verdict.DEAD),
    ],
)
def test_http_status_table(code: int, verdict: Verdict) -> None:
    assert classify_http_status(code) is verdict


def test_rejections_and_transport_errors() -> None:
    assert classify_rejection(1) is Verdict.DEAD
    assert classify_rejection(2) is Verdict.RETRY
    assert classify_exception(ConnectionRefusedError()) is Verdict.RETRY
    assert classify_exception(TimeoutError()) is Verdict.RETRY
    assert classify_exception(ssl.SSLCertVerificationError()) is Verdict.DEAD
    assert Verdict.WARNING.delivered and not Verdict.RETRY.delivered


# --- backoff ---------------------------------------------------------------------------------------


def test_default_backoff_schedule_doubles_from_30_s_to_a_600_s_cap() -> None:
    policy = RetryPolicy()
    assert policy.attempts == 10
    assert [backoff(n, policy) for n in range(1, policy.attempts)] == [30, 60, 120, 240, 480, 600, 600, 600, 600]
    assert backoff(0, policy) == 0.0
    assert backoff(10_000, policy) == 600.0


def test_backoff_is_configurable() -> None:
    policy = RetryPolicy(attempts=4, initial=5, factor=3, cap=100)
    assert [backoff(n, policy) for n in (1, 2, 3, 4)] == [5, 15, 45, 100]
