"""The attributes QIDO-RS and C-FIND match and return (PS3.18 Table 10.6.3-3/-4/-5, PS3.4 C.6.2.1).

:data:`KEYS` maps a DICOM keyword to the level it describes, its VR and the indexed column
(``alias.column`` of :mod:`dicom_node.index.qido`). Computed keys (counts, ModalitiesInStudy) have
no column of their own. :func:`record_from_dataset` extracts the indexed values from a header.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicom_node.index.qido import Level, Origin, QidoRecord, Value

LEVELS: tuple[Level, ...] = ("STUDY", "SERIES", "INSTANCE")


@dataclass(frozen=True)
class Key:
    """One searchable attribute."""

    keyword: str
    level: Level
    vr: str
    column: str | None
    #: Returned at its level even when not asked for (PS3.18 10.6.3.3 required return attributes).
    required: bool = True


_TABLE = (
    Key("StudyInstanceUID", "STUDY", "UI", "st.study_uid"),
    Key("PatientName", "STUDY", "PN", "st.patient_name"),
    Key("PatientID", "STUDY", "LO", "st.patient_id"),
    Key("PatientBirthDate", "STUDY", "DA", "st.patient_birth_date"),
    Key("PatientSex", "STUDY", "CS", "st.patient_sex"),
    Key("StudyDate", "STUDY", "DA", "st.study_date"),
    Key("StudyTime", "STUDY", "TM", "st.study_time"),
    Key("AccessionNumber", "STUDY", "SH", "st.accession_number"),
    Key("StudyID", "STUDY", "SH", "st.study_id"),
    Key("StudyDescription", "STUDY", "LO", "st.study_description", required=False),
    Key("ReferringPhysicianName", "STUDY", "PN", "st.referring_physician_name"),
    Key("TimezoneOffsetFromUTC", "STUDY", "SH", "st.timezone_offset"),
    Key("ModalitiesInStudy", "STUDY", "CS", None),
    Key("SOPClassesInStudy", "STUDY", "UI", None, required=False),
    Key("NumberOfStudyRelatedSeries", "STUDY", "IS", None),
    Key("NumberOfStudyRelatedInstances", "STUDY", "IS", None),
    Key("SeriesInstanceUID", "SERIES", "UI", "se.series_uid"),
    Key("Modality", "SERIES", "CS", "se.modality"),
    Key("SeriesNumber", "SERIES", "IS", "se.series_number"),
    Key("SeriesDescription", "SERIES", "LO", "se.series_description"),
    Key("PerformedProcedureStepStartDate", "SERIES", "DA", "se.performed_start_date"),
    Key("PerformedProcedureStepStartTime", "SERIES", "TM", "se.performed_start_time"),
    Key("NumberOfSeriesRelatedInstances", "SERIES", "IS", None),
    Key("SOPInstanceUID", "INSTANCE", "UI", "i.sop_uid"),
    Key("SOPClassUID", "INSTANCE", "UI", "i.sop_class_uid"),
    Key("InstanceNumber", "INSTANCE", "IS", "i.instance_number"),
    Key("Rows", "INSTANCE", "US", "i.rows"),
    Key("Columns", "INSTANCE", "US", "i.columns"),
    Key("BitsAllocated", "INSTANCE", "US", "i.bits_allocated"),
    Key("NumberOfFrames", "INSTANCE", "IS", "i.number_of_frames"),
)
#: Every searchable attribute by keyword.
KEYS: dict[str, Key] = {k.keyword: k for k in _TABLE}
UNIQUE: dict[Level, str] = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "INSTANCE": "SOPInstanceUID"}
_INTEGER_VRS = {"IS", "US"}


def keys_of(level: Level) -> list[Key]:
    """The keys describing ``level`` itself."""
    return [k for k in _TABLE if k.level == level]


def _value(ds: Dataset, keyword: str, vr: str) -> Value:
    try:
        element = ds.get(keyword)
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeError, LookupError):
        return None  # a malformed value is not indexed; the instance itself is stored as received
    if element is None or element == "":
        return None
    if vr in _INTEGER_VRS:
        try:
            return int(element[0] if isinstance(element, (list, MultiValue)) else element)
        except (TypeError, ValueError, IndexError):
            return None
    if isinstance(element, (list, MultiValue)):
        return "\\".join(str(v) for v in element) or None
    return str(element).strip() or None


def record_from_dataset(ds: Dataset, origin: Origin) -> QidoRecord:
    """The indexed attributes of one instance header (absent attributes are None)."""
    tables: dict[str, dict[str, Value]] = {"st": {}, "se": {}, "i": {}}
    for key in _TABLE:
        if key.column is not None:
            alias, _, column = key.column.partition(".")
            tables[alias][column] = _value(ds, key.keyword, key.vr)
    tables["se"]["study_uid"] = tables["st"]["study_uid"]
    tables["i"]["series_uid"] = tables["se"]["series_uid"]
    tables["i"]["study_uid"] = tables["st"]["study_uid"]
    return QidoRecord(study=tables["st"], series=tables["se"], instance=tables["i"], origin=origin)
