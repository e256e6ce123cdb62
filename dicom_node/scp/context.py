"""What every association of one SCP shares: config, storage, counters and the result archive."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError
from pynetdicom.presentation import PresentationContext

from dicom_node.config import NodeConfig, ScpConfig
from dicom_node.config.delivery import DimseDestination
from dicom_node.index import Index, IndexWriter
from dicom_node.ingest import Ingestor
from dicom_node.spool import Spool

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class ResultArchive:
    """The result objects (SEG, SR) the Query/Retrieve SCP answers for (PS3.4 C.4).

    Attributes
    ----------
    index : Index
        Holds the ``results`` table.
    root : pathlib.Path
        Storage root; a result's ``path`` column is relative to it.
    move_destinations : dict of str to DimseDestination
        C-MOVE destinations by AE title, from ``[[delivery.known_peers]]`` and
        ``[[sources.remotes]]``: a peer never names a host itself.
    ae_title : str
        Our AE title (Retrieve AE Title in C-FIND responses, calling AE of C-MOVE sub-operations).
    """

    index: Index
    root: Path
    move_destinations: dict[str, DimseDestination]
    ae_title: str

    @classmethod
    def from_config(cls, config: NodeConfig, index: Index) -> ResultArchive:
        """Collect the move destinations; a known peer wins over a remote node of the same AE title."""
        destinations: dict[str, DimseDestination] = {}
        calling = config.scp.ae_title
        for remote in config.sources.remotes:
            destinations[remote.ae_title] = DimseDestination(
                name="c-move", ae_title=remote.ae_title, host=remote.host, port=remote.port, calling_ae=calling,
                tls=remote.tls, ca_file=remote.ca_file, cert_file=remote.cert_file, key_file=remote.key_file,
                acse_timeout=remote.acse_timeout, dimse_timeout=remote.dimse_timeout,
                network_timeout=remote.network_timeout, max_pdu=remote.max_pdu,
                allow_link_local=remote.allow_link_local,
            )
        for peer in config.delivery.known_peers:
            try:
                destinations[peer.ae_title] = DimseDestination(
                    name="c-move", ae_title=peer.ae_title, host=peer.host, port=peer.port, calling_ae=calling,
                )
            except ValidationError as exc:  # e.g. a link-local host, refused as an outbound destination
                log.warning("known peer is not a C-MOVE destination ae_title=%s reason=%s", peer.ae_title,
                            exc.errors()[0]["msg"].removeprefix("Value error, "))
        return cls(index, Path(config.storage.root).resolve(), destinations, calling)


@dataclass
class ScpContext:
    """Shared state handed to each :class:`~dicom_node.scp.association.AssociationHandler`."""

    config: ScpConfig
    spool: Spool
    writer: IndexWriter
    ingestor: Ingestor
    supported: list[PresentationContext]
    metrics: ScpMetrics = field(default_factory=ScpMetrics)
    #: Result objects for C-FIND / C-GET / C-MOVE; None answers them "unable to process".
    archive: ResultArchive | None = None
