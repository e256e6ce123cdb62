"""Delivery rules without peers: destination config and failure classification (SSRF and backoff: test_net_*)."""

from __future__ import annotations

import ssl

import pytest
from pydantic import ValidationError

from dicom_node.config.delivery import DeliveryConfig, StowDestination
from dicom_node.delivery.classify import (
    Verdict,
    classify_dimse_status,
    classify_exception,
    classify_http_status,
    classify_rejection,
)

# --- destination config (the SSRF rules themselves are tested in test_net_policy.py) ----------------


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
