"""Study assembly: decides when a series (and its study) is complete.

Completion is a state change plus an ``events`` row written in one transaction
by the index writer, so a restart neither loses nor repeats it: after a crash
the quiet periods simply resume from the persisted ``last_received_at``.

Several nodes may share one PostgreSQL index (issue 18). Each assembler is its node's identity
(:class:`~dicom_node.index.nodes.NodeIdentity`): it registers the node at start, renews its
heartbeat every third of ``assembly.node_lease``, and at the same polls aborts the associations
of nodes whose heartbeat ran out, so a node that died mid-send stops holding its series open.
Completion itself is decided once for the cluster by :func:`dicom_node.index.ops.complete_due`.
"""

from __future__ import annotations

import logging
import sqlite3
import time

from dicom_node.background import BackgroundLoop
from dicom_node.config import AssemblyConfig
from dicom_node.errors import StorageError
from dicom_node.index import IndexWriter, nodes, ops
from dicom_node.index.nodes import NodeIdentity

log = logging.getLogger(__name__)


class Assembler(BackgroundLoop):
    """Background thread that completes series whose wait is over.

    Parameters
    ----------
    config : AssemblyConfig
        Quiet period, abort grace, poll interval and node lease.
    writer : IndexWriter
        The index writer (all state changes go through it).
    node : NodeIdentity, optional
        This node process; a new identity when omitted.
    """

    def __init__(self, config: AssemblyConfig, writer: IndexWriter, node: NodeIdentity | None = None) -> None:
        super().__init__("assembler", config.poll_interval)
        self.config = config
        self.writer = writer
        self.node = node or NodeIdentity.new()
        self._beat_at = float("-inf")

    def recover(self, now: float | None = None) -> int:
        """At the node's start: register this node and count dead nodes' open associations as aborted.

        Both in one transaction of the writer, before the SCP listens: the writer's session is tied to
        this node before it records any association. Returns the number of associations aborted.
        """
        at = time.time() if now is None else now

        def op(conn: sqlite3.Connection) -> int:
            nodes.register(conn, self.node, at)
            return ops.recover(conn, at, self.config.node_lease)

        dead = self.writer.run(op)
        self._beat_at = at
        log.info("node registered node=%s host=%s pid=%d", self.node.id, self.node.host, self.node.pid)
        return dead

    def tick(self, now: float | None = None) -> list[dict[str, object]]:
        """Complete what is due now (renewing the heartbeat when it is due); returns the events emitted."""
        at = time.time() if now is None else now
        beat = at - self._beat_at >= self.config.node_lease / 3

        def op(conn: sqlite3.Connection) -> tuple[int, list[dict[str, object]]]:
            aborted = 0
            if beat:
                nodes.heartbeat(conn, self.node, at)
                aborted = ops.abort_dead(conn, at, self.config.node_lease)
            return aborted, ops.complete_due(conn, at, self.config.quiet_period, self.config.abort_grace)

        aborted, events = self.writer.run(op)
        if beat:
            self._beat_at = at
        if aborted:
            log.warning("associations of nodes whose heartbeat ran out counted as aborted count=%d", aborted)
        for event in events:
            log.info(
                "%s study_uid=%s series_uid=%s instances=%s",
                event["kind"], event["study_instance_uid"], event["series_instance_uid"], event["instance_count"],
            )
        return events

    def stop(self) -> None:
        """Stop polling and remove this node's heartbeat row (the node is leaving; the writer still runs)."""
        super().stop()
        try:
            self.writer.run(lambda c: nodes.forget(c, self.node.id))
        except StorageError as exc:  # not started, or the index is gone: the heartbeat simply expires
            log.warning("could not remove the node's heartbeat node=%s error=%s", self.node.id, exc)

    def step(self) -> bool:
        """One poll; never raises (a failed tick is logged and retried at the next poll)."""
        try:
            self.tick()
        except StorageError as exc:
            log.error("assembly tick failed error=%s", exc)
        return False
