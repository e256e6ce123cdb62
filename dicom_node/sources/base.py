"""What a source answers, and the protocol DICOMweb and DIMSE sources share.

A poller only needs three things of a source: the studies matching its
filters, the series of one study with their instance counts, and a way to
retrieve one series (or only some of its instances) into a
:class:`~dicom_node.sources.sink.RetrievalSink`. QIDO-RS (PS3.18 10.6) and
C-FIND (PS3.4 C.4.1) answer the first two; WADO-RS (PS3.18 10.4) and
C-GET/C-MOVE (PS3.4 C.4.3/C.4.2) the third.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dicom_node.sources.sink import StagingSink, Stored


@dataclass(frozen=True)
class StudySummary:
    """One study as a query answered it (no patient attributes kept)."""

    study_instance_uid: str
    #: NumberOfStudyRelatedInstances (0008,1208 / 0020,1208); None when the source did not say.
    instances: int | None = None
    study_date: str = ""
    modalities: tuple[str, ...] = ()


@dataclass(frozen=True)
class SeriesSummary:
    """One series of a study."""

    study_instance_uid: str
    series_instance_uid: str
    #: NumberOfSeriesRelatedInstances (0020,1209); None when the source did not say.
    instances: int | None = None
    modality: str = ""


@dataclass
class RetrieveResult:
    """What one retrieval brought in."""

    stored: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    #: SOP Instance UID (or "" when unknown) -> reason.
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failed

    def add(self, stored: Stored, uid: str = "", describe: Callable[[int], str] | None = None) -> None:
        """Count one sink outcome; ``uid`` names it when the sink could not read its UID."""
        uid = stored.sop_instance_uid or uid
        if stored.status != 0:
            status = describe(stored.status) if describe else f"0x{stored.status:04X}"
            self.failed[uid] = stored.reason or f"refused with status {status}"
        elif stored.outcome == "duplicate":
            self.duplicates.append(uid)
        else:
            self.stored.append(uid)


class Source(Protocol):
    """A place studies are pulled from (a DICOMweb origin server or a DIMSE Q/R SCP)."""

    name: str
    #: Host the instances come from (recorded on each retrieval's association row).
    peer_host: str

    def find_studies(self, filters: dict[str, str], limit: int, offset: int = 0) -> list[StudySummary]:
        """Studies matching ``filters`` (DICOM keyword -> matching value), one page."""
        ...

    def find_series(self, study_uid: str) -> list[SeriesSummary]:
        """The series of one study with their instance counts."""
        ...

    def find_instances(self, study_uid: str, series_uid: str) -> list[str]:
        """SOP Instance UIDs of one series."""
        ...

    def retrieve(self, study_uid: str, series_uid: str | None, sink: StagingSink,
                 instances: Sequence[str] | None = None) -> RetrieveResult:
        """Retrieve a study, a series, or only ``instances`` of a series, into ``sink``.

        ``sink`` is duck-typed: anything with ``store_part10(chunks) -> Stored`` and
        ``store_dataset(ds, transfer_syntax) -> Stored`` (a session keeps its own sink).
        """
        ...
