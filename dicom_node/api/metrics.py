"""Prometheus metrics of one node, read from its state at scrape time.

A custom collector (not module-global metrics) so several nodes in one process
(tests) never share counters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

JOB_STATES = ("queued", "validating", "decoding", "inferring", "writing", "delivering", "done", "failed", "dead-letter")


class NodeCollector(Collector):
    """SCP counters, index counts, jobs per state and deliveries of one node."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        """Yield the current values."""
        m = self.node.scp.ctx.metrics
        yield GaugeMetricFamily("dicom_node_associations_active", "DIMSE associations being served", self.node.scp.active)
        yield CounterMetricFamily("dicom_node_instances_received", "Instances stored (duplicates excluded)", m.instances)
        yield CounterMetricFamily("dicom_node_bytes_received", "Dataset bytes stored", m.bytes)
        yield CounterMetricFamily("dicom_node_duplicates_received", "Duplicate instances received", m.duplicates)
        yield CounterMetricFamily("dicom_node_associations_rejected", "Associations rejected", m.rejected)
        yield CounterMetricFamily("dicom_node_refused_disk_reserve", "C-STOREs refused at the disk reserve", m.refused_disk)
        conn = self.node.index.reader()
        try:
            counts = dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
            series = dict(conn.execute("SELECT state, COUNT(*) FROM series GROUP BY state").fetchall())
            has_ledger = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'deliveries'").fetchone()
            deliveries = dict(conn.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetchall()) if has_ledger else {}
            retries = conn.execute("SELECT COALESCE(SUM(MAX(attempts - 1, 0)), 0) FROM deliveries").fetchone()[0] if has_ledger else 0
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


def registry_for(node: Any) -> CollectorRegistry:
    """A registry holding one :class:`NodeCollector`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    return registry
