"""Study Root query matching over the node's result objects (PS3.4 C.2.2.2, C.4.1, C.6.2).

C-FIND answers from the search index (the ``qido_*`` tables) through the archive's
one matcher (:mod:`dicom_node.archive.match`, shared with QIDO-RS): universal,
single value, wildcard, list, UID list and DA/TM/DT ranges; person names match
regardless of case. Keys the node does not index are returned zero-length
(the conformance statement lists the indexed ones). C-GET and C-MOVE select the
result files by their unique keys from the ``results`` table. Patient attributes
may appear in responses but never in logs.
"""

from __future__ import annotations

import io
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue

from dicom_node.archive.query import parse_identifier, run
from dicom_node.errors import DecodeError, IdentifierError
from dicom_node.index import qr as qr_queries
from dicom_node.index.qido import Level
from dicom_node.pixels.inflate import DEFAULT_MAX_INFLATED_BYTES, deflate, inflate
from dicom_node.pixels.syntaxes import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, IMPLICIT_VR_LE
from dicom_node.spool import Spool

log = logging.getLogger(__name__)

LEVELS = ("STUDY", "SERIES", "IMAGE")
UNIQUE_KEYS = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}


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

def select_results(conn: sqlite3.Connection, spool: Spool, query: Query) -> list[ResultFile]:
    """Result objects under the query's unique keys (and Modality / SOP Class UID when single-valued).

    Paths come from the index and are resolved under the storage root; a row whose
    path leaves the root is skipped (a damaged index must not expose other files).
    Files are reached by :meth:`Spool.local` (fetched when only ``storage.spool_url`` has them).
    """
    root = spool.root
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
                              row.study_instance_uid, row.kind, spool.local(row.path, result=True)))
    return out


def _single(ds: Dataset, keyword: str) -> str:
    element = _element(ds, keyword)
    if element is None or element.value in (None, "") or element.VM > 1:
        return ""
    return str(element.value).strip()


def _is_wild(value: str) -> bool:
    return "*" in value or "?" in value


# -- C-FIND: the archive's matcher -------------------------------------------------------

def _response(query: Query, entity: Dataset, ae_title: str) -> Dataset:
    """The response identifier: every key asked for (zero-length when the node does not hold it)."""
    out = Dataset()
    for key in query.identifier:
        keyword = key.keyword
        if key.tag.is_private or key.tag.element == 0 or keyword in ("SpecificCharacterSet", "QueryRetrieveLevel"):
            continue
        if keyword == "RetrieveAETitle":
            out.RetrieveAETitle = ae_title
        elif keyword == "InstanceAvailability":
            out.InstanceAvailability = "ONLINE"
        elif keyword and keyword in entity and entity[keyword].value not in (None, ""):
            source = entity[keyword]
            out.add(DataElement(key.tag, source.VR, source.value))
        else:
            out.add(DataElement(key.tag, key.VR, [] if key.VR == "SQ" else None))
    out.QueryRetrieveLevel = query.level
    for name in LEVELS[: LEVELS.index(query.level) + 1]:  # unique keys of the level and above (C.4.1.2.2)
        keyword = UNIQUE_KEYS[name]
        if keyword not in out or not out[keyword].value:
            setattr(out, keyword, entity[keyword].value)
    if any(isinstance(e.value, str) and not e.value.isascii() for e in out) or any(
            e.VR == "PN" and e.value is not None and not str(e.value).isascii() for e in out):
        out.SpecificCharacterSet = "ISO_IR 192"
    return out


def find(conn: sqlite3.Connection, query: Query, ae_title: str) -> Iterator[Dataset]:
    """One response identifier per matching result entity (PS3.4 C.4.1.2.2), from the search index.

    The matching is :mod:`dicom_node.archive.match`, the one QIDO-RS uses; the Q/R SCP answers the
    node's results only (``origin="result"``), the objects its C-GET and C-MOVE retrieve.

    Raises
    ------
    IdentifierError
        0xA900 when a key's value is malformed for its VR (a bad date range, an unparsable number).
    """
    level: Level = "INSTANCE" if query.level == "IMAGE" else "SERIES" if query.level == "SERIES" else "STUDY"
    page = run(conn, parse_identifier(level, query.identifier), origin="result")
    for entity in page.entities:
        yield _response(query, entity, ae_title)
