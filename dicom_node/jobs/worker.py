"""The job worker: routes completion events into jobs and runs them, one thread per worker."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dicom_node.background import BackgroundLoop
from dicom_node.config.routing import RoutingConfig
from dicom_node.errors import DicomNodeError, InferenceError
from dicom_node.index import Index, IndexWriter
from dicom_node.index import jobs as ops
from dicom_node.jobs.facts import series_facts, series_files
from dicom_node.jobs.pipeline import Pipeline
from dicom_node.routing import Route, SeriesFacts, facts_dict, route
from dicom_node.spool import Spool

log = logging.getLogger(__name__)


def _consume(event: dict[str, Any], routes: list[Route], facts: SeriesFacts) -> Callable[[sqlite3.Connection], list[str]]:
    """The writer operation that turns one completion event into its jobs (bound to this event)."""

    def op(conn: sqlite3.Connection) -> list[str]:
        return ops.consume_event(conn, event, routes, facts_dict(facts), time.time())

    return op


class JobWorker(BackgroundLoop):
    """Background thread: consume completion events, then claim and run jobs.

    Parameters
    ----------
    routing : RoutingConfig
        The rules.
    index, writer, spool
        The node's storage.
    pipeline : Pipeline
        Runs one job's stages.
    poll_interval : float
        Sleep when there is nothing to do.
    source_rules : mapping, optional
        Recorded source -> the only rules that may route its series (pollers' ``rules``,
        see :func:`dicom_node.sources.factory.source_rules`).
    """

    def __init__(self, routing: RoutingConfig, index: Index, writer: IndexWriter, spool: Spool, pipeline: Pipeline,
                 poll_interval: float = 0.2, source_rules: Mapping[str, Sequence[str]] | None = None) -> None:
        super().__init__("job-worker", poll_interval)
        self.routing = routing
        self.source_rules = dict(source_rules or {})
        self.index = index
        self.writer = writer
        self.spool = spool
        self.pipeline = pipeline

    def route_pending(self) -> list[str]:
        """Turn unconsumed completion events into jobs; returns the new job ids."""
        conn = self.index.reader()
        try:
            events = [dict(e) for e in ops.pending_series_events(conn)]
            created: list[str] = []
            for event in events:
                facts = series_facts(conn, self.spool, event["series_instance_uid"])
                routes = route(self.routing, facts, self._contract_check(conn, event["series_instance_uid"]),
                               self.source_rules.get(facts.source))
                ids = self.writer.run(_consume(event, routes, facts))
                if not routes:
                    log.info("series matched no routing rule series_uid=%s modality=%s calling_ae=%s",
                             event["series_instance_uid"], facts.modality, facts.calling_ae)
                for jid, r in zip(ids, routes, strict=False):
                    log.info("job queued job=%s model=%s rule=%s series_uid=%s", jid, r.model, r.rule,
                             event["series_instance_uid"])
                created.extend(ids)
            return created
        finally:
            conn.close()

    def _contract_check(self, conn: sqlite3.Connection, series_uid: str) -> Callable[[str], bool]:
        """``model -> bool``: the series' headers satisfy the model's input contract (cached per model)."""
        cache: dict[str, bool] = {}

        def check(model: str) -> bool:
            if model not in cache:
                cache[model] = self.pipeline.satisfies_contract(model, series_files(conn, self.spool, series_uid))
            return cache[model]

        return check

    def run_once(self) -> bool:
        """Claim and run one job; False when none was runnable."""
        job: dict[str, Any] | None = self.writer.run(lambda c: ops.claim(c, time.time()))
        if job is None:
            return False
        self.pipeline.run(job)
        return True

    def step(self) -> bool:
        """Route new events, then run one job; never raises."""
        try:
            self.route_pending()
            return self.run_once()
        except (DicomNodeError, InferenceError) as exc:
            log.error("job worker step failed error=%s", exc)
            return False
