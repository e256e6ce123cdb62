"""Object URLs and the [objects] section: strict parsing, secure defaults, secrets kept out of reprs and errors.

Also the credentials that need a real server to mean anything: an Azure connection
string against Azurite, and a caller's GCS bearer token used for one call only.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dicom_node.config import load_config
from dicom_node.config.objects import ObjectsConfig
from dicom_node.errors import ConfigError, DicomNodeError
from dicom_node.objects import ObjectRefused, ObjectStores, ObjectUrl
from tests.objects_peers import AZURITE_ACCOUNT, AZURITE_KEY, ObjectPeer, azure_sas
from tests.test_net_policy import fake_resolver


@pytest.mark.parametrize(("text", "scheme", "bucket", "key"), [
    ("gs://hospital-in/studies/1.2.3/ct.dcm", "gs", "hospital-in", "studies/1.2.3/ct.dcm"),
    ("s3://results/out/", "s3", "results", "out/"),
    ("az://dicom-in/a b/ü.dcm", "az", "dicom-in", "a b/ü.dcm"),
    ("gs://bucket", "gs", "bucket", ""),
])
def test_urls_parse_and_print_back(text: str, scheme: str, bucket: str, key: str) -> None:
    url = ObjectUrl.parse(text)
    assert (url.scheme, url.bucket, url.key) == (scheme, bucket, key)
    assert str(url) == (text if key else text + "/")


@pytest.mark.parametrize(("text", "reason"), [
    ("http://bucket/key", "scheme 'http' is not one of az, gs, s3"),
    ("file:///etc/passwd", "scheme 'file'"),
    ("gs://Bad_Bucket/key", "not a valid bucket"),
    ("gs://ab/key", "not a valid bucket"),
    ("s3://bucket/../etc/passwd", "'..' segments"),
    ("s3://bucket/a//b", "empty"),
    ("az://container/a?sv=2021&sig=secret", "query"),
    ("gs://user:pw@bucket/key", "user info"),
    ("s3://bucket:9000/key", "port"),
    ("gs://bucket/a\nb", "control characters"),
    ("gs://bucket/" + "k" * 1100, "sensible length"),
])
def test_malformed_urls_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(ObjectRefused, match=reason) as caught:
        ObjectUrl.parse(text)
    assert isinstance(caught.value, DicomNodeError) and not caught.value.retryable
    assert "secret" not in str(caught.value)


def test_child_joins_one_name_and_refuses_escapes() -> None:
    base = ObjectUrl.parse("gs://results/job-7/")
    assert str(base.child("seg.dcm")) == "gs://results/job-7/seg.dcm"
    assert str(ObjectUrl.parse("gs://results").child("/sr.dcm")) == "gs://results/sr.dcm"
    with pytest.raises(ObjectRefused):
        base.child("../other/x")
    with pytest.raises(ObjectRefused, match="empty"):
        base.child("/")


def test_defaults_allow_no_bucket_and_have_a_cap() -> None:
    config = ObjectsConfig()
    assert config.max_object_bytes == 2 * 1024**3
    assert not (config.gcs.allowed_buckets or config.s3.allowed_buckets or config.azure.allowed_containers)


@pytest.mark.parametrize(("section", "reason"), [
    ({"s3": {"endpoint": "http://169.254.169.254/", "allow_http": True}}, "169.254.169.254"),
    ({"gcs": {"endpoint": "http://metadata.google.internal/", "allow_http": True}}, "metadata service"),
    ({"s3": {"endpoint": "http://127.0.0.1:9000"}}, "plain http; use https or set allow_http = true"),
    ({"s3": {"endpoint": "ftp://minio.local/"}}, "scheme 'ftp'"),
    ({"s3": {"allowed_buckets": ["Not A Bucket"]}}, "is not a bucket"),
    ({"s3": {"access_key_id": "AKIA"}}, "set both access_key_id and secret_access_key"),
    ({"azure": {"sas_token": "sv=1", "account_key": "k"}}, "set one of connection_string, sas_token and account_key"),
    ({"azure": {"connection_string": "AccountName=a;BlobEndpoint=https://a.example"}}, "neither AccountKey"),
    ({"gcs": {"anonymous": True}}, "anonymous is not supported for gcs"),
    ({"max_object_bytes": 0}, "greater than or equal to 1"),
])
def test_bad_sections_are_refused_at_load_naming_the_key(section: dict[str, object], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as caught:
        load_config(None, {f"DICOM_NODE__OBJECTS__{k.upper()}": _toml(v) for k, v in section.items()})
    assert str(caught.value).startswith("objects.")


def _toml(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    return str(value)


def test_a_section_comes_from_toml_and_the_environment(tmp_path: Path) -> None:
    conf = tmp_path / "node.toml"
    conf.write_text('[objects.s3]\nregion = "eu-west-1"\naccess_key_id = "AKIAEXAMPLE"\n'
                    'secret_access_key = "s3cr3t-value"\nallowed_buckets = ["results"]\n'
                    '[objects.gcs]\nservice_account_file = "secrets/gcs.json"\n')
    config = load_config(conf, {"DICOM_NODE__OBJECTS__MAX_OBJECT_BYTES": "1048576"})
    assert config.objects.max_object_bytes == 1048576
    assert config.objects.s3.allowed_buckets == ["results"] and config.objects.s3.region == "eu-west-1"
    assert config.objects.gcs.service_account_file == tmp_path / "secrets" / "gcs.json"  # relative to the file
    assert "s3cr3t-value" not in repr(config) and "s3cr3t-value" not in str(config.objects)


def test_a_store_without_a_credential_is_refused_before_any_connection() -> None:
    stores = ObjectStores(ObjectsConfig.model_validate({"s3": {"allowed_buckets": ["results"]}}))
    with pytest.raises(ObjectRefused, match="S3 is not configured for results: set .*access_key_id"):
        stores.get(ObjectUrl.parse("s3://results/a.dcm"))


def test_an_azure_connection_string_reaches_azurite(azurite: ObjectPeer) -> None:
    secret = ("DefaultEndpointsProtocol=http;AccountName=" + AZURITE_ACCOUNT + ";AccountKey=" + AZURITE_KEY
              + ";BlobEndpoint=" + azurite.endpoint + ";")
    config = ObjectsConfig.model_validate({"azure": {"connection_string": secret, "allow_http": True,
                                                     "allowed_containers": ["inputs"]}})
    url = azurite.seed("conn/a.dcm", b"via connection string")
    assert ObjectStores(config).get(url) == b"via connection string"
    assert AZURITE_KEY not in repr(config)


def test_an_azure_sas_token_reads_and_writes_within_its_permissions(azurite: ObjectPeer) -> None:
    def stores(sas: str) -> ObjectStores:
        return ObjectStores(ObjectsConfig.model_validate({"azure": {
            "account": AZURITE_ACCOUNT, "endpoint": azurite.endpoint, "allow_http": True, "sas_token": sas,
            "allowed_containers": ["inputs", "results"]}}))

    writer = stores(azure_sas("results", "rwl"))
    writer.put(ObjectUrl.parse("az://results/sas/seg.dcm"), b"written with a SAS")
    assert azurite.fetch("sas/seg.dcm") == b"written with a SAS"
    reader = stores(azure_sas("inputs", "rl"))
    url = azurite.seed("sas/in.dcm", b"read with a SAS")
    assert reader.get(url) == b"read with a SAS"
    with pytest.raises(ObjectRefused, match="access denied by Azure Blob Storage for inputs") as caught:
        reader.put(url.child("no-write.dcm"), b"x")  # the SAS grants no write
    assert "sig=" not in str(caught.value)
    with pytest.raises(ObjectRefused, match="access denied by Azure Blob Storage for results"):
        reader.get(ObjectUrl.parse("az://results/sas/seg.dcm"))  # signed for another container


def test_a_connection_string_endpoint_is_checked_by_the_outbound_policy() -> None:
    with pytest.raises(ConfigError, match="BlobEndpoint.*169.254"):
        load_config(None, {"DICOM_NODE__OBJECTS__AZURE": '{connection_string = "AccountName=a;AccountKey=eA==;'
                                                          'BlobEndpoint=http://169.254.169.254/a", allow_http = true}'})


def test_a_callers_gcs_bearer_token_serves_that_call_only(gcs_emulator: ObjectPeer) -> None:
    config = ObjectsConfig.model_validate({"gcs": {"endpoint": gcs_emulator.endpoint, "allow_http": True,
                                                   "allowed_buckets": ["inputs"]}})
    stores = ObjectStores(config)
    url = gcs_emulator.seed("vertex/in.dcm", b"caller's object")
    with pytest.raises(ObjectRefused, match="or pass the caller's bearer token"):
        stores.get(url)
    assert stores.get(url, bearer_token="ya29.caller-token") == b"caller's object"
    with pytest.raises(ObjectRefused):  # the token was not kept for later calls
        stores.get(url)
    with pytest.raises(ObjectRefused, match="bearer token is accepted for gs:// URLs only"):
        ObjectStores(ObjectsConfig.model_validate({"s3": {"allowed_buckets": ["inputs"], "workload_identity": True}})
                     ).get(ObjectUrl.parse("s3://inputs/a"), bearer_token="t")



def test_an_endpoint_name_resolving_to_a_metadata_address_is_refused_before_connecting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # No DNS server can run here: the name is answered at socket.getaddrinfo (a fake resolver, as in
    # test_net_policy). The load-time check passes (no DNS then); the first use resolves and refuses.
    calls: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver({"storage.example": [["169.254.169.254"]]}, calls))
    section = {"s3": {"endpoint": "http://storage.example:9000", "allow_http": True, "access_key_id": "a",
                      "secret_access_key": "b", "allowed_buckets": ["inputs"]}}
    stores = ObjectStores(ObjectsConfig.model_validate(section))
    with pytest.raises(ObjectRefused, match="S3 endpoint for inputs refused: .*169.254.169.254"):
        stores.get(ObjectUrl.parse("s3://inputs/a.dcm"))
    assert calls == ["storage.example"]
