"""Prometheus metrics of one node, read from its state at scrape time.

A custom collector (not module-global metrics) so several nodes in one process
(tests) never share counters.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from dicom_node.index import Index
from dicom_node.index import metrics as counts_q
from dicom_node.registry import ModelRegistry
from dicom_node.scp.server import StorageServer

#: Jobs whose stage times feed the latency histograms (the most recently updated ones).
RECENT_JOBS = 10000
STAGES = ("validate", "decode", "infer", "write")
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
SOURCE_STATES = ("idle", "polling", "backoff", "stopped")
JOB_STATES = ("queued", "validating", "decoding", "inferring", "writing", "delivering", "done", "failed", "dead-letter")


class NodeCollector(Collector):
    """SCP counters, index counts, jobs per state and deliveries of one node.

    Parameters
    ----------
    scp : StorageServer
        The node's DIMSE server (association and C-STORE counters).
    index : Index
        The node's index (jobs, series, deliveries, sources, sessions).
    models : ModelRegistry
        The node's open predictors (batch sizes).
    """

    def __init__(self, scp: StorageServer, index: Index, models: ModelRegistry) -> None:
        self.scp = scp
        self.index = index
        self.models = models

    def collect(self) -> Iterator[Metric]:
        """Yield the current values."""
        m = self.scp.ctx.metrics
        yield GaugeMetricFamily("dicom_node_associations_active", "DIMSE associations being served", self.scp.active)
        yield CounterMetricFamily("dicom_node_instances_received", "Instances stored (duplicates excluded)", m.instances)
        yield CounterMetricFamily("dicom_node_bytes_received", "Dataset bytes stored", m.bytes)
        yield CounterMetricFamily("dicom_node_duplicates_received", "Duplicate instances received", m.duplicates)
        yield CounterMetricFamily("dicom_node_associations_rejected", "Associations rejected", m.rejected)
        yield CounterMetricFamily("dicom_node_refused_disk_reserve", "C-STOREs refused at the disk reserve", m.refused_disk)
        conn = self.index.reader()
        try:
            counts = counts_q.jobs_by_state(conn)
            series = counts_q.series_by_state(conn)
            deliveries = counts_q.deliveries_by_state(conn)
            retries = counts_q.delivery_retries(conn)
        finally:
            conn.close()
        jobs = GaugeMetricFamily("dicom_node_jobs", "Jobs per state", labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        ser = GaugeMetricFamily("dicom_node_series", "Series per assembly state", labels=["state"])
        for state in ("receiving", "complete"):
            ser.add_metric([state], series.get(state, 0))
        yield ser
        dl = GaugeMetricFamily("dicom_node_deliveries", "Result deliveries per state", labels=["state"])
        for state in ("pending", "sent", "dead"):
            dl.add_metric([state], deliveries.get(state, 0))
        yield dl
        yield CounterMetricFamily("dicom_node_delivery_retries", "Delivery attempts beyond the first", retries)
        yield from self._stage_histograms()
        yield self._batch_histogram()
        yield from self._job_and_webhook_counters()
        yield from self._source_metrics()
        yield from self._endpoint_metrics()

    def _stage_histograms(self) -> Iterator[Metric]:
        conn = self.index.reader()
        try:
            rows = counts_q.recent_stage_times(conn, RECENT_JOBS)
        finally:
            conn.close()
        samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
        for text in rows:
            try:
                times = json.loads(text)
            except ValueError:
                continue
            for stage in STAGES:
                if isinstance(times.get(stage), int | float):
                    samples[stage].append(float(times[stage]))
        hist = HistogramMetricFamily("dicom_node_job_stage_seconds",
                                     f"Seconds per job stage, over the {RECENT_JOBS} most recently updated jobs",
                                     labels=["stage"])
        for stage in STAGES:
            buckets, total = histogram(samples[stage], STAGE_BUCKETS)
            hist.add_metric([stage], buckets, total)
        yield hist

    def _batch_histogram(self) -> Metric:
        hist = HistogramMetricFamily("dicom_node_inference_batch_size",
                                     "Items per inference batch of the job pipeline's models (since each was loaded)",
                                     labels=["model"])
        for name, predictor in sorted(self.models.loaded().items()):
            buckets, total = histogram([float(n) for n in predictor.stats().sizes], BATCH_BUCKETS)
            hist.add_metric([name], buckets, total)
        return hist

    def _job_and_webhook_counters(self) -> Iterator[Metric]:
        conn = self.index.reader()
        try:
            job_retries = counts_q.job_retries(conn)
            hooks = counts_q.webhook_failures(conn)
        finally:
            conn.close()
        yield CounterMetricFamily("dicom_node_job_retries", "Job attempts beyond the first", job_retries)
        yield CounterMetricFamily("dicom_node_webhook_failures", "Invocation webhooks that finally failed or were refused",
                                  hooks)


    def _source_metrics(self) -> Iterator[Metric]:
        """Pollers (state, polls, retrieved instances, consecutive failures) and retrieval sessions."""
        conn = self.index.reader()
        try:
            sources = counts_q.source_counters(conn)
            sessions = counts_q.sessions_by_status(conn)
        finally:
            conn.close()
        state = GaugeMetricFamily("dicom_node_source_state", "1 for the state each poller is in", labels=["source", "state"])
        polls = CounterMetricFamily("dicom_node_source_polls", "Poll cycles run per source", labels=["source"])
        got = CounterMetricFamily("dicom_node_source_instances_retrieved", "Instances a source brought in",
                                  labels=["source"])
        fails = GaugeMetricFamily("dicom_node_source_failures", "Consecutive failed polls per source", labels=["source"])
        for row in sources:
            for name in SOURCE_STATES:
                state.add_metric([row.source, name], 1.0 if row.state == name else 0.0)
            polls.add_metric([row.source], row.polls)
            got.add_metric([row.source], row.retrieved)
            fails.add_metric([row.source], row.failures)
        yield from (state, polls, got, fails)
        sess = GaugeMetricFamily("dicom_node_sessions", "Retrieval sessions per status", labels=["status"])
        for status in ("retrieving", "ready", "failed"):
            sess.add_metric([status], sessions.get(status, 0))
        yield sess


    def _endpoint_metrics(self) -> Iterator[Metric]:
        # Remote inference servers (a Triton farm, issue 18), as the backend's pool sees them now.
        labels = ["model", "endpoint"]
        healthy = GaugeMetricFamily("dicom_node_inference_endpoint_healthy",
                                    "1 while a model's remote inference server is in its pool, 0 while taken out", labels=labels)
        in_flight = GaugeMetricFamily("dicom_node_inference_endpoint_in_flight",
                                      "Requests in flight per model and remote inference server", labels=labels)
        requests = CounterMetricFamily("dicom_node_inference_endpoint_requests",
                                       "Requests sent per model and remote inference server (since the model was loaded)",
                                       labels=labels)
        for name, predictor in sorted(self.models.loaded().items()):
            for state in predictor.backend.endpoints():
                healthy.add_metric([name, state.url], 1.0 if state.healthy else 0.0)
                in_flight.add_metric([name, state.url], state.in_flight)
                requests.add_metric([name, state.url], state.requests)
        yield from (healthy, in_flight, requests)


def histogram(values: list[float], bounds: tuple[float, ...]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative Prometheus buckets (with ``+Inf``) and the sum of ``values``."""
    buckets = [(str(float(b)), float(sum(1 for v in values if v <= b))) for b in bounds]
    buckets.append(("+Inf", float(len(values))))
    return buckets, float(sum(values))


def registry_for(scp: StorageServer, index: Index, models: ModelRegistry) -> CollectorRegistry:
    """A registry holding one :class:`NodeCollector`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(scp, index, models))
    return registry
