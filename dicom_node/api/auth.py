"""Authentication and scopes: API keys (stored hashed) or OAuth2 bearer JWTs checked against a JWKS file.

Scopes are ``read``, ``submit``, ``admin`` and ``metrics`` (``/metrics``, see :func:`metrics_access`). Without any configured key or
JWKS the API may only bind loopback (enforced by :class:`ApiConfig`) and every
caller holds every scope.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fastapi import Request

from dicom_node.api.deps import app_config
from dicom_node.api.errors import ApiError
from dicom_node.config.api import ApiConfig

ALL_SCOPES = frozenset({"read", "submit", "admin", "metrics"})


@dataclass(frozen=True)
class Principal:
    """Who is calling and what they may do."""

    name: str
    scopes: frozenset[str]


def _unauthorized(why: str) -> ApiError:
    return ApiError(401, "unauthorized", why, headers={"WWW-Authenticate": 'Bearer realm="dicom-node"'})


@lru_cache(maxsize=4)
def _jwks(path: Path) -> object:
    import jwt

    return jwt.PyJWKSet.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _from_jwt(config: ApiConfig, token: str) -> Principal:
    import jwt

    if config.jwks_file is None:
        raise _unauthorized("bearer tokens are not accepted here; use an API key")
    try:
        header = jwt.get_unverified_header(token)
        keys = _jwks(config.jwks_file)
        key = next((k for k in keys.keys if k.key_id == header.get("kid")), None) or keys.keys[0]  # type: ignore[attr-defined]
        claims = jwt.decode(token, key.key, algorithms=["RS256", "ES256", "PS256"], audience=config.jwt_audience,
                            issuer=config.jwt_issuer, options={"require": ["exp"], "verify_aud": config.jwt_audience is not None})
    except (jwt.PyJWTError, OSError, ValueError, IndexError) as exc:
        raise _unauthorized(f"invalid bearer token: {type(exc).__name__}") from exc
    raw = claims.get("scope", claims.get("scp", ""))
    scopes = set(raw.split() if isinstance(raw, str) else raw)
    return Principal(str(claims.get("sub", "jwt")), frozenset(scopes & ALL_SCOPES))


def _from_key(config: ApiConfig, secret: str) -> Principal:
    digest = hashlib.sha256(secret.encode("utf-8")).hexdigest()
    for key in config.api_keys:
        if hmac.compare_digest(digest, key.sha256):
            return Principal(key.name, frozenset(key.scopes))
    raise _unauthorized("unknown API key")


def authenticate(config: ApiConfig, request: Request) -> Principal:
    """Return the caller's principal, or raise 401."""
    if not config.auth_enabled:
        return Principal("anonymous", ALL_SCOPES)
    key = request.headers.get("x-api-key")
    if key:
        return _from_key(config, key)
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("credentials required: an X-API-Key header or an Authorization: Bearer token")
    if token.count(".") == 2:
        return _from_jwt(config, token.strip())
    return _from_key(config, token.strip())


def require(scope: str) -> Callable[[Request], Principal]:
    """FastAPI dependency: the caller must hold ``scope`` (admin also needs an allowed source host)."""

    def dependency(request: Request) -> Principal:
        config: ApiConfig = app_config(request).api
        principal = authenticate(config, request)
        if scope not in principal.scopes:
            raise ApiError(403, "forbidden", f"this operation needs the {scope!r} scope")
        if scope == "admin" and config.admin_hosts:
            host = request.client.host if request.client else ""
            try:
                allowed = any(ipaddress.ip_address(host) in ipaddress.ip_network(n, strict=False) for n in config.admin_hosts)
            except ValueError:
                allowed = False
            if not allowed:
                raise ApiError(403, "forbidden", "admin operations are not allowed from this address")
        return principal

    return dependency


def metrics_access(request: Request) -> Principal | None:
    """FastAPI dependency of ``/metrics``: ``api.metrics_scope`` is needed unless ``api.metrics_public``.

    Metrics name models, peers' AE titles and volumes: operational data that callers
    with keys for other scopes need not see. Without any authentication configured
    the caller holds every scope, as everywhere else.
    """
    config: ApiConfig = app_config(request).api
    if config.metrics_public:
        return None
    return require(config.metrics_scope)(request)
