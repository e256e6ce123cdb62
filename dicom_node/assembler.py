"""Study assembly: decides when a series (and its study) is complete.

Completion is a state change plus an ``events`` row written in one transaction
by the index writer, so a restart neither loses nor repeats it: after a crash
the quiet periods simply resume from the persisted ``last_received_at``.
"""

from __future__ import annotations

import logging
import threading
import time

from dicom_node.config import AssemblyConfig
from dicom_node.errors import StorageError
from dicom_node.index import IndexWriter
from dicom_node.index import ops

log = logging.getLogger(__name__)


class Assembler:
    """Background thread that completes series whose wait is over.

    Parameters
    ----------
    config : AssemblyConfig
        Quiet period, abort grace and poll interval.
    writer : IndexWriter
        The index writer (all state changes go through it).
    """

    def __init__(self, config: AssemblyConfig, writer: IndexWriter) -> None:
        self.config = config
        self.writer = writer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="assembler", daemon=True)

    def start(self) -> None:
        """Start polling."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

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

    def _loop(self) -> None:
        while not self._stop.wait(self.config.poll_interval):
            try:
                self.tick()
            except StorageError as exc:
                log.error("assembly tick failed error=%s", exc)
