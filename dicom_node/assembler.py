"""Study assembly: decides when a series (and its study) is complete.

Completion is a state change plus an ``events`` row written in one transaction
by the index writer, so a restart neither loses nor repeats it: after a crash
the quiet periods simply resume from the persisted ``last_received_at``.
"""

from __future__ import annotations

import logging
import time

from dicom_node.background import BackgroundLoop
from dicom_node.config import AssemblyConfig
from dicom_node.errors import StorageError
from dicom_node.index import IndexWriter, ops

log = logging.getLogger(__name__)


class Assembler(BackgroundLoop):
    """Background thread that completes series whose wait is over.

    Parameters
    ----------
    config : AssemblyConfig
        Quiet period, abort grace and poll interval.
    writer : IndexWriter
        The index writer (all state changes go through it).
    """

    def __init__(self, config: AssemblyConfig, writer: IndexWriter) -> None:
        super().__init__("assembler", config.poll_interval)
        self.config = config
        self.writer = writer

    def tick(self, now: float | None = None) -> list[dict[str, object]]:
        """Complete what is due now; returns the events emitted."""
        at = time.time() if now is None else now
        events = self.writer.run(
            lambda c: ops.complete_due(c, at, self.config.quiet_period, self.config.abort_grace)
        )
        for event in events:
            log.info(
                "%s study_uid=%s series_uid=%s instances=%s",
                event["kind"], event["study_instance_uid"], event["series_instance_uid"], event["instance_count"],
            )
        return events

    def step(self) -> bool:
        """One poll; never raises (a failed tick is logged and retried at the next poll)."""
        try:
            self.tick()
        except StorageError as exc:
            log.error("assembly tick failed error=%s", exc)
        return False
