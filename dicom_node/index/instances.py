"""Read queries of ``instances``, ``series`` and ``associations`` (the writes are :mod:`dicom_node.index.ops`).

Shared by routing and the pipeline (a series' files and facts), delivery (who sent a series),
DICOMweb (WADO-RS and STOW-RS) and the C-MOVE retrieval of a DIMSE source. Paths are as stored:
spool-relative for instances, ``storage.root``-relative for results.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

#: Most host parameters per ``IN (...)`` list: SQLite's default limit is 999 on old builds.
_PARAMS = 500


@dataclass(frozen=True)
class SeriesFactsRow:
    """Index columns of one series and one of its instances, for routing."""

    modality: str | None
    instance_count: int
    calling_ae: str
    called_ae: str
    sop_class_uid: str
    path: str
    source: str | None


@dataclass(frozen=True)
class Sender:
    """Who delivered the newest instance of a series: its calling AE and (for DIMSE) the peer host."""

    calling_ae: str
    peer_host: str | None


def series_paths(conn: sqlite3.Connection, series_uid: str) -> list[str]:
    """Spool-relative paths of every indexed instance of a series, in instance order."""
    rows = conn.execute(
        "SELECT path FROM instances WHERE series_instance_uid = ? ORDER BY instance_number, sop_instance_uid",
        (series_uid,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def series_facts(conn: sqlite3.Connection, series_uid: str) -> SeriesFactsRow | None:
    """The series row joined with one of its instances, or None when the series is unknown."""
    row = conn.execute(
        """SELECT s.modality, s.instance_count, i.calling_ae, i.called_ae, i.sop_class_uid, i.path, i.source
           FROM series s JOIN instances i ON i.series_instance_uid = s.series_instance_uid
           WHERE s.series_instance_uid = ? LIMIT 1""",
        (series_uid,),
    ).fetchone()
    if row is None:
        return None
    return SeriesFactsRow(modality=row[0], instance_count=int(row[1]), calling_ae=row[2], called_ae=row[3],
                          sop_class_uid=row[4], path=row[5], source=row[6])


def series_sender(conn: sqlite3.Connection, series_uid: str) -> Sender | None:
    """The sender of the newest instance of a series, or None when the series has none."""
    row = conn.execute(
        """SELECT i.calling_ae, a.peer_host FROM instances i LEFT JOIN associations a ON a.id = i.association_id
           WHERE i.series_instance_uid = ? ORDER BY i.received_at DESC LIMIT 1""",
        (series_uid,),
    ).fetchone()
    return None if row is None else Sender(str(row[0]), row[1])


def location_of(conn: sqlite3.Connection, sop_uid: str) -> tuple[str, str] | None:
    """The (Study, Series) Instance UIDs of an indexed instance, or None."""
    row = conn.execute("SELECT study_instance_uid, series_instance_uid FROM instances WHERE sop_instance_uid = ?",
                       (sop_uid,)).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


def paths_of(conn: sqlite3.Connection, uids: Sequence[str]) -> dict[str, str]:
    """SOP Instance UID -> spool-relative path, for those of ``uids`` the index holds."""
    found: dict[str, str] = {}
    for i in range(0, len(uids), _PARAMS):
        batch = list(uids[i:i + _PARAMS])
        marks = ",".join("?" * len(batch))
        for row in conn.execute(f"SELECT sop_instance_uid, path FROM instances WHERE sop_instance_uid IN ({marks})",
                                batch):
            found[str(row[0])] = str(row[1])
    return found


def relabel_source(conn: sqlite3.Connection, uids: Sequence[str], label: str) -> None:
    """Give instances recorded as pushed (source ``dimse``) the label of the remote they were moved from.

    A write: run it through the index writer.
    """
    for i in range(0, len(uids), _PARAMS):
        batch = list(uids[i:i + _PARAMS])
        conn.execute(f"UPDATE instances SET source = ? WHERE source = 'dimse' AND sop_instance_uid IN "
                     f"({','.join('?' * len(batch))})", [label, *batch])


@dataclass(frozen=True)
class StoredInstance:
    """One instance WADO-RS can serve: where it is and what it is.

    Attributes
    ----------
    origin : str
        ``"result"`` (path relative to ``storage.root``) or ``"received"`` (spool-relative path).
    """

    origin: str
    path: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str


def stored_instances(conn: sqlite3.Connection, study: str, series: str | None = None,
                     sop: str | None = None) -> list[StoredInstance]:
    """The node's results and received instances of a study, optionally one series or one instance of it.

    Received instances come in instance-number order, then results in creation order.
    """
    where, args = "study_instance_uid = ?", [study]
    if series is not None:
        where, args = where + " AND series_instance_uid = ?", [*args, series]
    if sop is not None:
        where, args = where + " AND sop_instance_uid = ?", [*args, sop]
    # instances has no index on the study: a study's instances are found through its series (series_study,
    # then instances_series), not by scanning every instance the node holds.
    received, received_args = where, args
    if series is None and sop is None:
        received = "series_instance_uid IN (SELECT series_instance_uid FROM series WHERE study_instance_uid = ?) AND " + where
        received_args = [study, *args]
    cols = "path, study_instance_uid, series_instance_uid, sop_instance_uid, sop_class_uid"
    found = [StoredInstance("received", *map(str, r)) for r in conn.execute(
        f"SELECT {cols} FROM instances WHERE {received} ORDER BY series_instance_uid, instance_number, sop_instance_uid",
        received_args)]
    found += [StoredInstance("result", *map(str, r)) for r in conn.execute(
        f"SELECT {cols} FROM results WHERE {where} ORDER BY created_at", args)]
    return found
