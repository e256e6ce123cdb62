"""Configuration of object storage: the ``[objects]`` section (Google Cloud Storage, Azure Blob, S3).

Hung off ``NodeConfig.objects`` and read by :class:`dicom_node.objects.ObjectStores`::

    [objects]
    max_object_bytes = 2147483648   # the default cap on one object read (2 GiB)
    timeout = 60.0                  # seconds without progress (connect_timeout, transfer_timeout: whole request)

    [objects.gcs]
    service_account_file = "/run/secrets/gcs.json"   # or service_account_key, or workload_identity = true
    allowed_buckets = ["hospital-inputs", "hospital-results"]

    [objects.azure]
    account = "hospitalstore"
    sas_token = "sv=...&sig=..."          # or account_key, or connection_string, or workload_identity = true
    allowed_containers = ["dicom-in"]

    [objects.s3]
    region = "eu-west-1"
    access_key_id = "AKIA..."
    secret_access_key = "..."             # or workload_identity = true (IRSA, instance profile)
    allowed_buckets = ["results"]

Secure by default: an empty allowlist allows nothing, so a store is reached only
for buckets the operator named; every bucket is checked before any network I/O.
Secrets are :class:`pydantic.SecretStr` (never in ``repr`` or logs). Without an
explicit credential a store is refused unless ``workload_identity = true`` (the
library then asks the cloud's metadata service or the environment for one) or, for
S3 and Azure, ``anonymous = true`` (unsigned requests, public buckets): the library
would otherwise fall back to the link-local metadata address on its own. GCS has no
``anonymous``: obstore 0.12.1 still asks the metadata address for a token on writes.
For GCS a caller's bearer token (Vertex ``gcs_uri`` + ``bearer_token``) may stand
in for the configured credential, for that one call.

``endpoint`` is the operator's own server (an emulator, MinIO, a private
endpoint). It is checked by the configured-peer outbound policy
(:meth:`dicom_node.net.policy.OutboundPolicy.configured`): loopback and private
ranges pass, as for any PACS the operator configures, while link-local and cloud
metadata addresses are refused unless ``allow_link_local = true``. Plain ``http``
endpoints need ``allow_http = true``.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from dicom_node.net.policy import OutboundPolicy, OutboundRefused

__all__ = ["AzureObjectsConfig", "GcsObjectsConfig", "ObjectsConfig", "S3ObjectsConfig", "BUCKET_RE"]

#: Bucket and container names: S3 and GCS (3-63 characters; GCS also allows '_'), Azure (3-63, no '.').
#: Anything else cannot name a bucket on any of the three, so it is refused as malformed.
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")


def _check_names(names: list[str], key: str) -> list[str]:
    for name in names:
        if not BUCKET_RE.fullmatch(name):
            raise ValueError(f"{key}: {name!r} is not a bucket/container name (3-63 of a-z 0-9 . _ -)")
    return names


class _Model(BaseModel):
    """Base: unknown keys are errors and values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _StoreConfig(_Model):
    """What every store section has: an endpoint override, http opt-in and the credential fallbacks."""

    #: The operator's own endpoint (emulator, MinIO, private endpoint); None = the cloud's public one.
    endpoint: str | None = None
    #: Plain http to ``endpoint`` (emulators on loopback); https is required otherwise.
    allow_http: bool = False
    allow_link_local: bool = False
    #: No explicit credential: let the library find one (metadata service, federated token file, env).
    workload_identity: bool = False
    #: Unsigned requests (public buckets only).
    anonymous: bool = False

    def _check_endpoint(self, key: str) -> None:
        if self.endpoint is not None:
            self._check_url(self.endpoint, key)

    def _check_url(self, url: str, key: str) -> None:
        """Refuse an endpoint the configured-peer outbound policy refuses, or plain http without opt-in."""
        try:
            parts = OutboundPolicy.configured(self.allow_link_local).check_url(url)
        except OutboundRefused as exc:
            raise ValueError(f"{key}: {exc}") from exc
        if parts.scheme == "http" and not self.allow_http:
            raise ValueError(f"{key} is plain http; use https or set allow_http = true")



class GcsObjectsConfig(_StoreConfig):
    """``[objects.gcs]``: Google Cloud Storage (``gs://bucket/key``)."""

    service_account_file: Path | None = None
    #: The service account JSON itself (prefer ``service_account_file``).
    service_account_key: SecretStr | None = None
    allowed_buckets: list[str] = Field(default_factory=list)

    @field_validator("allowed_buckets")
    @classmethod
    def _buckets(cls, v: list[str]) -> list[str]:
        return _check_names(v, "allowed_buckets")

    @model_validator(mode="after")
    def _checks(self) -> GcsObjectsConfig:
        if self.service_account_file is not None and self.service_account_key is not None:
            raise ValueError("set one of service_account_file and service_account_key")
        if self.anonymous:
            # Checked with obstore 0.12.1: skip_signature still fetches a token from the metadata
            # address (169.254.169.254) for writes, so "anonymous" would not be what it says.
            raise ValueError("anonymous is not supported for gcs (the client would still ask the cloud metadata "
                             "service for a token); use a service account, or workload_identity = true")
        self._check_endpoint("endpoint")
        return self

    def has_credential(self) -> bool:
        """Whether requests can be signed without a caller's bearer token."""
        return (self.service_account_file is not None or self.service_account_key is not None
                or self.workload_identity or self.anonymous)


class AzureObjectsConfig(_StoreConfig):
    """``[objects.azure]``: Azure Blob Storage (``az://container/key``), one storage account."""

    #: Storage account name (``devstoreaccount1`` for Azurite); may come from ``connection_string``.
    account: str | None = None
    #: ``AccountName=...;AccountKey=...`` or ``...;SharedAccessSignature=...`` (``BlobEndpoint`` is the endpoint).
    connection_string: SecretStr | None = None
    sas_token: SecretStr | None = None
    account_key: SecretStr | None = None
    allowed_containers: list[str] = Field(default_factory=list)

    @field_validator("allowed_containers")
    @classmethod
    def _containers(cls, v: list[str]) -> list[str]:
        return _check_names(v, "allowed_containers")

    @model_validator(mode="after")
    def _checks(self) -> AzureObjectsConfig:
        given = [k for k in ("connection_string", "sas_token", "account_key") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"set one of connection_string, sas_token and account_key (got {', '.join(given)})")
        if self.connection_string is not None:
            fields = parse_connection_string(self.connection_string.get_secret_value())
            if not ({"AccountKey", "SharedAccessSignature"} & fields.keys()):
                raise ValueError("connection_string has neither AccountKey nor SharedAccessSignature")
            endpoint = fields.get("BlobEndpoint")
            if endpoint is not None:
                self._check_url(endpoint, "connection_string BlobEndpoint")
        self._check_endpoint("endpoint")
        return self

    def resolved(self) -> tuple[str | None, str | None, str | None, str | None]:
        """``(account, endpoint, account_key, sas_token)`` with ``connection_string`` unpacked (secrets in clear)."""
        account, endpoint = self.account, self.endpoint
        key = self.account_key.get_secret_value() if self.account_key is not None else None
        sas = self.sas_token.get_secret_value() if self.sas_token is not None else None
        if self.connection_string is not None:
            fields = parse_connection_string(self.connection_string.get_secret_value())
            account = fields.get("AccountName", account)
            endpoint = fields.get("BlobEndpoint", endpoint)
            key = fields.get("AccountKey")
            sas = fields.get("SharedAccessSignature")
        return account, endpoint, key, sas

    def has_credential(self) -> bool:
        """Whether requests can be signed."""
        return (any(v is not None for v in (self.connection_string, self.sas_token, self.account_key))
                or self.workload_identity or self.anonymous)


def parse_connection_string(text: str) -> dict[str, str]:
    """The ``Key=Value;...`` fields of an Azure Storage connection string.

    Raises
    ------
    ValueError
        A field without ``=`` (the message names the field's key only, never a value).
    """
    fields: dict[str, str] = {}
    for part in text.strip().strip(";").split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError("connection_string: every field is Key=Value")
        fields[key.strip()] = value.strip()
    return fields


class S3ObjectsConfig(_StoreConfig):
    """``[objects.s3]``: Amazon S3 or an S3-compatible store (``s3://bucket/key``)."""

    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    #: ``https://bucket.host/key`` instead of ``https://host/bucket/key`` (AWS's default; most emulators want False).
    virtual_hosted_style: bool = False
    allowed_buckets: list[str] = Field(default_factory=list)

    @field_validator("allowed_buckets")
    @classmethod
    def _buckets(cls, v: list[str]) -> list[str]:
        return _check_names(v, "allowed_buckets")

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9-]{1,32}", v):
            raise ValueError(f"region {v!r} is not a region name")
        return v

    @model_validator(mode="after")
    def _checks(self) -> S3ObjectsConfig:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set both access_key_id and secret_access_key, or neither")
        self._check_endpoint("endpoint")
        return self

    def has_credential(self) -> bool:
        """Whether requests can be signed."""
        return self.access_key_id is not None or self.workload_identity or self.anonymous


class ObjectsConfig(_Model):
    """``[objects]``: object storage as an input and an output (:mod:`dicom_node.objects`)."""

    #: Default cap on one object read (get, download); a caller's own cap can only lower it.
    max_object_bytes: int = Field(2 * 1024**3, ge=1)
    #: Seconds a request may go without receiving anything (a stalled store), and for connecting.
    timeout: float = Field(60.0, gt=0, le=3600)
    connect_timeout: float = Field(10.0, gt=0, le=600)
    #: Seconds one whole request may take, body included (2 GiB at 1 MB/s takes about 2100 s).
    transfer_timeout: float = Field(3600.0, gt=0, le=86400)
    #: Objects one ``list`` returns at most, unless the caller asks for fewer.
    max_list_items: int = Field(10_000, ge=1, le=10_000_000)
    gcs: GcsObjectsConfig = Field(default_factory=GcsObjectsConfig)
    azure: AzureObjectsConfig = Field(default_factory=AzureObjectsConfig)
    s3: S3ObjectsConfig = Field(default_factory=S3ObjectsConfig)

    @model_validator(mode="after")
    def _endpoint_hosts(self) -> ObjectsConfig:
        # A connection string's BlobEndpoint and the endpoint key must not disagree silently.
        az = self.azure
        if az.connection_string is not None and az.endpoint is not None:
            fields = parse_connection_string(az.connection_string.get_secret_value())
            blob = fields.get("BlobEndpoint")
            if blob is not None and urlsplit(blob).netloc != urlsplit(az.endpoint).netloc:
                raise ValueError("azure: endpoint and the connection string's BlobEndpoint name different hosts")
        return self
