"""The search index of QIDO-RS and C-FIND: tables ``qido_studies``, ``qido_series``, ``qido_instances``.

Written in the transaction that indexes an instance (:func:`record`, called by the ingestor and
by the job pipeline for its results) and read by :mod:`dicom_node.archive.query`, which turns a
query into the :class:`Filter` list this module puts into SQL. The column tables below are the
one list of what is indexed; :mod:`dicom_node.archive.keys` gives each its DICOM keyword and VR.
Patient attributes live here on purpose (search needs them) and never reach a log line.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Level = Literal["STUDY", "SERIES", "INSTANCE"]
#: Indexed value types: text, integer, or absent.
Value = str | int | None

#: Columns per table (the table alias used in queries, the column names).
STUDY_COLUMNS = ("study_uid", "patient_name", "patient_id", "patient_birth_date", "patient_sex", "study_date",
                 "study_time", "accession_number", "study_id", "study_description", "referring_physician_name",
                 "timezone_offset")
SERIES_COLUMNS = ("series_uid", "study_uid", "modality", "series_number", "series_description",
                  "performed_start_date", "performed_start_time")
INSTANCE_COLUMNS = ("sop_uid", "series_uid", "study_uid", "sop_class_uid", "instance_number", "rows", "columns",
                    "bits_allocated", "number_of_frames")
_ALIASES = {"st": STUDY_COLUMNS, "se": SERIES_COLUMNS, "i": INSTANCE_COLUMNS}
_FROM: dict[Level, str] = {
    "STUDY": "qido_studies st",
    "SERIES": "qido_series se JOIN qido_studies st ON st.study_uid = se.study_uid",
    "INSTANCE": ("qido_instances i JOIN qido_series se ON se.series_uid = i.series_uid "
                 "JOIN qido_studies st ON st.study_uid = i.study_uid"),
}
_ORDER: dict[Level, str] = {
    # Newest first, in the order of the qido_studies_date index read backwards (rowid breaks ties), so a
    # page of 10,000 studies is read off the index without sorting them.
    "STUDY": "st.study_date DESC, st.study_time DESC, st.rowid DESC",
    "SERIES": "se.study_uid, se.series_number, se.series_uid",
    "INSTANCE": "i.series_uid, i.instance_number, i.sop_uid",
}
Origin = Literal["received", "result"]


@dataclass(frozen=True)
class QidoRecord:
    """The indexed attributes of one instance, by table; values as :data:`Value`."""

    study: Mapping[str, Value]
    series: Mapping[str, Value]
    instance: Mapping[str, Value]
    origin: Origin


@dataclass(frozen=True)
class Filter:
    """One SQL-side condition: ``column`` is ``alias.name`` from the tables above.

    ``op``: ``eq`` (one value), ``in`` (a list), ``like`` (SQL pattern with ``\\`` escape), ``ge``/``le``
    (range bound), ``modality`` (a study with a series of one of the values).
    """

    column: str
    op: Literal["eq", "in", "like", "ge", "le", "modality"]
    values: tuple[str, ...]


def _check_column(column: str) -> str:
    alias, _, name = column.partition(".")
    if name not in _ALIASES.get(alias, ()):
        raise ValueError(f"not an indexed column: {column}")
    return column


def _where(filters: Sequence[Filter], origin: Origin | None = None) -> tuple[list[str], list[str]]:
    clauses: list[str] = []
    params: list[str] = []
    for f in filters:
        column = _check_column(f.column)
        if f.op == "eq":
            clauses.append(f"{column} = ?")
        elif f.op == "in":
            clauses.append(f"{column} IN ({', '.join('?' * len(f.values))})")
        elif f.op == "like":
            clauses.append(f"{column} LIKE ? ESCAPE '\\'")
        elif f.op == "ge":
            clauses.append(f"{column} >= ?")
        elif f.op == "le":
            clauses.append(f"{column} <= ?")
        else:  # modality: ModalitiesInStudy is matched on the study's series (uses qido_series_modality)
            of_origin = ("" if origin is None else " AND EXISTS (SELECT 1 FROM qido_instances mo "
                         "WHERE mo.series_uid = m.series_uid AND mo.origin = ?)")
            clauses.append(f"EXISTS (SELECT 1 FROM qido_series m WHERE m.study_uid = st.study_uid AND m.modality "
                           f"IN ({', '.join('?' * len(f.values))}){of_origin})")
            if origin is not None:
                params.extend(f.values)
                params.append(origin)
                continue
        params.extend(f.values)
    return clauses, params


def record(conn: sqlite3.Connection, rec: QidoRecord, now: float) -> None:
    """Index one instance's attributes (study and series rows keep a value a later instance lacks)."""
    for table, key, values in (("qido_studies", "study_uid", rec.study), ("qido_series", "series_uid", rec.series)):
        cols = list(values)
        # The target qualified: PostgreSQL finds a bare column ambiguous between the row and ``excluded``.
        updates = ", ".join(f"{c} = COALESCE(excluded.{c}, {table}.{c})" for c in cols if c != key)
        conn.execute(
            f"INSERT INTO {table}({', '.join(cols)}, updated_at) VALUES ({', '.join('?' * len(cols))}, ?) "
            f"ON CONFLICT({key}) DO UPDATE SET {updates}, updated_at = excluded.updated_at",
            (*values.values(), now))
    cols = list(rec.instance)
    conn.execute(
        f"INSERT OR REPLACE INTO qido_instances({', '.join(cols)}, origin, updated_at) "
        f"VALUES ({', '.join('?' * len(cols))}, ?, ?)", (*rec.instance.values(), rec.origin, now))


def search(conn: sqlite3.Connection, level: Level, filters: Sequence[Filter], origin: Origin | None = None,
           limit: int | None = None, offset: int = 0) -> Iterator[dict[str, Value]]:
    """Rows of ``level`` matching every filter, in a stable order; keys are ``alias.column``.

    ``origin`` keeps only entities holding an instance of that origin (C-FIND answers results only).
    """
    clauses, params = _where(filters, origin)
    if origin is not None:
        owner = {"STUDY": "st.study_uid", "SERIES": "se.series_uid", "INSTANCE": "i.sop_uid"}[level]
        column = {"STUDY": "study_uid", "SERIES": "series_uid", "INSTANCE": "sop_uid"}[level]
        clauses.append(f"EXISTS (SELECT 1 FROM qido_instances o WHERE o.{column} = {owner} AND o.origin = ?)")
        params.append(origin)
    aliases = {"STUDY": ("st",), "SERIES": ("st", "se"), "INSTANCE": ("st", "se", "i")}[level]
    select = ", ".join(f"{a}.{c}" for a in aliases for c in _ALIASES[a])
    sql = (f"SELECT {select} FROM {_FROM[level]}" + (" WHERE " + " AND ".join(clauses) if clauses else "")
           + f" ORDER BY {_ORDER[level]}")
    if limit is not None:
        sql += " LIMIT ? OFFSET ?"
        params.extend((str(limit), str(offset)))
    names = [f"{a}.{c}" for a in aliases for c in _ALIASES[a]]
    for row in conn.execute(sql, params):
        yield dict(zip(names, tuple(row), strict=True))


def plan(conn: sqlite3.Connection, level: Level, filters: Sequence[Filter]) -> list[str]:
    """``EXPLAIN QUERY PLAN`` of :func:`search` (tests assert an index is used)."""
    clauses, params = _where(filters)
    sql = (f"EXPLAIN QUERY PLAN SELECT * FROM {_FROM[level]}"
           + (" WHERE " + " AND ".join(clauses) if clauses else "") + f" ORDER BY {_ORDER[level]}")
    return [str(row[-1]) for row in conn.execute(sql, params)]


@dataclass(frozen=True)
class Counts:
    """Aggregates of one study or series: modalities, SOP classes, related series and instances."""

    modalities: tuple[str, ...]
    sop_classes: tuple[str, ...]
    series: int
    instances: int


def counts(conn: sqlite3.Connection, column: Literal["study_uid", "series_uid"], uids: Sequence[str],
           origin: Origin | None = None) -> dict[str, Counts]:
    """Aggregates per study (``study_uid``) or series (``series_uid``) of ``uids`` (one query for a page)."""
    if not uids:
        return {}
    marks = ", ".join("?" * len(uids))
    extra, params = ("AND i.origin = ?", [*uids, origin]) if origin is not None else ("", list(uids))
    out: dict[str, Counts] = {}
    rows = conn.execute(
        f"SELECT i.{column}, group_concat(DISTINCT se.modality), group_concat(DISTINCT i.sop_class_uid), "
        f"COUNT(DISTINCT i.series_uid), COUNT(*) FROM qido_instances i "
        f"LEFT JOIN qido_series se ON se.series_uid = i.series_uid "
        f"WHERE i.{column} IN ({marks}) {extra} GROUP BY i.{column}", params)
    for uid, modalities, classes, n_series, n_instances in rows:
        out[str(uid)] = Counts(tuple(sorted(str(modalities or "").split(",") if modalities else ())),
                               tuple(sorted(str(classes or "").split(",") if classes else ())),
                               int(n_series), int(n_instances))
    return out


def missing(conn: sqlite3.Connection, limit: int) -> list[tuple[str, str, Origin]]:
    """Stored instances and results not yet in ``qido_instances``: (SOP Instance UID, path, origin)."""
    rows = conn.execute(
        "SELECT sop_instance_uid, path, 'received' FROM instances n WHERE NOT EXISTS "
        "(SELECT 1 FROM qido_instances q WHERE q.sop_uid = n.sop_instance_uid) "
        "UNION ALL SELECT sop_instance_uid, path, 'result' FROM results r WHERE NOT EXISTS "
        "(SELECT 1 FROM qido_instances q WHERE q.sop_uid = r.sop_instance_uid) LIMIT ?", (limit,))
    return [(str(uid), str(path), "result" if origin == "result" else "received") for uid, path, origin in rows]
