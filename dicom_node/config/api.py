"""The ``[api]`` config section: where the REST facade listens, who may call it, and its limits."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dicom_node.validators import is_loopback

Scope = Literal["read", "submit", "admin", "metrics"]
#: A Vertex AI project, location or endpoint ID in a predict path (also the ``vertex_endpoints`` keys).
VERTEX_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


def _read_only() -> list[Scope]:
    """A key's default scopes: read only (a typed factory, so mypy checks the literal)."""
    return ["read"]


class ApiKey(BaseModel):
    """An API key, stored as the hex SHA-256 of the secret (never the secret itself)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=64)
    sha256: str
    scopes: list[Scope] = Field(default_factory=_read_only)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("must be the 64-character lowercase hex SHA-256 of the key")
        return v


class ApiConfig(BaseModel):
    """REST facade settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    #: API keys (hashed); with neither keys nor a JWKS file, only loopback binding is allowed and
    #: every caller gets every scope.
    api_keys: list[ApiKey] = Field(default_factory=list)
    #: OAuth2 bearer JWTs are checked against this JWKS file (RS256/ES256); scopes from the "scope" claim.
    jwks_file: Path | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    #: Admin endpoints also require the caller's address in these networks (empty = any).
    admin_hosts: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_multipart_parts: int = Field(64, ge=1, le=10000)
    max_instances: int = Field(32, ge=1, le=1024)
    max_pixels: int = Field(64 * 1024 * 1024, ge=1024)
    #: Slow clients (see dicom_node.api.bodyguard): seconds without a body byte -> 408; after
    #: body_rate_grace seconds a body under body_min_rate bytes/s on average -> 408 (0 = no minimum);
    #: requests with a body being received at once (more -> 503 with Retry-After); seconds allowed
    #: for a request's line and headers (slowloris), and the largest header block.
    body_idle_timeout: float = Field(15.0, gt=0, le=3600)
    body_min_rate: int = Field(1024, ge=0)
    body_rate_grace: float = Field(10.0, ge=0, le=3600)
    max_concurrent_uploads: int = Field(32, ge=1, le=10000)
    header_timeout: float = Field(10.0, gt=0, le=600)
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024)
    #: Outbound (webhooks, dicomweb_uri) hosts allowed even when private or loopback.
    outbound_allowlist: list[str] = Field(default_factory=list)
    #: Redirect hops those outbound requests follow, each checked by the outbound policy and pinned;
    #: 0 (the default): a 3xx is a permanent failure of the URL ("redirect to <host> not followed").
    outbound_max_redirects: int = Field(0, ge=0, le=10)
    #: With api_keys or jwks_file configured, GET /metrics needs metrics_scope unless metrics_public
    #: (Prometheus sends the key as "Authorization: Bearer ..."). Without any auth it is open, like
    #: every endpoint: the node then listens on loopback only.
    metrics_public: bool = False
    metrics_scope: Scope = "metrics"
    #: HMAC-SHA256 key for webhook signatures (file holding the secret).
    webhook_secret_file: Path | None = None
    #: Browser origins (``https://viewer.example.org``) allowed to call the API cross-origin, e.g. an
    #: OHIF viewer served elsewhere; empty = no CORS headers at all (browsers then refuse cross-origin calls).
    cors_allowed_origins: list[str] = Field(default_factory=list)
    #: The URL clients reach the API at (``https://node.example.org``, no trailing slash), for the URLs
    #: DICOMweb answers carry (STOW-RS Retrieve URL, BulkDataURI); unset: taken from each request's Host.
    public_url: str | None = None
    #: Vertex AI predict (``POST /v1/projects/{p}/locations/{l}/endpoints/{endpoint}:predict``, any project and
    #: location): endpoint ID -> model name, so callers migrating from Vertex keep their endpoint IDs. An
    #: endpoint ID not listed here names the model of the same name.
    vertex_endpoints: dict[str, str] = Field(default_factory=dict)

    @field_validator("vertex_endpoints")
    @classmethod
    def _endpoints(cls, v: dict[str, str]) -> dict[str, str]:
        for endpoint, model in v.items():
            if not re.fullmatch(VERTEX_ID, endpoint):
                raise ValueError(f"endpoint ID {endpoint[:80]!r} must match {VERTEX_ID}")
            if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", model):
                raise ValueError(f"endpoint {endpoint!r}: {model[:80]!r} is not a model name")
        return v

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[^?#\s]*)?", v):
            raise ValueError(f"{v!r} is not an http(s) URL without query or fragment")
        return v.rstrip("/") if v else v

    @field_validator("cors_allowed_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            if origin != "*" and not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+", origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path) or '*'")
        return v

    @field_validator("admin_hosts")
    @classmethod
    def _nets(cls, v: list[str]) -> list[str]:
        for net in v:
            ipaddress.ip_network(net, strict=False)
        return v

    @property
    def auth_enabled(self) -> bool:
        """True when callers must authenticate."""
        return bool(self.api_keys) or self.jwks_file is not None

    @model_validator(mode="after")
    def _open_needs_auth(self) -> ApiConfig:
        if self.enabled and not self.auth_enabled and not is_loopback(self.host):
            raise ValueError(f"binding {self.host!r} (not loopback) without api_keys or jwks_file is refused")
        return self

