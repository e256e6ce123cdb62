"""Object storage as an input and an output: Google Cloud Storage, Azure Blob Storage and S3.

One library (obstore) behind one service, :class:`ObjectStores`, built by the node
from ``[objects]`` (:mod:`dicom_node.config.objects`). URLs are ``gs://bucket/key``,
``s3://bucket/key`` and ``az://container/key`` (:class:`ObjectUrl`); buckets are
allowlisted per store and checked before any network I/O; reads are capped;
errors are :class:`ObjectStoreError` and its subclasses.

Modules: ``url`` (URLs, listings), ``errors``, ``backends`` (building clients,
mapping library errors), ``stores`` (the service).
"""

from __future__ import annotations

from dicom_node.objects.errors import ObjectNotFound, ObjectRefused, ObjectStoreError, ObjectTooLarge
from dicom_node.objects.stores import ObjectStores
from dicom_node.objects.url import SCHEMES, ObjectInfo, ObjectUrl

__all__ = [
    "SCHEMES", "ObjectInfo", "ObjectNotFound", "ObjectRefused", "ObjectStoreError", "ObjectStores", "ObjectTooLarge",
    "ObjectUrl",
]
