"""Object URLs (``gs://bucket/key``, ``s3://bucket/key``, ``az://container/key``) and what a listing says.

A URL is parsed strictly, before any store is touched: a known scheme, a
bucket name valid on every store (:data:`dicom_node.config.objects.BUCKET_RE`),
and a key of at most 1024 UTF-8 bytes (the S3 and GCS limit) without control
characters, empty segments or ``.``/``..`` segments. Keys are object names, never
local paths; whoever writes an object to disk chooses the file name itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from dicom_node.config.objects import BUCKET_RE
from dicom_node.objects.errors import ObjectRefused

__all__ = ["SCHEMES", "ObjectInfo", "ObjectUrl"]

#: URL scheme -> the store that serves it (the ``[objects.<store>]`` section).
SCHEMES: dict[str, str] = {"gs": "gcs", "s3": "s3", "az": "azure"}
#: S3 and GCS both cap object names at 1024 bytes of UTF-8.
MAX_KEY_BYTES = 1024


def _check_key(key: str, url: str) -> str:
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ObjectRefused(f"object URL {url[:80]!r}...: key is over {MAX_KEY_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise ObjectRefused("object URL: the key has control characters")
    body = key[:-1] if key.endswith("/") else key  # a trailing '/' names a prefix
    if body and any(seg in ("", ".", "..") for seg in body.split("/")):
        raise ObjectRefused(f"object URL {url!r}: empty, '.' or '..' segments in the key are refused")
    return key


@dataclass(frozen=True)
class ObjectUrl:
    """One object (or a prefix, for listing) in a bucket of a store.

    Attributes
    ----------
    scheme : str
        ``gs``, ``s3`` or ``az``.
    bucket : str
        The bucket (Azure: container).
    key : str
        The object name; empty or ending in ``/`` for a prefix.
    """

    scheme: str
    bucket: str
    key: str

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ObjectRefused(f"object URL scheme {self.scheme!r} is not one of {', '.join(sorted(SCHEMES))}")
        if not BUCKET_RE.fullmatch(self.bucket):
            raise ObjectRefused(f"object URL bucket {self.bucket[:70]!r} is not a valid bucket/container name")
        _check_key(self.key, f"{self.scheme}://{self.bucket}/{self.key}")

    @classmethod
    def parse(cls, url: str) -> ObjectUrl:
        """Parse ``scheme://bucket/key``.

        Raises
        ------
        ObjectRefused
            Unknown scheme, malformed bucket or key, user info, port, query or fragment.
        """
        if not isinstance(url, str) or len(url) > MAX_KEY_BYTES + 80:
            raise ObjectRefused("object URL is not a string of a sensible length")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
            # Checked before urlsplit, which silently drops tabs and newlines (a key would change).
            raise ObjectRefused("object URL: control characters are refused")
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise ObjectRefused(f"object URL {url[:80]!r} is malformed") from exc
        if parts.scheme not in SCHEMES:
            raise ObjectRefused(f"object URL scheme {parts.scheme!r} is not one of {', '.join(sorted(SCHEMES))} "
                                "(gs://bucket/key, s3://bucket/key, az://container/key)")
        if parts.query or parts.fragment or "@" in parts.netloc or ":" in parts.netloc:
            # A SAS or signed query belongs in the configuration, never in a URL that is logged.
            raise ObjectRefused(f"object URL {parts.scheme}://{parts.hostname or ''}/...: user info, port, query "
                                "or fragment are refused")
        return cls(parts.scheme, parts.netloc, parts.path[1:] if parts.path.startswith("/") else parts.path)

    @property
    def store(self) -> str:
        """The store serving this URL: ``gcs``, ``s3`` or ``azure``."""
        return SCHEMES[self.scheme]

    def child(self, name: str) -> ObjectUrl:
        """The object ``name`` under this URL taken as a prefix (``gs://b/out`` + ``x.dcm`` = ``gs://b/out/x.dcm``).

        Raises
        ------
        ObjectRefused
            ``name`` is empty or makes a malformed key.
        """
        name = name.strip("/")
        if not name:
            raise ObjectRefused("object name is empty")
        base = self.key.rstrip("/")
        return ObjectUrl(self.scheme, self.bucket, f"{base}/{name}" if base else name)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class ObjectInfo:
    """One object a listing found.

    Attributes
    ----------
    url : ObjectUrl
        Where it is.
    size : int
        Bytes.
    modified : datetime
        Last modified (timezone-aware, UTC).
    etag : str or None
        The store's entity tag, when it gives one.
    """

    url: ObjectUrl
    size: int
    modified: datetime
    etag: str | None
