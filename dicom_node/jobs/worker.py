"""Series jobs on the work queue: the router that turns completion events into jobs, and their handlers.

- :class:`JobRouter` (a periodic scan, not queued work): routes unconsumed ``series_complete``
  events and, in the same transaction as each job row, queues its ``job`` work.
- :class:`SeriesJobHandler` (kind ``job``): validate -> decode -> infer -> write
  (:class:`~dicom_node.jobs.pipeline.Pipeline`); a job that reaches ``delivering`` queues its
  ``delivery`` work in the same transaction.
- :class:`DeliveryHandler` (kind ``delivery``): sends the job's result objects to every destination
  through the delivery ledger; a pending object parks the work until its ledger retry time, and the
  job ends ``done`` or ``dead-letter`` when its deliveries finish.

The ``jobs`` row keeps the REST-visible state (queued, validating ... delivering, done, failed,
dead-letter); the ``work`` row (:mod:`dicom_node.workqueue`) carries the queue's state, attempts,
lease and retry time.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from dicom_node.background import BackgroundLoop
from dicom_node.config.routing import RoutingConfig
from dicom_node.errors import DicomNodeError, InferenceError
from dicom_node.index import Index, IndexWriter
from dicom_node.index import jobs as ops
from dicom_node.jobs.facts import series_facts, series_files
from dicom_node.jobs.pipeline import Pipeline
from dicom_node.routing import Route, SeriesFacts, facts_dict, route
from dicom_node.spool import Spool
from dicom_node.workqueue import DeadLetter, Done, Failed, Outcome, Retry, WorkItem, WorkQueue

log = logging.getLogger(__name__)

#: Work kinds of this module.
JOB = "job"
DELIVERY = "delivery"


class Delivery(Protocol):
    """Delivers a job's result objects (:class:`dicom_node.jobs.stages.JobDelivery`)."""

    def deliver(self, job: dict[str, Any]) -> tuple[str, str | None, float]:
        """Returns ``(state, reason, next_attempt_at)``: done, delivering (retry then) or dead-letter."""
        ...


class JobRouter(BackgroundLoop):
    """Background scan: turn unconsumed completion events into jobs and queue them.

    Parameters
    ----------
    routing : RoutingConfig
        The rules.
    index, writer, spool
        The node's storage.
    pipeline : Pipeline
        Checks a series against a model's input contract (rules that require it).
    queue : WorkQueue
        Where each new job is queued (kind ``job``).
    poll_interval : float
        Sleep when there is nothing to do.
    source_rules : mapping, optional
        Recorded source -> the only rules that may route its series (pollers' ``rules``,
        see :func:`dicom_node.sources.factory.source_rules`).
    """

    def __init__(self, routing: RoutingConfig, index: Index, writer: IndexWriter, spool: Spool, pipeline: Pipeline,
                 queue: WorkQueue, poll_interval: float = 0.2,
                 source_rules: Mapping[str, Sequence[str]] | None = None) -> None:
        super().__init__("job-router", poll_interval)
        self.routing = routing
        self.source_rules = dict(source_rules or {})
        self.index = index
        self.writer = writer
        self.spool = spool
        self.pipeline = pipeline
        self.queue = queue

    def _consume(self, event: dict[str, Any], routes: list[Route],
                 facts: SeriesFacts) -> Callable[[sqlite3.Connection], list[str]]:
        """The writer operation that turns one event into its jobs and queues them (bound to this event)."""

        def op(conn: sqlite3.Connection) -> list[str]:
            ids = ops.consume_event(conn, event, routes, facts_dict(facts), time.time())
            for jid in ids:
                self.queue.enqueue_in(conn, JOB, jid)
            return ids

        return op

    def route_pending(self) -> list[str]:
        """Turn unconsumed completion events into queued jobs; returns the new job ids."""
        conn = self.index.reader()
        try:
            events = [dict(e) for e in ops.pending_series_events(conn)]
            created: list[str] = []
            for event in events:
                facts = series_facts(conn, self.spool, event["series_instance_uid"])
                routes = route(self.routing, facts, self._contract_check(conn, event["series_instance_uid"]),
                               self.source_rules.get(facts.source))
                ids = self.writer.run(self._consume(event, routes, facts))
                if not routes:
                    log.info("series matched no routing rule series_uid=%s modality=%s calling_ae=%s",
                             event["series_instance_uid"], facts.modality, facts.calling_ae)
                for jid, r in zip(ids, routes, strict=False):
                    log.info("job queued job=%s model=%s rule=%s series_uid=%s", jid, r.model, r.rule,
                             event["series_instance_uid"])
                created.extend(ids)
        finally:
            conn.close()
        if created:
            self.queue.wake()
        return created

    def _contract_check(self, conn: sqlite3.Connection, series_uid: str) -> Callable[[str], bool]:
        """``model -> bool``: the series' headers satisfy the model's input contract (cached per model)."""
        cache: dict[str, bool] = {}

        def check(model: str) -> bool:
            if model not in cache:
                cache[model] = self.pipeline.satisfies_contract(model, series_files(conn, self.spool, series_uid))
            return cache[model]

        return check

    def step(self) -> bool:
        """Route new events; never raises. False: wait before the next scan."""
        try:
            return bool(self.route_pending())
        except (DicomNodeError, InferenceError) as exc:
            log.error("job routing failed error=%s", exc)
            return False


class SeriesJobHandler:
    """Kind ``job``: produce one job's results, then queue its delivery."""

    def __init__(self, writer: IndexWriter, pipeline: Pipeline, queue: WorkQueue) -> None:
        self.writer = writer
        self.pipeline = pipeline
        self.queue = queue

    def handle(self, item: WorkItem) -> Outcome:
        """Run the job from its start (after a crash too: stages are redone, result UIDs are deterministic)."""
        jid = item.ref
        job = self.writer.run(lambda c: ops.begin(c, jid, time.time()))
        if job is None:  # ended, or already delivering (a crash may have come before its delivery was queued)
            conn = self.pipeline.index.reader()
            try:
                row = ops.job_row(conn, jid)
            finally:
                conn.close()
            if row is not None and row["state"] == "delivering":
                self.queue.enqueue(DELIVERY, jid)
            return Done()
        reason = self.pipeline.run(job, item)
        if reason is not None:
            return Failed(reason)
        self.queue.enqueue(DELIVERY, jid)
        return Done()

    def give_up(self, item: WorkItem, state: str, reason: str) -> None:
        """End the job ``failed`` with ``reason`` (interrupted too often, or an unexpected error)."""
        self.writer.run(lambda c: ops.finish(c, item.ref, "failed", time.time(), reason))


class DeliveryHandler:
    """Kind ``delivery``: send a ``delivering`` job's results; the job ends done or dead-letter."""

    def __init__(self, index: Index, writer: IndexWriter, delivery: Delivery) -> None:
        self.index = index
        self.writer = writer
        self.delivery = delivery

    def handle(self, item: WorkItem) -> Outcome:
        """One delivery attempt of every pending object; retried at the ledger's next attempt time."""
        jid = item.ref
        conn = self.index.reader()
        try:
            job = ops.job_row(conn, jid)
        finally:
            conn.close()
        if job is None or job["state"] != "delivering":
            return Done()
        with item.stage("deliver"):
            state, reason, next_at = self.delivery.deliver(job)
        self.writer.run(lambda c: ops.finish(c, jid, state, time.time(), reason, None, next_at))
        log.info("job %s job=%s%s", state, jid, f" reason={reason}" if reason else "")
        if state == "delivering":
            return Retry(reason or "waiting to retry delivery", at=next_at)
        if state == "dead-letter":
            return DeadLetter(reason or "dead-lettered")
        return Done()

    def give_up(self, item: WorkItem, state: str, reason: str) -> None:
        """End the job ``dead-letter`` with ``reason``; ``dicom-node jobs retry`` sends it again."""
        self.writer.run(lambda c: ops.finish(c, item.ref, "dead-letter", time.time(), reason))
