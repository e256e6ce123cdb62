"""Study Root query matching over the node's result objects (PS3.4 C.2.2.2, C.4.1, C.6.2).

The ``results`` table of the index holds the unique keys (Study, Series and
SOP Instance UID), the SOP class and the kind (SEG or SR, returned as
Modality). Everything else a C-FIND may ask for is read from the result files'
headers (``stop_before_pixels``), one representative file per study or series.

Matching (C.2.2.2): universal (zero length or ``*``), single value, wildcard
(``*`` and ``?``), list of UIDs, and ranges for DA/TM/DT. Person names match
regardless of case. Keys the node cannot answer are returned zero-length.
Patient attributes may appear in responses but never in logs.
"""

from __future__ import annotations

import io
import logging
import re
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from dicom_node.errors import DecodeError, IdentifierError
from dicom_node.index import qr as qr_queries
from dicom_node.pixels.inflate import DEFAULT_MAX_INFLATED_BYTES, deflate, inflate
from dicom_node.pixels.syntaxes import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE

log = logging.getLogger(__name__)

LEVELS = ("STUDY", "SERIES", "IMAGE")
UNIQUE_KEYS = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}
_COLUMNS = {"StudyInstanceUID": "study_instance_uid", "SeriesInstanceUID": "series_instance_uid",
            "SOPInstanceUID": "sop_instance_uid"}

#: Attributes read from a result file's header, by the level whose entity they describe.
HEADER_KEYS = {
    "STUDY": ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyDate",
              "StudyTime", "AccessionNumber", "StudyID", "StudyDescription", "ReferringPhysicianName"),
    "SERIES": ("SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesTime", "Manufacturer"),
    "IMAGE": ("InstanceNumber", "ContentDate", "ContentTime", "ContentLabel", "ContentDescription",
              "ContentCreatorName", "InstanceCreationDate", "InstanceCreationTime", "NumberOfFrames", "Rows",
              "Columns", "CompletionFlag", "VerificationFlag"),
}
#: Attributes computed from the index.
COMPUTED_KEYS = {
    "STUDY": ("StudyInstanceUID", "ModalitiesInStudy", "SOPClassesInStudy", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances"),
    "SERIES": ("SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances"),
    "IMAGE": ("SOPInstanceUID", "SOPClassUID"),
}
_ANY_LEVEL = ("RetrieveAETitle", "InstanceAvailability", "SpecificCharacterSet", "QueryRetrieveLevel")
_HEADER_TAGS = [Tag(k) for keys in HEADER_KEYS.values() for k in keys] + [Tag("SpecificCharacterSet")]
_STRING_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}


@dataclass(frozen=True)
class Query:
    """A decoded identifier: its level, the unique-key lists, and the identifier itself."""

    level: str
    identifier: Dataset
    #: Unique key keyword -> the UIDs listed (absent or empty = universal).
    uids: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ResultFile:
    """One row of the ``results`` table with its absolute path."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    kind: str
    path: Path


# -- identifier codec ------------------------------------------------------------------

def decode_dataset(data: bytes, transfer_syntax: str, max_inflated: int = DEFAULT_MAX_INFLATED_BYTES) -> Dataset:
    """Decode an identifier in a presentation context's native transfer syntax (PS3.5 A.1, A.2, A.3, A.5).

    A Deflated identifier is inflated with the node's bound (``scp.max_inflated_bytes``),
    so a few KiB on the wire cannot make the SCP allocate gigabytes.

    Raises
    ------
    IdentifierError
        0xC000 when the bytes are not a dataset in that syntax, or inflate past ``max_inflated``.
    """
    implicit = transfer_syntax == IMPLICIT_VR_LE
    little = transfer_syntax != EXPLICIT_VR_BE
    try:
        if transfer_syntax == DEFLATED_EXPLICIT_VR_LE:
            data = inflate(data, max_inflated)
        ds = read_dataset(io.BytesIO(data), implicit, little)
        for element in ds:  # force parsing now, inside the error boundary
            _ = element.value
    except (DecodeError, InvalidDicomError, ValueError, TypeError, KeyError, EOFError, OverflowError) as exc:
        raise IdentifierError(f"identifier cannot be decoded: {type(exc).__name__}", 0xC000) from exc
    return ds


def encode_dataset(ds: Dataset, transfer_syntax: str) -> bytes:
    """Encode a dataset (an identifier, or an instance already in that syntax) for a presentation context.

    Implicit VR Little Endian, Explicit VR Big Endian and Deflated are told
    apart; every other syntax (the encapsulated ones) is Explicit VR Little Endian.

    Raises
    ------
    IdentifierError
        0xC000 when pydicom cannot encode a value.
    """
    fp = DicomBytesIO()
    fp.is_implicit_VR = transfer_syntax == IMPLICIT_VR_LE
    fp.is_little_endian = transfer_syntax != EXPLICIT_VR_BE
    try:
        write_dataset(fp, ds)
    except (ValueError, TypeError, KeyError, OverflowError, UnicodeError) as exc:
        raise IdentifierError(f"response identifier cannot be encoded: {type(exc).__name__}", 0xC000) from exc
    data = fp.getvalue()
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LE:
        data = deflate(data)
    return data


# -- identifier parsing ----------------------------------------------------------------

def _element(ds: Dataset | None, keyword: str) -> DataElement | None:
    return ds[keyword] if ds is not None and keyword in ds else None


def _uid_list(ds: Dataset, keyword: str) -> list[str]:
    element = _element(ds, keyword)
    if element is None or element.value in (None, ""):
        return []
    values = element.value if isinstance(element.value, (list, tuple, MultiValue)) else str(element.value).split("\\")
    uids = [str(v).strip("\x00 ") for v in values if str(v).strip("\x00 ")]
    return [] if uids == ["*"] else uids


def parse_query(ds: Dataset, retrieve: bool) -> Query:
    """Check the level and the hierarchical unique keys (PS3.4 C.4.1.2.1, C.4.2.2.1, C.4.3.2.1).

    Unique keys above the level hold one UID. For C-GET and C-MOVE the unique
    key of the level itself is required (one UID or a list): retrieving
    everything by a universal key is refused.

    Raises
    ------
    IdentifierError
        0xA900 naming what is wrong.
    """
    level = str(ds.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS:
        raise IdentifierError(f"QueryRetrieveLevel must be STUDY, SERIES or IMAGE in Study Root, not {level[:10]!r}")
    depth = LEVELS.index(level)
    uids: dict[str, list[str]] = {}
    for n, name in enumerate(LEVELS[: depth + 1]):
        keyword = UNIQUE_KEYS[name]
        values = _uid_list(ds, keyword)
        if n < depth and len(values) != 1:
            raise IdentifierError(f"{keyword} must hold one UID at {level} level")
        if n == depth and retrieve and not values:
            raise IdentifierError(f"{keyword} is required to retrieve at {level} level")
        if values:
            uids[keyword] = values
    return Query(level, ds, uids)


# -- selection from the index ----------------------------------------------------------

def select_results(conn: sqlite3.Connection, root: Path, query: Query) -> list[ResultFile]:
    """Result objects under the query's unique keys (and Modality / SOP Class UID when single-valued).

    Paths come from the index and are resolved under ``root``; a row whose
    path leaves the root is skipped (a damaged index must not expose other files).
    """
    equal: dict[str, str | None] = {}
    for keyword in ("Modality", "SOPClassUID"):
        value = _single(query.identifier, keyword)
        if value and LEVELS.index(query.level) >= (1 if keyword == "Modality" else 2) and not _is_wild(value):
            equal[keyword] = value
    rows = qr_queries.match_results(
        conn, study_uids=query.uids.get("StudyInstanceUID", []), series_uids=query.uids.get("SeriesInstanceUID", []),
        sop_uids=query.uids.get("SOPInstanceUID", []), kind=equal.get("Modality"),
        sop_class_uid=equal.get("SOPClassUID"))
    out = []
    for row in rows:
        path = (root / row.path).resolve()
        if root not in path.parents:
            log.error("result path outside the storage root skipped sop_instance_uid=%s", row.sop_instance_uid)
            continue
        out.append(ResultFile(row.sop_instance_uid, row.sop_class_uid, row.series_instance_uid,
                              row.study_instance_uid, row.kind, path))
    return out


def _single(ds: Dataset, keyword: str) -> str:
    element = _element(ds, keyword)
    if element is None or element.value in (None, "") or element.VM > 1:
        return ""
    return str(element.value).strip()


def _is_wild(value: str) -> bool:
    return "*" in value or "?" in value


# -- matching --------------------------------------------------------------------------

def _values(element: DataElement | None) -> list[str]:
    if element is None or element.value in (None, ""):
        return []
    value = element.value
    items = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    return [str(v).strip() for v in items if str(v).strip()]


def _wildcard(pattern: str, value: str, fold: bool) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE | re.DOTALL if fold else re.DOTALL) is not None


def _seconds(tm: str) -> float:
    whole, _, frac = tm.replace(":", "").partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise ValueError(tm)
    hours, minutes, secs = int(whole[0:2]), int(whole[2:4] or 0), int(whole[4:6] or 0)
    return hours * 3600 + minutes * 60 + secs + (float("0." + frac) if frac else 0.0)


def _in_range(key: str, value: str, vr: str) -> bool:
    """Inclusive range matching (C.2.2.2.5): ``low-high``, ``low-`` or ``-high``."""
    low, _, high = key.partition("-")
    if vr == "TM":
        try:
            seconds = _seconds(value)
            return (not low or seconds >= _seconds(low)) and (not high or seconds <= _seconds(high))
        except ValueError:
            return False
    # DA (YYYYMMDD) and DT compare as text; a shorter DT bound covers everything it is a prefix of.
    return (not low or value >= low) and (not high or value[: len(high)] <= high)


def element_matches(key: DataElement, entity: DataElement | None) -> bool:
    """Whether an entity's attribute matches one key of the identifier (PS3.4 C.2.2.2).

    Zero-length keys and ``*`` match everything; a key with a value does not
    match an entity without one.
    """
    vr = key.VR
    if vr == "SQ":  # sequence matching is not supported: the key is answered empty
        return True
    keys = _values(key)
    if not keys or keys == ["*"]:
        return True
    values = _values(entity)
    if not values:
        return False
    if vr not in _STRING_VRS:
        return any(str(k) == str(v) for k in keys for v in values)
    if vr == "UI":
        return any(v in keys for v in values)
    key_text = "\\".join(keys)
    if vr in ("DA", "TM", "DT") and "-" in key_text:
        return any(_in_range(key_text, v, vr) for v in values)
    if vr in ("IS", "DS"):
        try:
            return any(float(k) == float(v) for k in keys for v in values)
        except ValueError:
            return False
    fold = vr == "PN"
    for k in keys:
        for v in values:
            if _is_wild(k) and vr not in ("DA", "TM", "DT"):
                if _wildcard(k, v, fold):
                    return True
            elif (k.lower() == v.lower()) if fold else k == v:
                return True
    return False


# -- entities and responses ------------------------------------------------------------

def _read_header(path: Path) -> Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except (OSError, InvalidDicomError, ValueError, TypeError, KeyError, AttributeError, EOFError) as exc:
        log.warning("result header unreadable file=%s error=%s", path.name, type(exc).__name__)
        return None


def _group(files: list[ResultFile], keyword: str) -> dict[str, list[ResultFile]]:
    groups: dict[str, list[ResultFile]] = {}
    for f in files:
        groups.setdefault(getattr(f, _COLUMNS[keyword]), []).append(f)
    return groups


def _computed(level: str, members: list[ResultFile], study_members: list[ResultFile], ae_title: str) -> Dataset:
    first = members[0]
    ds = Dataset()
    ds.RetrieveAETitle = ae_title
    ds.InstanceAvailability = "ONLINE"
    ds.StudyInstanceUID = first.study_instance_uid
    ds.ModalitiesInStudy = sorted({f.kind for f in study_members})
    ds.SOPClassesInStudy = sorted({f.sop_class_uid for f in study_members})
    ds.NumberOfStudyRelatedSeries = len({f.series_instance_uid for f in study_members})
    ds.NumberOfStudyRelatedInstances = len(study_members)
    if level in ("SERIES", "IMAGE"):
        ds.SeriesInstanceUID = first.series_instance_uid
        ds.Modality = first.kind
        series = [f for f in study_members if f.series_instance_uid == first.series_instance_uid]
        ds.NumberOfSeriesRelatedInstances = len(series)
    if level == "IMAGE":
        ds.SOPInstanceUID = first.sop_instance_uid
        ds.SOPClassUID = first.sop_class_uid
    return ds


def _allowed(level: str) -> set[str]:
    names = set(_ANY_LEVEL)
    for name in LEVELS[: LEVELS.index(level) + 1]:
        names.update(HEADER_KEYS[name])
        names.update(COMPUTED_KEYS[name])
    return names


def _needs_header(query: Query) -> bool:
    wanted = {e.keyword for e in query.identifier}
    return any(k in wanted for keys in HEADER_KEYS.values() for k in keys)


def _response(query: Query, entity: Dataset, header: Dataset | None) -> Dataset | None:
    """The response identifier for one entity, or None when it does not match."""
    allowed = _allowed(query.level)
    out = Dataset()
    for key in query.identifier:
        keyword = key.keyword
        if key.tag.is_private or key.tag.element == 0 or keyword in ("SpecificCharacterSet", "QueryRetrieveLevel"):
            continue
        # Keys the node does not hold at this level are answered empty, not matched (C.4.1.1.3.2).
        source = None
        if keyword in allowed:
            source = _element(entity, keyword)
            source = _element(header, keyword) if source is None else source
            if not element_matches(key, source):
                return None
        if source is not None:
            out.add(DataElement(key.tag, source.VR, source.value))
        else:
            out.add(DataElement(key.tag, key.VR, [] if key.VR == "SQ" else None))
    out.QueryRetrieveLevel = query.level
    for name in LEVELS[: LEVELS.index(query.level) + 1]:  # unique keys of the level and above (C.4.1.2.2)
        keyword = UNIQUE_KEYS[name]
        if keyword not in out:
            setattr(out, keyword, entity[keyword].value)
    charset = _element(header, "SpecificCharacterSet")
    if charset is not None and charset.value:
        out.SpecificCharacterSet = charset.value
    return out


def find(files: list[ResultFile], query: Query, ae_title: str,
         study_files: Iterable[ResultFile] | None = None) -> Iterator[Dataset]:
    """Group the selected files at the query level and yield one identifier per matching entity.

    A generator, so the caller can answer each match (and notice C-CANCEL)
    before the next entity's header is read.

    Parameters
    ----------
    files : list of ResultFile
        From :func:`select_results`.
    query : Query
        The parsed identifier.
    ae_title : str
        Answered as Retrieve AE Title.
    study_files : iterable of ResultFile, optional
        Every result of the studies involved, for the study-level counts at
        SERIES and IMAGE level (defaults to ``files``).
    """
    by_study = _group(list(study_files) if study_files is not None else files, "StudyInstanceUID")
    groups = _group(files, UNIQUE_KEYS[query.level])
    header_needed = _needs_header(query)
    for members in groups.values():
        study_members = by_study.get(members[0].study_instance_uid, members)
        entity = _computed(query.level, members, study_members, ae_title)
        header = _read_header(members[0].path) if header_needed else None
        response = _response(query, entity, header)
        if response is not None:
            yield response
