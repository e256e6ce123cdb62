"""What a retrieval session asks for: the plan (which study, series or instances, located at the
source when the caller named no study), the source it asks, and the refusals a request can meet.

Split from :mod:`dicom_node.sources.sessions` (the service that runs sessions) so the request
parsing in :mod:`dicom_node.sources.sessions_request` depends on the plan, not on the service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dicom_node.errors import DicomNodeError, SourceError
from dicom_node.sources.base import RetrieveResult, StudySummary
from dicom_node.sources.sink import StagingSink

#: Most studies a PATIENT-level session retrieves.
MAX_PATIENT_STUDIES = 100


class SessionRefused(DicomNodeError):
    """A session request names something the node will not contact or cannot serve.

    ``status`` is the HTTP status the API answers, ``code`` the machine-readable code.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class SessionUnavailable(DicomNodeError):
    """A session cannot be used (unknown, expired, not ready, or the series is ambiguous)."""


class RetrievalSource(Protocol):
    """What a retrieval session needs of a source (:class:`DimseSource` or :class:`DicomwebSource`)."""

    name: str

    def find_studies(self, filters: dict[str, str], limit: int, offset: int = 0) -> list[StudySummary]:
        """Studies matching ``filters`` (PATIENT level: the patient's studies)."""
        ...

    def locate(self, series_uid: str | None = None, sop_instance_uid: str | None = None) -> list[tuple[str, str]]:
        """The (study, series) UIDs holding a series or an instance."""
        ...

    def retrieve(self, study_uid: str, series_uid: str | None, sink: StagingSink,
                 instances: Sequence[str] | None = None) -> RetrieveResult:
        """Retrieve a study, a series, or ``instances`` of a series into ``sink``."""
        ...


@dataclass(frozen=True)
class RetrievalPlan:
    """What a background retrieval fetches: an instance, a series, a study, or the studies of a patient.

    ``level`` is the level of the narrowest identifier the caller gave (see
    :func:`~dicom_node.sources.sessions_request.plan_of`); the UIDs above it may be
    missing and are then looked up before the retrieval (:meth:`targets`).
    """

    level: str  # "PATIENT" | "STUDY" | "SERIES" | "IMAGE"
    study_uid: str | None = None
    series_uid: str | None = None
    patient_id: str | None = None
    sop_instance_uid: str | None = None

    def describe(self) -> dict[str, Any]:
        """What the index keeps of the request (no patient attribute)."""
        return {"query_level": self.level, "study_uid": self.study_uid, "series_uid": self.series_uid,
                "sop_instance_uid": self.sop_instance_uid}

    def targets(self, source: RetrievalSource) -> list[tuple[str, str | None, list[str] | None]]:
        """(study, series, instances) to retrieve, looking up the study (and series) a caller left out.

        A Study Root retrieval names every UID above its level (PS3.4 C.4.2.2.1, C.4.3.2.1;
        PS3.18 10.4.1 resource paths), so a series or instance given alone is first
        located by a SERIES- or IMAGE-level query (C-FIND or QIDO-RS).

        Raises
        ------
        SourceError
            The series or instance is not found at the source, or is found in several places.
        """
        if self.level == "PATIENT":
            studies = source.find_studies({"PatientID": self.patient_id or ""}, MAX_PATIENT_STUDIES)
            return [(s.study_instance_uid, None, None) for s in studies]
        if self.level == "STUDY":
            return [(str(self.study_uid), None, None)]
        instances = [self.sop_instance_uid] if self.level == "IMAGE" and self.sop_instance_uid else None
        if self.study_uid and self.series_uid:
            return [(self.study_uid, self.series_uid, instances)]
        what = f"instance {self.sop_instance_uid}" if instances else f"series {self.series_uid}"
        found = source.locate(self.series_uid, self.sop_instance_uid)
        if self.study_uid:
            found = [f for f in found if f[0] == self.study_uid]
        if not found:
            raise SourceError(f"{what} was not found at {source.name}" + ("" if self.study_uid else
                              "; if the source only answers hierarchical queries, give study_uid too"),
                              retryable=False)
        if len(found) > 1:
            raise SourceError(f"{what} is in {len(found)} series at {source.name}; give study_uid and series_uid",
                              retryable=False)
        return [(found[0][0], found[0][1], instances)]
