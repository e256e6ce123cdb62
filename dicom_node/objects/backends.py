"""Building obstore clients from ``[objects]`` and mapping their errors at the boundary.

obstore (Python bindings of the Rust ``object_store`` crate) is the one object
storage library: one package for GCS, Azure Blob and S3, streaming reads, custom
endpoints. Its stores are built here only, with settings chosen on purpose:

- explicit credentials from the configuration; without one a store is refused
  unless ``workload_identity`` (the library asks the metadata service or the
  environment) or ``anonymous`` (``skip_signature``) is set, because the
  library's own fallback is the link-local metadata address;
- ``max_retries = 0``: retrying is the caller's policy (the work queue and
  :mod:`dicom_node.net.retry`), so one request here is one attempt;
- ``timeout`` (per read), ``connect_timeout`` and ``transfer_timeout`` (the whole
  request) from ``[objects]``; ``allow_http`` only when the configuration allows
  it (:mod:`dicom_node.config.objects`).

Checked with obstore 0.12.1: ``GCSStore`` also reads ``GOOGLE_*`` environment
variables (``GOOGLE_SERVICE_ACCOUNT``, ...), while ``S3Store`` and ``AzureStore``
built this way do not; settings passed here win over the environment.

Errors are mapped by type and by the HTTP status the library reports, and the
library's message is never passed on: it can hold a SAS token (Azure signs with
query parameters) or a response body. The cause stays chained for debugging.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING

from obstore.exceptions import (
    BaseError,
    GenericError,
    InvalidPathError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnknownConfigurationKeyError,
)
from obstore.store import AzureStore, GCSStore, S3Store

from dicom_node.config.objects import ObjectsConfig
from dicom_node.net.policy import OutboundPolicy, OutboundRefused
from dicom_node.objects.errors import ObjectNotFound, ObjectRefused, ObjectStoreError
from dicom_node.objects.url import ObjectUrl

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

__all__ = ["Store", "build_store", "map_error"]

Store = GCSStore | S3Store | AzureStore

#: "... Server returned non-2xx status code: 403 Forbidden ..." in object_store's messages.
_STATUS_RE = re.compile(r"status code: (\d{3})")
#: Display names of the stores in messages.
STORE_NAMES = {"gcs": "Google Cloud Storage", "s3": "S3", "azure": "Azure Blob Storage"}


def _client_options(config: ObjectsConfig, allow_http: bool) -> ClientConfig:
    return {
        # reqwest's "timeout" covers the whole request, body included, so it is the transfer bound;
        # a stalled store is caught by the per-read timeout instead.
        "timeout": timedelta(seconds=config.transfer_timeout),
        "read_timeout": timedelta(seconds=config.timeout),
        "connect_timeout": timedelta(seconds=config.connect_timeout),
        "allow_http": allow_http,
    }


def _retry() -> RetryConfig:
    # One attempt per call: the caller's retry policy owns retries (module docstring).
    return {"max_retries": 0, "retry_timeout": timedelta(seconds=0)}


def _not_configured(url: ObjectUrl, what: str) -> ObjectRefused:
    return ObjectRefused(f"{STORE_NAMES[url.store]} is not configured for {url.bucket}: {what}")


def _check_endpoint(endpoint: str | None, allow_link_local: bool, url: ObjectUrl) -> None:
    """Resolve an operator endpoint's host once and check every address with the configured-peer policy.

    The configuration was checked at load without DNS; this catches a name that
    resolves to a metadata or link-local address. obstore connects by itself, so
    the address cannot be pinned as :mod:`dicom_node.net.http` does; the endpoint
    is the operator's own, trusted as any configured peer.
    """
    if endpoint is None:
        return
    policy = OutboundPolicy.configured(allow_link_local)
    try:
        parts = policy.check_url(endpoint)
        policy.resolve(parts.hostname or "", parts.port or 0)
    except OutboundRefused as exc:
        raise ObjectRefused(f"{STORE_NAMES[url.store]} endpoint for {url.bucket} refused: {exc}",
                            retryable=exc.retryable) from exc


def build_store(config: ObjectsConfig, url: ObjectUrl, bearer_token: str | None = None) -> Store:
    """An obstore client for ``url``'s bucket (no network I/O happens here).

    Parameters
    ----------
    config : ObjectsConfig
        The ``[objects]`` section.
    url : ObjectUrl
        Names the store and the bucket; the caller has checked the allowlist.
    bearer_token : str, optional
        A caller's OAuth token for this one call (GCS only); it replaces the configured credential.

    Raises
    ------
    ObjectRefused
        No usable credential, an endpoint the outbound policy refuses once resolved,
        or the library refuses the configuration.
    """
    section = {"gcs": config.gcs, "s3": config.s3, "azure": config.azure}[url.store]
    endpoint = config.azure.resolved()[1] if url.store == "azure" else section.endpoint
    _check_endpoint(endpoint, section.allow_link_local, url)
    try:
        if url.store == "gcs":
            return _gcs(config, url, bearer_token)
        if bearer_token is not None:
            raise ObjectRefused(f"a bearer token is accepted for gs:// URLs only, not {url.scheme}://")
        if url.store == "s3":
            return _s3(config, url)
        return _azure(config, url)
    except (UnknownConfigurationKeyError, GenericError, ValueError) as exc:
        raise _not_configured(url, f"the client refused the configuration ({type(exc).__name__})") from exc


def _gcs(config: ObjectsConfig, url: ObjectUrl, bearer_token: str | None) -> GCSStore:
    gcs = config.gcs
    kwargs: dict[str, str | bool] = {}
    if gcs.endpoint is not None:
        kwargs["base_url"] = gcs.endpoint.rstrip("/")
    if bearer_token is not None:
        kwargs["bearer_token"] = bearer_token
    elif gcs.service_account_file is not None:
        kwargs["service_account"] = str(gcs.service_account_file)
    elif gcs.service_account_key is not None:
        kwargs["service_account_key"] = gcs.service_account_key.get_secret_value()
    elif not gcs.workload_identity:
        raise _not_configured(url, "set [objects.gcs] service_account_file, service_account_key or "
                                   "workload_identity, or pass the caller's bearer token")
    return GCSStore(url.bucket, config=kwargs,  # type: ignore[arg-type]  # keys checked above; TypedDict
                    client_options=_client_options(config, gcs.allow_http), retry_config=_retry())


def _s3(config: ObjectsConfig, url: ObjectUrl) -> S3Store:
    s3 = config.s3
    kwargs: dict[str, str | bool] = {"region": s3.region, "virtual_hosted_style_request": s3.virtual_hosted_style}
    if s3.endpoint is not None:
        kwargs["endpoint"] = s3.endpoint.rstrip("/")
    if s3.access_key_id is not None and s3.secret_access_key is not None:
        kwargs["access_key_id"] = s3.access_key_id
        kwargs["secret_access_key"] = s3.secret_access_key.get_secret_value()
        if s3.session_token is not None:
            kwargs["session_token"] = s3.session_token.get_secret_value()
    elif s3.anonymous:
        kwargs["skip_signature"] = True
    elif not s3.workload_identity:
        raise _not_configured(url, "set [objects.s3] access_key_id and secret_access_key, workload_identity or "
                                   "anonymous")
    return S3Store(url.bucket, config=kwargs,  # type: ignore[arg-type]  # keys checked above; TypedDict
                   client_options=_client_options(config, s3.allow_http), retry_config=_retry())


def _azure(config: ObjectsConfig, url: ObjectUrl) -> AzureStore:
    az = config.azure
    account, endpoint, key, sas = az.resolved()
    if account is None and endpoint is None:
        raise _not_configured(url, "set [objects.azure] account (or a connection_string naming it)")
    kwargs: dict[str, str | bool] = {}
    if account is not None:
        kwargs["account_name"] = account
    if endpoint is not None:
        kwargs["endpoint"] = endpoint.rstrip("/")
    if key is not None:
        kwargs["account_key"] = key
    elif sas is not None:
        kwargs["sas_key"] = sas.lstrip("?")
    elif az.anonymous:
        kwargs["skip_signature"] = True
    elif not az.workload_identity:
        raise _not_configured(url, "set [objects.azure] connection_string, sas_token, account_key, "
                                   "workload_identity or anonymous")
    return AzureStore(url.bucket, config=kwargs,  # type: ignore[arg-type]  # keys checked above; TypedDict
                      client_options=_client_options(config, az.allow_http), retry_config=_retry())


def _status(exc: BaseException) -> int | None:
    found = _STATUS_RE.search(str(exc))
    return int(found.group(1)) if found else None


def map_error(exc: Exception, url: ObjectUrl, action: str) -> ObjectStoreError:
    """The dicom-node error for a library error raised while ``action`` on ``url`` (raise it ``from exc``).

    The message names the store, the action and the bucket (and the key for a
    missing object), never the library's text.
    """
    store = STORE_NAMES[url.store]
    status = _status(exc)
    if "token request" in str(exc).lower():
        # The credential could not be turned into a token (metadata service, OAuth endpoint): the
        # configuration, not the bucket, is at fault.
        return ObjectRefused(f"{store} credential for {url.bucket} is unusable: no access token could be obtained "
                             f"({action}; HTTP {status or 'none'})", retryable=False)
    if isinstance(exc, (PermissionDeniedError, UnauthenticatedError)) or status in (401, 403):
        return ObjectRefused(f"access denied by {store} for {url.bucket} ({action}; HTTP {status or 403}): "
                             "check the credential and its permissions", retryable=False)
    if isinstance(exc, (FileNotFoundError, NotFoundError)) or status == 404:
        return ObjectNotFound(f"{url} not found in {store} (the object or its bucket does not exist)",
                              retryable=False)
    if isinstance(exc, InvalidPathError):
        return ObjectRefused(f"{store} refused the object name of {url}", retryable=False)
    if status is not None:
        transient = status >= 500 or status in (408, 429)
        return ObjectStoreError(f"{store} answered HTTP {status} to {action} {url}", retryable=transient)
    if isinstance(exc, (TimeoutError, ConnectionError, OSError)):
        return ObjectStoreError(f"{store} could not be reached to {action} {url} ({type(exc).__name__})",
                                retryable=True)
    if isinstance(exc, BaseError):
        # Connection refused, timeouts, TLS and token-endpoint failures arrive as GenericError without a status.
        return ObjectStoreError(f"{store} request to {action} {url} failed ({type(exc).__name__}); no response "
                                "status: the endpoint may be unreachable or the credential unusable", retryable=True)
    return ObjectStoreError(f"{store}: {action} {url} failed ({type(exc).__name__})", retryable=False)
