"""What every association of one SCP shares: config, storage and counters."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from pynetdicom.presentation import PresentationContext

from dicom_node.config import ScpConfig
from dicom_node.index import IndexWriter
from dicom_node.ingest import Ingestor
from dicom_node.spool import Spool


@dataclass
class ScpMetrics:
    """Counters of the SCP (exported by the REST facade's /metrics later)."""

    instances: int = 0
    duplicates: int = 0
    bytes: int = 0
    rejected: int = 0
    refused_disk: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, outcome: str, size: int) -> None:
        """Count one stored, replaced or duplicate instance."""
        with self._lock:
            if outcome == "duplicate":
                self.duplicates += 1
            else:
                self.instances += 1
                self.bytes += size


@dataclass
class ScpContext:
    """Shared state handed to each :class:`~dicom_node.scp.association.AssociationHandler`."""

    config: ScpConfig
    spool: Spool
    writer: IndexWriter
    ingestor: Ingestor
    supported: list[PresentationContext]
    metrics: ScpMetrics = field(default_factory=ScpMetrics)
