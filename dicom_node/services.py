"""Typed services the node builds and hands to its consumers.

:class:`~dicom_node.node.Node` is the composition root: it builds each service
once and gives every consumer only the services it uses, by type. Consumers in
the domain layer (``scp``, ``jobs``, ``sources``) take the parts they need
(``Index``, ``IndexWriter``, ``Spool``, :class:`~dicom_node.registry.ModelRegistry`);
the API and the commands take these bundles.

=====================  =====================================================  ==========================================
Service                What it holds                                          Who receives it
=====================  =====================================================  ==========================================
:class:`Storage`       spool, index, the single index writer, the ingestor    API routers (``api.deps.StorageDep``),
                                                                              metrics, pull sources (as ``NodeStorage``)
``ModelRegistry``      the cached model store and one predictor per model     the job pipeline, ``/readyz``, the model,
                                                                              predict and invocation routes, metrics
``Outbound``           the one HTTP client stack and the SSRF policy for      predict (``dicomweb_uri``), invocation
                       caller-supplied URLs (:mod:`dicom_node.net.http`)      webhooks (``api.deps.OutboundDep``)
``ObjectStores``       object storage clients (GCS, Azure Blob, S3), bucket   bucket inputs and object outputs
                       allowlists and read caps (:mod:`dicom_node.objects`)   (``api.deps.ObjectStoresDep``)
=====================  =====================================================  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass

from dicom_node.index import Index, IndexWriter
from dicom_node.ingest import Ingestor
from dicom_node.net.http import Outbound
from dicom_node.objects import ObjectStores
from dicom_node.registry import ModelRegistry
from dicom_node.spool import Spool

__all__ = ["ModelRegistry", "ObjectStores", "Outbound", "Storage"]


@dataclass(frozen=True)
class Storage:
    """Where instances and their records live: one spool, one index, its one writer, one ingestor.

    Attributes
    ----------
    spool : Spool
        The instance files.
    index : Index
        Read connections to the index.
    writer : IndexWriter
        The single writer thread every index change goes through.
    ingestor : Ingestor
        Stores an arrival (SCP, STOW-RS, pull sources) into spool and index.
    """

    spool: Spool
    index: Index
    writer: IndexWriter
    ingestor: Ingestor

    def readiness(self) -> dict[str, str]:
        """Whether new data can be stored now: ``disk`` and ``index_write``, each ``"ok"`` or the reason.

        ``disk`` compares free space under ``storage.root`` with
        ``storage.min_free_bytes`` (the same reserve the SCP and STOW-RS refuse
        below); ``index_write`` is the writer's rate-limited write probe, which
        also catches a full disk with no reserve configured (SQLITE_FULL).
        """
        return {"disk": self.spool.reserve_problem() or "ok", "index_write": self.writer.probe() or "ok"}
