"""Errors of object storage (``gs://``, ``s3://``, ``az://``), drawn in :mod:`dicom_node.errors`' tree.

Messages name the store, the bucket and, where useful, the key; never a
credential, a signed URL or a response body (a SAS token travels in the query
string, so the library's own messages are never passed on).
"""

from __future__ import annotations

from dicom_node.errors import DicomNodeError

__all__ = ["ObjectNotFound", "ObjectRefused", "ObjectStoreError", "ObjectTooLarge"]


class ObjectStoreError(DicomNodeError):
    """An object store could not complete a request; ``retryable`` says whether a later try may help.

    Transient failures (connection refused or reset, timeouts, HTTP 5xx, 429)
    are retryable; the caller's retry policy (the work queue and
    :class:`dicom_node.net.retry.RetryPolicy`) decides when, since the object
    store client itself is configured not to retry.
    """

    retryable: bool = False

    def __init__(self, message: str, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class ObjectRefused(ObjectStoreError):
    """Refused before or by the store: scheme or bucket not allowlisted, store not configured, access denied.

    Raised before any network I/O when the node's configuration does not allow
    the URL; raised after the request when the store answers 401/403 (a wrong
    or insufficient credential). Never retryable.
    """


class ObjectNotFound(ObjectStoreError):
    """The object (or its bucket/container) does not exist."""


class ObjectTooLarge(ObjectStoreError):
    """The object is over the size cap; the message names the cap. Nothing over the cap is kept."""

    def __init__(self, message: str, cap: int) -> None:
        super().__init__(message, retryable=False)
        self.cap = cap
