"""The object storage service: read, stream to a file, write, delete and list ``gs://``, ``s3://`` and ``az://`` URLs.

:class:`ObjectStores` is built once by :class:`dicom_node.node.Node` from
``[objects]`` (:mod:`dicom_node.config.objects`) and passed by type to whoever
reads inputs from or writes results to buckets. Every call:

1. checks the URL's store is configured and its bucket is in that store's
   allowlist, before any network I/O (an empty allowlist allows nothing);
2. makes one request through the store's client (:mod:`dicom_node.objects.backends`;
   clients are cached per bucket, except one made for a caller's bearer token,
   which serves that call only and is then dropped);
3. bounds what it reads by a cap: the size the store declares is checked first,
   then the bytes that actually arrive, so a store that lies cannot make the node
   hold more than the cap (``download`` streams to a file, ``get`` to memory);
4. maps library errors to :class:`~dicom_node.objects.errors.ObjectStoreError`
   and its subclasses, with messages that name the bucket, never a credential.

Logging records the store, the bucket and sizes at DEBUG; object keys may carry
identifiers chosen by callers, so they are not logged either.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import obstore

from dicom_node.config.objects import ObjectsConfig
from dicom_node.objects.backends import STORE_NAMES, Store, build_store, map_error
from dicom_node.objects.errors import ObjectRefused, ObjectStoreError, ObjectTooLarge
from dicom_node.objects.url import ObjectInfo, ObjectUrl

__all__ = ["ObjectStores"]

log = logging.getLogger(__name__)

#: Chunk the library hands back while streaming; small enough that crossing the cap costs little memory.
STREAM_CHUNK = 1024 * 1024


def _allowlist(config: ObjectsConfig, store: str) -> list[str]:
    if store == "gcs":
        return config.gcs.allowed_buckets
    if store == "s3":
        return config.s3.allowed_buckets
    return config.azure.allowed_containers


def _key_of(store: str) -> str:
    return "allowed_containers" if store == "azure" else "allowed_buckets"


class ObjectStores:
    """Object storage for the node: GCS, Azure Blob and S3 behind one allowlisted, capped interface.

    Parameters
    ----------
    config : ObjectsConfig
        The ``[objects]`` section.
    """

    def __init__(self, config: ObjectsConfig) -> None:
        self.config = config
        self._clients: dict[tuple[str, str], Store] = {}
        self._lock = threading.Lock()

    # -- policy ------------------------------------------------------------------------------------------------

    def check(self, url: ObjectUrl) -> None:
        """Refuse ``url`` unless its bucket is allowlisted for its store (no network I/O).

        Raises
        ------
        ObjectRefused
            Naming the store, the bucket and the key that would allow it.
        """
        store = url.store
        allowed = _allowlist(self.config, store)
        if url.bucket not in allowed:
            why = "no buckets are allowed" if not allowed else "it is not in the allowlist"
            raise ObjectRefused(f"{STORE_NAMES[store]} bucket {url.bucket!r} refused: {why}; add it to "
                                f"[objects.{store}] {_key_of(store)} to allow it")

    def cap(self, max_bytes: int | None) -> int:
        """The cap of one read: the caller's, never above ``objects.max_object_bytes``."""
        limit = self.config.max_object_bytes
        return limit if max_bytes is None else max(0, min(max_bytes, limit))

    def _client(self, url: ObjectUrl, bearer_token: str | None) -> Store:
        self.check(url)
        if bearer_token is not None:
            return build_store(self.config, url, bearer_token)  # this call only, never cached
        key = (url.store, url.bucket)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = build_store(self.config, url)
            return client

    # -- reads -------------------------------------------------------------------------------------------------

    def _too_large(self, url: ObjectUrl, cap: int, size: int | None) -> NoReturn:
        said = f"{size} bytes" if size is not None else "more"
        raise ObjectTooLarge(f"{url} is {said}, over the cap of {cap} bytes (objects.max_object_bytes or the "
                             "caller's max_bytes)", cap=cap)

    def _chunks(self, url: ObjectUrl, cap: int, bearer_token: str | None) -> Iterator[bytes]:
        """The object's bytes in chunks, refusing before the first chunk when the declared size is over ``cap``."""
        client = self._client(url, bearer_token)
        try:
            result = obstore.get(client, url.key)
            size = int(result.meta["size"])
        except Exception as exc:  # every library error is mapped at this boundary
            raise map_error(exc, url, "read") from exc
        if size > cap:
            self._too_large(url, cap, size)
        received = 0
        stream = result.stream(min_chunk_size=STREAM_CHUNK)
        while True:
            try:
                chunk = next(stream, None)
            except Exception as exc:
                raise map_error(exc, url, "read") from exc
            if chunk is None:
                break
            received += len(chunk)
            if received > cap:  # the store declared less than it sends
                self._too_large(url, cap, None)
            yield bytes(chunk)
        if received != size:
            raise ObjectStoreError(f"{url}: received {received} of {size} bytes", retryable=True)

    def get(self, url: ObjectUrl, *, max_bytes: int | None = None, bearer_token: str | None = None) -> bytes:
        """Read a whole object into memory (briefly up to twice its size while joining; :meth:`download` streams).

        Parameters
        ----------
        url : ObjectUrl
            The object.
        max_bytes : int, optional
            Cap for this read (never above ``objects.max_object_bytes``).
        bearer_token : str, optional
            A caller's OAuth token (GCS, e.g. Vertex ``gcs_uri`` + ``bearer_token``), used for this call only.

        Raises
        ------
        ObjectRefused, ObjectNotFound, ObjectTooLarge, ObjectStoreError
        """
        cap = self.cap(max_bytes)
        data = b"".join(self._chunks(url, cap, bearer_token))
        log.debug("object read store=%s bucket=%s bytes=%d", url.store, url.bucket, len(data))
        return data

    def download(self, url: ObjectUrl, dest: Path, *, max_bytes: int | None = None,
                 bearer_token: str | None = None) -> int:
        """Stream an object to ``dest`` (written to ``dest``'s folder, then renamed); returns its size.

        Memory stays at about one chunk whatever the object's size. On any
        failure, the cap included, nothing is left at ``dest`` or beside it.

        Raises
        ------
        ObjectRefused, ObjectNotFound, ObjectTooLarge, ObjectStoreError
        """
        cap = self.cap(max_bytes)
        part = dest.with_name(f".{dest.name}.part")
        written = 0
        try:
            with part.open("wb") as out:
                for chunk in self._chunks(url, cap, bearer_token):
                    out.write(chunk)
                    written += len(chunk)
            os.replace(part, dest)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        log.debug("object downloaded store=%s bucket=%s bytes=%d", url.store, url.bucket, written)
        return written

    # -- writes and listings -------------------------------------------------------------------------------------

    def put(self, url: ObjectUrl, data: bytes | Path, *, content_type: str | None = None) -> None:
        """Write an object (a file is streamed, in parts when large).

        Raises
        ------
        ObjectRefused, ObjectNotFound (no such bucket), ObjectStoreError
        """
        if not url.key or url.key.endswith("/"):
            raise ObjectRefused(f"{url} names a prefix, not an object")
        client = self._client(url, None)
        attributes = {"Content-Type": content_type} if content_type else None
        try:
            obstore.put(client, url.key, data, attributes=attributes)  # type: ignore[arg-type]  # TypedDict keys
        except Exception as exc:
            raise map_error(exc, url, "write") from exc
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        log.debug("object written store=%s bucket=%s bytes=%d", url.store, url.bucket, size)

    def list(self, prefix: ObjectUrl, *, max_items: int | None = None) -> list[ObjectInfo]:
        """Objects under ``prefix`` (recursively), in the store's order, at most ``max_items``.

        The prefix is a folder: ``gs://b/studies`` and ``gs://b/studies/`` both
        list ``studies/...`` (not ``studies-old/...``), and ``gs://b/`` the whole bucket.

        Raises
        ------
        ObjectRefused, ObjectNotFound (no such bucket), ObjectStoreError
        """
        limit = self.config.max_list_items if max_items is None else max(0, min(max_items, self.config.max_list_items))
        client = self._client(prefix, None)
        found: list[ObjectInfo] = []
        if limit == 0:
            return found
        skipped = 0
        # The library matches a prefix on whole path segments, so every object it yields counts
        # toward the limit and a listing never scans more of the bucket than it returns.
        folder = prefix.key.rstrip("/") or None
        try:
            for batch in obstore.list(client, prefix=folder, chunk_size=min(1000, max(limit, 1))):
                for meta in batch:
                    path = meta["path"]
                    try:
                        url = ObjectUrl(prefix.scheme, prefix.bucket, path)
                    except ObjectRefused:  # a name this node refuses to address ('..', '//'): not listed
                        skipped += 1
                        continue
                    found.append(ObjectInfo(url, int(meta["size"]), meta["last_modified"], meta.get("e_tag")))
                    if len(found) >= limit:
                        return found
        except Exception as exc:  # every library error is mapped at this boundary
            raise map_error(exc, prefix, "list") from exc
        if skipped:
            log.warning("objects with unaddressable names skipped store=%s bucket=%s count=%d",
                        prefix.store, prefix.bucket, skipped)
        return found
