"""The running node: the composition root.

:class:`Node` builds the typed services (:class:`~dicom_node.services.Storage`,
:class:`~dicom_node.registry.ModelRegistry`) and the components that use them
(SCP, assembler, work queue, pollers, retrieval sessions), handing each only what
it needs. Front ends above it (the REST API, in :mod:`dicom_node.api.server`) are
passed in as a :class:`Frontend` factory, so this module imports nothing from
``api`` or ``commands``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from dicom_node.archive.backfill import backfill
from dicom_node.assembler import Assembler
from dicom_node.config import NodeConfig
from dicom_node.index import Index, IndexWriter
from dicom_node.ingest import Ingestor
from dicom_node.jobs.pipeline import Pipeline
from dicom_node.jobs.stages import FileResultWriter, JobDelivery
from dicom_node.jobs.worker import DELIVERY, JOB, DeliveryHandler, JobRouter, SeriesJobHandler
from dicom_node.net.http import Outbound
from dicom_node.objects import ObjectStores
from dicom_node.registry import ModelRegistry
from dicom_node.scp.context import ResultArchive, ScpContext
from dicom_node.scp.negotiation import supported_contexts
from dicom_node.scp.server import StorageServer
from dicom_node.services import Storage
from dicom_node.sources.factory import source_rules
from dicom_node.sources.poller import PollerService
from dicom_node.sources.sessions import SessionService
from dicom_node.spool import Spool
from dicom_node.spool_objects import ObjectSpool
from dicom_node.workqueue import WorkQueue

log = logging.getLogger(__name__)

INDEX_NAME = "index.sqlite3"
#: Result deliveries running at once (each holds at most one association or HTTP request per destination).
DELIVERY_WORKERS = 2
#: Seconds a spool or temporary file must be old before a starting node on a shared spool removes it
#: as a crash's leftover: a receive in flight on another node is minutes at most.
SHARED_SPOOL_GRACE = 3600.0


def open_index(config: NodeConfig) -> Index:
    """Open (creating if needed) the index under ``storage.root``, or on ``storage.database`` (PostgreSQL)."""
    return Index(config.storage.database or config.storage.root / INDEX_NAME)


class Frontend(Protocol):
    """A front end started after the node's core and stopped before it (the REST API)."""

    @property
    def port(self) -> int: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


#: Builds the front end of a node whose core is about to start (``dicom_node.api.server.ApiFrontend``).
FrontendFactory = Callable[["Node"], Frontend]


class Node:
    """Everything ``dicom-node serve`` runs, startable and stoppable in-process.

    Parameters
    ----------
    config : NodeConfig
        The validated configuration.
    frontend : callable, optional
        Builds the REST front end when ``[api] enabled``; ``serve`` passes
        :class:`dicom_node.api.server.ApiFrontend`. Without it the node runs no API.
    """

    def __init__(self, config: NodeConfig, frontend: FrontendFactory | None = None) -> None:
        self.config = config
        st = config.storage
        #: Object storage (gs://, s3://, az://): clients per allowlisted bucket, built on first use (no I/O here).
        self.objects = ObjectStores(config.objects)
        # storage.spool_url: the spool's shared durable copy; without it the spool is local, as always.
        mirror = ObjectSpool(self.objects, st.spool_url) if st.spool_url else None
        spool = Spool(st.root, fsync=st.fsync, min_free_bytes=st.min_free_bytes, mirror=mirror)
        index = open_index(config)
        writer = IndexWriter(index.path, durable=st.fsync)
        ingestor = Ingestor(spool, index, writer, st.duplicate_policy == "replace", config.scp.max_inflated_bytes)
        self.storage = Storage(spool, index, writer, ingestor)
        self.models = ModelRegistry(config.inference)
        #: The one outbound HTTP stack and SSRF policy for caller-supplied URLs (webhooks, dicomweb_uri).
        self.outbound = Outbound(config.api.outbound_allowlist, config.api.outbound_max_redirects)
        self.scp = StorageServer(
            ScpContext(config.scp, self.spool, self.writer, self.ingestor, supported_contexts(config.scp),
                       archive=ResultArchive.from_config(config, self.index))
        )
        self.assembler = Assembler(config.assembly, self.writer)
        results = FileResultWriter(config, spool)
        self.pipeline = Pipeline(config, self.index, self.writer, self.spool, results, self.models)
        #: The one work queue: every kind of background work, one pool of threads, per-kind limits.
        self.queue = WorkQueue(self.writer, config.jobs.poll_interval, lease=config.jobs.lease)
        self.queue.register(JOB, SeriesJobHandler(self.writer, self.pipeline, self.queue), config.jobs.workers,
                            config.jobs.max_attempts)
        # A delivery's retries are bounded per object by [delivery.retry] (the ledger); its work row may
        # be claimed that often, plus jobs.max_attempts runs interrupted by a crash.
        self.queue.register(DELIVERY, DeliveryHandler(self.index, self.writer,
                                                      JobDelivery(config, self.index, self.writer, results,
                                                                  self.objects)),
                            DELIVERY_WORKERS, config.delivery.retry.attempts + config.jobs.max_attempts)
        self._frontend = frontend
        # Set in start() when configured.
        self.api: Frontend | None = None
        self.pollers: PollerService | None = None
        #: Retrieval sessions: built here (no thread until started) so the API can start it on first use.
        self.sessions = SessionService(self, self.queue)
        #: Routes completed series into jobs (a periodic scan of completion events; the jobs run on the queue).
        self.router = JobRouter(config.routing, self.index, self.writer, self.spool, self.pipeline, self.queue,
                                config.jobs.poll_interval, source_rules(config.sources))

    # The storage members, for consumers typed by ``sources.sink.NodeStorage`` (pollers, sessions, sinks).
    @property
    def spool(self) -> Spool:
        """The instance files."""
        return self.storage.spool

    @property
    def index(self) -> Index:
        """Read connections to the index."""
        return self.storage.index

    @property
    def writer(self) -> IndexWriter:
        """The single index writer."""
        return self.storage.writer

    @property
    def ingestor(self) -> Ingestor:
        """Stores arrivals into spool and index."""
        return self.storage.ingestor

    def start(self) -> None:
        """Recover from any crash, then start the writer, the SCP and the assembler."""
        # Before anything listens: files a crash left between the spool rename and the index commit.
        # On PostgreSQL the spool may be shared with other running nodes: their files in flight are spared.
        shared = self.config.storage.database is not None
        self.spool.scan(self.index.instance_paths(), min_age=SHARED_SPOOL_GRACE if shared else 0.0)
        self.writer.start()
        # Registers this node (its id and heartbeat) first; on PostgreSQL only dead nodes' associations are aborted.
        dead = self.assembler.recover()
        if dead:
            log.warning("associations left open by a previous run counted as aborted count=%d", dead)
        # An index from before the search tables (migration 3): index what it holds before anyone searches.
        backfill(self.index, self.writer, self.spool, self.config.scp.max_inflated_bytes)
        self.scp.start()
        self.assembler.start()
        if self.config.jobs.workers:  # workers = 0: series are stored and indexed, never routed
            self.router.start()
        self.queue.start()  # work a previous run left running is claimed again
        if any(p.enabled for p in self.config.sources.pollers):  # DICOMweb/DIMSE pollers (dicom_node.sources.poller)
            self.pollers = PollerService(self, objects=self.objects)
            self.pollers.start()
        if self.config.api.enabled:
            # Retrieval sessions: resume sweeping what a previous run kept (they are reached only through the API).
            self.sessions.start()
            if self._frontend is not None:
                self.api = self._frontend(self)
                self.api.start()

    def stop(self) -> None:
        """Stop accepting, stop assembly, flush the index."""
        if self.api is not None:  # the API and the invocation service it owns
            self.api.stop()
        self.sessions.stop()  # retrieval sessions (a no-op when never started)
        if self.pollers is not None:  # before the SCP and the writer: a running retrieval is aborted cleanly
            self.pollers.stop()
        self.scp.stop()
        self.assembler.stop()
        self.router.stop()
        self.queue.stop()
        self.pipeline.close()
        self.models.close()
        self.writer.stop()
        self.index.close()  # the reader pool on PostgreSQL; nothing on SQLite
