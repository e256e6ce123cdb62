"""The spool's shared durable copy in an object store (``storage.spool_url``), for several nodes.

:class:`ObjectSpool` implements :class:`dicom_node.spool.SpoolMirror` on
:class:`dicom_node.objects.ObjectStores` (obstore): S3-compatible stores first, and
the same code for GCS and Azure Blob, with the ``[objects]`` credentials, endpoint
and bucket allowlist. A file at ``<storage.root>/<relpath>`` is the object
``<spool_url>/<relpath>``; every ``relpath`` is made by the node from a SHA-256 of a
validated UID (:meth:`dicom_node.spool.Spool.relpath_for`), never from a peer's value.

Durability: a single PUT (or a completed multipart upload, for large files) is
durable when the store answers it (S3 ``PutObject``, GCS and Azure alike), so
:meth:`put` returning is what lets the node commit the index row and acknowledge.
Object-store errors become :class:`~dicom_node.errors.StorageError` here, the one
error the spool's callers map (0xA700 for an ingest, a failed job with the reason).
"""

from __future__ import annotations

import logging
from pathlib import Path

from dicom_node.errors import StorageError
from dicom_node.objects import ObjectNotFound, ObjectStoreError, ObjectStores, ObjectUrl

__all__ = ["ObjectSpool"]

log = logging.getLogger(__name__)


class ObjectSpool:
    """Spool files and results as objects under one prefix of one bucket.

    Parameters
    ----------
    stores : ObjectStores
        The node's object storage (its ``[objects]`` credentials and allowlist).
    url : str
        ``storage.spool_url``: ``s3://bucket/prefix`` (or ``gs://``, ``az://``).

    Raises
    ------
    StorageError
        The URL is malformed or its bucket is not allowlisted (checked without network I/O).
    """

    def __init__(self, stores: ObjectStores, url: str) -> None:
        try:
            self.base = ObjectUrl.parse(url)
            stores.check(self.base)
        except ObjectStoreError as exc:
            raise StorageError(f"storage.spool_url: {exc}") from exc
        self.stores = stores

    def _url(self, relpath: str) -> ObjectUrl:
        try:
            return self.base.child(relpath)
        except ObjectStoreError as exc:  # relpaths are made by the node; a refusal means a damaged row
            raise StorageError(f"spool object name refused: {exc}") from exc

    def _where(self) -> str:
        # Bucket and store only: keys are hashes of UIDs, which an operator never needs in a log.
        return f"{self.base.store} bucket {self.base.bucket!r}"

    def put(self, relpath: str, source: Path) -> None:
        """Write ``source`` as the object of ``relpath`` (streamed, in parts when large).

        A file larger than the read cap (``objects.max_object_bytes``) is refused
        before anything is sent: another node could never fetch it back.

        Raises
        ------
        StorageError
            Naming the store and bucket and the reason (credential refused, no such bucket, ...).
        """
        url = self._url(relpath)
        try:
            size = source.stat().st_size
        except OSError as exc:
            raise StorageError(f"cannot read the file to store: {exc.strerror}") from exc
        cap = self.stores.cap(None)
        if size > cap:
            raise StorageError(f"{size} bytes is over objects.max_object_bytes={cap}, the largest object "
                               "another node could read back from storage.spool_url")
        try:
            self.stores.put(url, source, content_type="application/dicom")
        except ObjectStoreError as exc:
            raise StorageError(f"cannot write the spool object to {self._where()}: {exc}") from exc

    def fetch(self, relpath: str, dest: Path) -> bool:
        """Download the object of ``relpath`` to ``dest`` (beside it, then renamed); False when it does not exist.

        Raises
        ------
        StorageError
            The store could not be read, or the object is over the read cap.
        """
        url = self._url(relpath)
        try:
            size = self.stores.download(url, dest)
        except ObjectNotFound:
            return False
        except ObjectStoreError as exc:
            raise StorageError(f"cannot read a spool object from {self._where()}: {exc}") from exc
        log.debug("spool object fetched into the cache store=%s bytes=%d", self.base.store, size)
        return True
