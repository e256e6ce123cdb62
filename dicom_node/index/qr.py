"""Matching queries of the Query/Retrieve SCP (:mod:`dicom_node.scp.qr`): the result objects it serves.

C-GET and C-MOVE select the files they send here, by unique keys and single-valued Modality / SOP
Class UID; C-FIND matches on the search index (:mod:`dicom_node.index.qido`, :mod:`dicom_node.archive`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ResultMatch:
    """A result object matching a query; ``path`` is relative to ``storage.root`` as stored."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    kind: str
    path: str


def match_results(
    conn: sqlite3.Connection,
    *,
    study_uids: Sequence[str] = (),
    series_uids: Sequence[str] = (),
    sop_uids: Sequence[str] = (),
    kind: str | None = None,
    sop_class_uid: str | None = None,
) -> list[ResultMatch]:
    """Result objects whose UIDs are among the given ones (an empty list matches any) and whose
    ``kind`` (the Modality, SEG or SR) and SOP Class UID equal the given ones (None matches any).

    Ordered by study, series, creation time and SOP Instance UID.
    """
    clauses: list[str] = []
    params: list[str] = []
    for column, values in (("study_instance_uid", study_uids), ("series_instance_uid", series_uids),
                           ("sop_instance_uid", sop_uids)):
        if values:
            clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
            params.extend(values)
    for column, value in (("kind", kind), ("sop_class_uid", sop_class_uid)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    sql = ("SELECT sop_instance_uid, sop_class_uid, series_instance_uid, study_instance_uid, kind, path FROM results"
           + (" WHERE " + " AND ".join(clauses) if clauses else "")
           + " ORDER BY study_instance_uid, series_instance_uid, created_at, sop_instance_uid")
    return [ResultMatch(*(str(v) for v in row)) for row in conn.execute(sql, params)]
