"""Searches of the archive: QIDO-RS query parameters (PS3.18 8.3.4) and C-FIND identifiers, one engine.

:func:`parse_qido` turns a request's query parameters into a :class:`Search`;
:func:`parse_identifier` does the same for a C-FIND identifier; :func:`run` answers either from the
index's ``qido_*`` tables, matching in SQL where the index can (:mod:`dicom_node.archive.match`),
and yields one :class:`~pydicom.dataset.Dataset` per matching entity with the level's required
return attributes, the matching keys and the requested extra ones.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from dicom_node.archive.keys import KEYS, LEVELS, UNIQUE, Key
from dicom_node.archive.match import Condition, condition, value_matches
from dicom_node.errors import IdentifierError
from dicom_node.index import qido
from dicom_node.index.qido import Filter, Level, Origin, Value

#: Query parameters that are not attributes (PS3.18 8.3.4.1).
RESERVED = ("limit", "offset", "fuzzymatching", "includefield")
#: The most entities one QIDO-RS response holds when the caller sets no smaller ``limit``.
MAX_LIMIT = 1000
_TAG = re.compile(r"[0-9A-Fa-f]{8}")


@dataclass(frozen=True)
class Search:
    """A parsed query: level, scope (UIDs of the path), conditions and what to return."""

    level: Level
    conditions: tuple[Condition, ...] = ()
    scope: Mapping[str, str] = field(default_factory=dict)
    include: frozenset[str] = frozenset()
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    fuzzy: bool = False
    #: Valid attributes the node cannot match; they are ignored (QIDO-RS warns about them).
    ignored: tuple[str, ...] = ()


@dataclass(frozen=True)
class Page:
    """The entities of one response, and whether more matched beyond ``limit``."""

    entities: list[Dataset]
    truncated: bool


#: One attribute of the DICOM JSON model: ``{"vr": ..., "Value": [...]}`` (PS3.18 F.2.2).
JsonElement = dict[str, object]


@dataclass(frozen=True)
class JsonPage:
    """:class:`Page` in the DICOM JSON model: per entity, tag (8 hex digits) to element, in tag order."""

    entities: list[dict[str, JsonElement]]
    truncated: bool


def _keyword(name: str) -> str:
    """A DICOM keyword from a keyword or an 8-digit hex tag; raises IdentifierError when it is neither."""
    if _TAG.fullmatch(name):
        keyword = keyword_for_tag(int(name, 16))
        if keyword:
            return keyword
    elif tag_for_keyword(name) is not None:
        return name
    raise IdentifierError(f"{name[:64]!r} is not a DICOM attribute keyword or tag")


def _allowed(level: Level) -> set[str]:
    depth = LEVELS.index(level)
    return {k.keyword for k in KEYS.values() if LEVELS.index(k.level) <= depth}


def _int_param(name: str, value: str) -> int:
    if not value.isdigit():
        raise IdentifierError(f"{name} must be a non-negative integer, not {value[:20]!r}")
    return int(value)


def parse_qido(level: Level, params: Iterable[tuple[str, str]], scope: Mapping[str, str] | None = None) -> Search:
    """A search from QIDO-RS query parameters (repeated parameters and comma lists of includefield).

    Raises
    ------
    IdentifierError
        An unknown attribute, a malformed value, or a bad limit/offset (answered 400).
    """
    conditions: list[Condition] = []
    include: set[str] = set()
    include_all = fuzzy = False
    limit: int | None = None
    offset = 0
    ignored: list[str] = []
    allowed = _allowed(level)
    for name, value in params:
        if name == "limit":
            limit = _int_param(name, value)
        elif name == "offset":
            offset = _int_param(name, value)
        elif name == "fuzzymatching":
            if value not in ("true", "false"):
                raise IdentifierError(f"fuzzymatching must be true or false, not {value[:10]!r}")
            fuzzy = value == "true"
        elif name == "includefield":
            for item in (v.strip() for v in value.split(",") if v.strip()):
                if item == "all":
                    include_all = True
                else:
                    include.add(_keyword(item))
        else:
            keyword = _keyword(name.split(".", 1)[0])
            if keyword not in allowed or "." in name:
                ignored.append(keyword)
                continue
            found = condition(KEYS[keyword], value)
            if found is not None:
                conditions.append(found)
    return Search(level, tuple(conditions), dict(scope or {}), frozenset(include), include_all, limit, offset,
                  fuzzy, tuple(ignored))


def parse_identifier(level: Level, identifier: Dataset) -> Search:
    """A search from a C-FIND identifier: its keys are matched where the node holds them and returned.

    Keys the node does not hold at this level are answered zero-length (PS3.4 C.4.1.1.3.2).
    """
    conditions: list[Condition] = []
    include: set[str] = set()
    allowed = _allowed(level)
    for element in identifier:
        keyword = element.keyword
        if not keyword or element.tag.is_private or keyword in ("QueryRetrieveLevel", "SpecificCharacterSet"):
            continue
        include.add(keyword)
        if keyword not in allowed or element.VR == "SQ":
            continue
        value = element.value
        text = "" if value is None else "\\".join(str(v) for v in value) if element.VM > 1 else str(value)
        found = condition(KEYS[keyword], text)
        if found is not None:
            conditions.append(found)
    return Search(level, tuple(conditions), {}, frozenset(include), False, None, 0, False, ())


def _scope_filters(search: Search) -> list[Filter]:
    return [Filter(KEYS[keyword].column or "", "eq", (uid,)) for keyword, uid in search.scope.items()]


def _return_keys(search: Search) -> list[Key]:
    """Required attributes of the level, and of the levels above when the query is not scoped under them."""
    depth = LEVELS.index(search.level)
    out: list[Key] = []
    for n, level in enumerate(LEVELS[: depth + 1]):
        scoped_below = n < depth and UNIQUE[level] in search.scope
        for key in KEYS.values():
            if key.level != level:
                continue
            if search.include_all or key.keyword in search.include or (key.required and not scoped_below) \
                    or key.keyword == UNIQUE[level]:
                out.append(key)
    return out


#: VRs whose values go into DICOM JSON as the strings they are (PS3.18 F.2.3).
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
#: VRs whose values go as JSON numbers; the index holds them as integers.
_INTEGER_VRS = frozenset({"IS", "US", "UL", "SL", "SS", "UV", "SV"})


@functools.lru_cache(maxsize=512)
def _tag_vr(keyword: str) -> tuple[str, str]:
    return f"{tag_for_keyword(keyword):08X}", dictionary_VR(keyword)


def _person_name(text: str) -> dict[str, str]:
    groups = PersonName(text).components  # alphabetic=ideographic=phonetic, as pydicom splits them
    return dict(zip(("Alphabetic", "Ideographic", "Phonetic"), groups[:3], strict=False))


def _first(pair: tuple[str, JsonElement]) -> str:
    return pair[0]


def element_json(keyword: str, value: Value | list[str]) -> tuple[str, JsonElement]:
    """The tag and DICOM JSON of one element, equal to pydicom's ``to_json_dict`` of what :func:`_set` makes.

    Text, person names and integers are written directly; any other VR or value type (a sequence or an
    ambiguous VR asked for by ``includefield``) goes through a one-element pydicom dataset.
    """
    tag, vr = _tag_vr(keyword)
    if value is None or value == []:
        if vr != "SQ" and " " not in vr:  # "US or SS" and the like: pydicom's own rules
            return tag, {"vr": vr}
    else:
        items = value.split("\\") if isinstance(value, str) else value if isinstance(value, list) else [value]
        texts = [v for v in items if isinstance(v, str)]
        if (vr in _TEXT_VRS or vr == "PN") and len(texts) == len(items):
            if texts == [""]:
                return tag, {"vr": vr}
            return tag, {"vr": vr, "Value": [_person_name(v) for v in texts] if vr == "PN" else texts}
        elif vr in _INTEGER_VRS and all(type(v) is int for v in items):
            return tag, {"vr": vr, "Value": list(items)}
    ds = Dataset()
    _set(ds, keyword, value)
    return tag, ds.to_json_dict()[tag]


def _set(ds: Dataset, keyword: str, value: Value | list[str]) -> None:
    vr = dictionary_VR(keyword)
    if value is None or value == []:
        ds.add_new(keyword, vr, None)
    elif isinstance(value, str) and "\\" in value:
        ds.add_new(keyword, vr, value.split("\\"))
    else:
        ds.add_new(keyword, vr, value)


Element = tuple[str, Value | list[str]]


def _elements(search: Search, row: Mapping[str, Value], keys: list[Key], study: qido.Counts | None,
              series: qido.Counts | None) -> list[Element]:
    """The (keyword, value) pairs one matching entity answers: its return keys, then unheld asked-for ones."""
    out: list[Element] = []
    for key in keys:
        if key.column is not None:
            out.append((key.keyword, row.get(key.column)))
        elif key.keyword == "ModalitiesInStudy":
            out.append((key.keyword, list(study.modalities) if study else None))
        elif key.keyword == "SOPClassesInStudy":
            out.append((key.keyword, list(study.sop_classes) if study else None))
        elif key.keyword == "NumberOfStudyRelatedSeries":
            out.append((key.keyword, study.series if study else 0))
        elif key.keyword == "NumberOfStudyRelatedInstances":
            out.append((key.keyword, study.instances if study else 0))
        elif key.keyword == "NumberOfSeriesRelatedInstances":
            out.append((key.keyword, series.instances if series else 0))
    for keyword in sorted(search.include - {k.keyword for k in keys}):
        if keyword not in KEYS:  # asked for, but the node does not hold it: zero-length
            out.append((keyword, None))
    return out


def _entity(elements: list[Element]) -> Dataset:
    ds = Dataset()
    for keyword, value in elements:
        _set(ds, keyword, value)
    return ds


def _residual_ok(search: Search, row: Mapping[str, Value], study: qido.Counts | None) -> bool:
    for cond in search.conditions:
        if not cond.residual:
            continue
        if cond.key.keyword == "ModalitiesInStudy":
            joined = "\\".join(study.modalities) if study else None
            if not value_matches(cond.key, cond.value, joined):
                return False
        elif not value_matches(cond.key, cond.value, row.get(cond.key.column or "")):
            return False
    return True


def _matches(conn: sqlite3.Connection, search: Search, origin: Origin | None) -> tuple[list[list[Element]], bool]:
    """The elements of each matching entity of the page, and whether more matched beyond ``limit``."""
    filters = [f for c in search.conditions for f in c.filters] + _scope_filters(search)
    residual = any(c.residual for c in search.conditions)
    limit = search.limit
    sql_limit = None if residual or limit is None else limit + 1
    rows = qido.search(conn, search.level, filters, origin, sql_limit, 0 if residual else search.offset)
    study_level_residual = any(c.residual and c.key.keyword == "ModalitiesInStudy" for c in search.conditions)
    picked: list[Mapping[str, Value]] = []
    skipped = 0
    truncated = False
    for row in rows:
        if residual:
            counts = qido.counts(conn, "study_uid", [str(row["st.study_uid"])], origin) \
                if study_level_residual else {}
            if not _residual_ok(search, row, counts.get(str(row["st.study_uid"]))):
                continue
            if skipped < search.offset:
                skipped += 1
                continue
        if limit is not None and len(picked) == limit:
            truncated = True
            break
        picked.append(row)
    studies = qido.counts(conn, "study_uid", sorted({str(r["st.study_uid"]) for r in picked}), origin)
    series = (qido.counts(conn, "series_uid", sorted({str(r["se.series_uid"]) for r in picked}), origin)
              if search.level != "STUDY" else {})
    keys = _return_keys(search)
    return [_elements(search, r, keys, studies.get(str(r["st.study_uid"])), series.get(str(r.get("se.series_uid"))))
            for r in picked], truncated


def run(conn: sqlite3.Connection, search: Search, origin: Origin | None = None) -> Page:
    """Answer ``search`` from the index; ``origin`` restricts it to received instances or to results.

    Without Python-side conditions, ``limit``/``offset`` go to SQL (one page read, aggregates for
    that page only); otherwise rows are checked one by one until the page is full.
    """
    found, truncated = _matches(conn, search, origin)
    return Page([_entity(elements) for elements in found], truncated)


def run_json(conn: sqlite3.Connection, search: Search, origin: Origin | None = None) -> JsonPage:
    """:func:`run` answered in the DICOM JSON model (PS3.18 F.2) directly, as QIDO-RS sends it.

    The same elements as :func:`run`'s datasets give through ``to_json_dict``, built without a
    :class:`~pydicom.dataset.Dataset`: a page of a thousand studies is some 14,000 elements, which
    pydicom's element construction and validation made the bulk of a search's time.
    """
    found, truncated = _matches(conn, search, origin)
    return JsonPage([dict(sorted((element_json(keyword, value) for keyword, value in elements), key=_first))
                     for elements in found], truncated)
