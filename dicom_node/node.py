"""The running node: wires spool, index, SCP, assembler and job workers together."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from dicom_node.assembler import Assembler
from dicom_node.config import NodeConfig
from dicom_node.index import Index, IndexWriter, ops
from dicom_node.index import jobs as job_ops
from dicom_node.ingest import Ingestor
from dicom_node.jobs.pipeline import Pipeline
from dicom_node.jobs.stages import FileResultWriter, JobDelivery
from dicom_node.jobs.worker import JobWorker
from dicom_node.scp.context import ResultArchive, ScpContext
from dicom_node.scp.negotiation import supported_contexts
from dicom_node.scp.server import StorageServer
from dicom_node.sources.factory import source_rules
from dicom_node.spool import Spool

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from dicom_node.api.server import ApiServer
    from dicom_node.api.webhooks import InvocationService
    from dicom_node.sources.poller import PollerService
    from dicom_node.sources.sessions import SessionService

log = logging.getLogger(__name__)

INDEX_NAME = "index.sqlite3"


def open_index(config: NodeConfig) -> Index:
    """Open (creating if needed) the index under ``storage.root``."""
    return Index(config.storage.root / INDEX_NAME)


class Node:
    """Everything ``dicom-node serve`` runs, startable and stoppable in-process.

    Parameters
    ----------
    config : NodeConfig
        The validated configuration.
    """

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        st = config.storage
        self.spool = Spool(st.root, fsync=st.fsync, min_free_bytes=st.min_free_bytes)
        self.index = open_index(config)
        self.writer = IndexWriter(self.index.path, durable=st.fsync)
        self.ingestor = Ingestor(
            self.spool, self.index, self.writer, st.duplicate_policy == "replace", config.scp.max_inflated_bytes
        )
        self.scp = StorageServer(
            ScpContext(config.scp, self.spool, self.writer, self.ingestor, supported_contexts(config.scp),
                       archive=ResultArchive.from_config(config, self.index))
        )
        self.assembler = Assembler(config.assembly, self.writer)
        results = FileResultWriter(config)
        self.pipeline = Pipeline(config, self.index, self.writer, self.spool, results,
                                 JobDelivery(config, self.index, self.writer, results))
        # Set in start() when configured (imported there: the API and pull sources are optional).
        self.api: ApiServer | None = None
        self.invocations: InvocationService | None = None
        self.pollers: PollerService | None = None
        self.sessions: SessionService | None = None
        self.metrics_registry: CollectorRegistry | None = None
        self.workers = [
            JobWorker(config.routing, self.index, self.writer, self.spool, self.pipeline, config.jobs.poll_interval,
                      source_rules(config.sources))
            for _ in range(config.jobs.workers)
        ]

    def model_status(self) -> dict[str, str | None]:
        """Each model of the store: None when a backend can run it, else why not (for /readyz)."""
        from dicom_node.commands.models import backend_options, open_store
        from inference.backends import select_backend

        store = open_store(self.config)
        status: dict[str, str | None] = {str(path.parent.name): f"invalid spec: {msg}" for path, msg in store.errors.items()}
        for name in store.names():
            selection = select_backend(store.get(name).spec, list(self.config.inference.backends), backend_options(self.config))
            status[name] = None if selection.name else "no backend: " + "; ".join(
                f"{k}: {v}" for k, v in selection.passed_over.items())
        return status

    def start(self) -> None:
        """Recover from any crash, then start the writer, the SCP and the assembler."""
        self.spool.clean_temp()
        self.writer.start()
        dead = self.writer.run(lambda c: ops.recover(c, time.time()))
        if dead:
            log.warning("associations left open by a previous run counted as aborted count=%d", dead)
        requeued = self.writer.run(lambda c: job_ops.recover(c, time.time(), self.config.jobs.max_attempts))
        if requeued:
            log.warning("jobs interrupted by a previous run queued again count=%d", requeued)
        self.scp.start()
        self.assembler.start()
        for worker in self.workers:
            worker.start()
        if any(p.enabled for p in self.config.sources.pollers):  # DICOMweb/DIMSE pollers (dicom_node.sources.poller)
            from dicom_node.sources.poller import PollerService
            self.pollers = PollerService(self)
            self.pollers.start()
        if self.config.api.enabled:
            from dicom_node.api.app import ApiContext, create_app
            from dicom_node.api.metrics import registry_for
            from dicom_node.api.server import ApiServer

            # --- REST invocations: resume queued work and pending webhooks (dicom_node.api.webhooks) ---
            from dicom_node.api.webhooks import InvocationService
            self.invocations = InvocationService(self)
            self.invocations.start()
            # --- Retrieval sessions (dicom_node.sources.sessions): resume sweeping what a previous run kept ---
            from dicom_node.sources.sessions import SessionService
            self.sessions = SessionService(self)
            self.sessions.start()
            self.metrics_registry = registry_for(self)
            self.api = ApiServer(create_app(ApiContext(self.config, self)), self.config.api.host, self.config.api.port)
            self.api.start()

    def stop(self) -> None:
        """Stop accepting, stop assembly, flush the index."""
        if self.api is not None:
            self.api.stop()
        if self.invocations is not None:  # REST invocations (dicom_node.api.webhooks)
            self.invocations.stop()
        if self.sessions is not None:  # retrieval sessions (dicom_node.sources.sessions)
            self.sessions.stop()
        if self.pollers is not None:  # before the SCP and the writer: a running retrieval is aborted cleanly
            self.pollers.stop()
        self.scp.stop()
        self.assembler.stop()
        for worker in self.workers:
            worker.stop()
        self.pipeline.close()
        self.writer.stop()
