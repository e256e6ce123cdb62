"""What every poll cycle shares, whatever it polls: the report, cancellation, the lease, the sink.

:class:`CycleBase` is the base of the DICOMweb/DIMSE cycle
(:class:`dicom_node.sources.poller.PollCycle`) and of the bucket cycle
(:class:`dicom_node.sources.objects.ObjectPollCycle`), so both renew the poll lease
the same way, stop the same way when the service stops, and store what they bring in
through the same :class:`~dicom_node.sources.sink.RetrievalSink` pseudo-associations.
:class:`~dicom_node.sources.poller.PollerService` schedules either one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dicom_node.config.sources import Poller
from dicom_node.errors import DicomNodeError
from dicom_node.index import sources as state
from dicom_node.sources.factory import source_label
from dicom_node.sources.sink import NodeStorage, RetrievalSink, Stored

__all__ = ["LEASE", "Arrived", "CycleBase", "CycleReport", "PollCancelled"]

#: Seconds a poll lease lasts without renewal (renewed every quarter of it while a cycle runs).
LEASE = 120.0


class PollCancelled(DicomNodeError):
    """The poll was cancelled (service stopping, lease lost); nothing is judged failed."""


@dataclass(frozen=True)
class Arrived:
    """What one retrieval of a series brought in."""

    study_instance_uid: str
    series_instance_uid: str
    stored: int
    duplicates: int
    failed: int


@dataclass
class CycleReport:
    """Outcome of one poll cycle of one source."""

    source: str
    ok: bool = True
    state: str = state.IDLE
    error: str | None = None
    studies: int = 0
    complete: bool = True
    arrived: list[Arrived] = field(default_factory=list)
    retry_in: float | None = None

    @property
    def retrieved(self) -> int:
        """Instances newly stored by this cycle."""
        return sum(a.stored for a in self.arrived)


class CycleBase:
    """One poll of one source: :meth:`run` scans and retrieves, and returns the new watermark.

    Parameters
    ----------
    node : NodeStorage
        Where retrieved instances are stored.
    poller : Poller
        The ``[[sources.pollers]]`` entry.
    owner : str
        This process's lease owner id.
    cancel : threading.Event
        Set when the service stops.
    peer_host : str
        The host instances come from (recorded on the pseudo-association).
    """

    def __init__(self, node: NodeStorage, poller: Poller, owner: str, cancel: threading.Event,
                 peer_host: str = "") -> None:
        self.node = node
        self.poller = poller
        self.owner = owner
        self.cancel = cancel
        self.peer_host = peer_host
        self.name = poller.name
        self.report = CycleReport(poller.name)
        self._renew_at = time.monotonic() + LEASE / 4

    def run(self, watermark: str | None) -> str | None:
        """Scan and retrieve; returns the new watermark when the scan was complete (None keeps the old one)."""
        raise NotImplementedError

    def _sink(self, on_stored: Callable[[Stored], None]) -> RetrievalSink:
        return RetrievalSink(self.node, self.name, source_label(self.poller), self.peer_host, on_stored)

    def _check(self) -> None:
        """Stop promptly when cancelled; keep the lease alive during long retrievals."""
        if self.cancel.is_set():
            raise PollCancelled("poll cancelled")
        if time.monotonic() >= self._renew_at:
            until = time.time() + LEASE
            if not self.node.writer.run(lambda c: state.renew(c, self.name, self.owner, until)):
                raise PollCancelled("poll lease lost")
            self._renew_at = time.monotonic() + LEASE / 4
