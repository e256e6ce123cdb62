"""Write operations on the index, each run by :class:`~dicom_node.index.writer.IndexWriter`.

Each function takes the writer's connection (inside its transaction) and returns
a plain value. Assembly rules (PS3.4 has none for "study complete"; these follow
what PACS routers do): a series completes once no association that delivered
to it is still open, the last one ended with a release, and the quiet period
has passed since its last instance. A series whose last association was aborted
waits ``abort_grace`` instead, so a PACS that retries the send is not raced.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict

from dicom_node.index.store import InstanceRecord

STORED, DUPLICATE, REPLACED = "stored", "duplicate", "replaced"


def begin_association(
    conn: sqlite3.Connection, assoc_id: str, calling_ae: str, called_ae: str, peer_host: str, now: float
) -> None:
    """Record a newly accepted association."""
    conn.execute(
        "INSERT INTO associations(id, calling_ae, called_ae, peer_host, started_at, state) VALUES (?,?,?,?,?, 'active')",
        (assoc_id, calling_ae, called_ae, peer_host, now),
    )


def end_association(conn: sqlite3.Connection, assoc_id: str, state: str, now: float, instances: int = 0) -> int:
    """Mark an association released or aborted and release its hold on its series.

    Returns
    -------
    int
        Number of series the association had delivered to.
    """
    cur = conn.execute(
        "UPDATE associations SET state = ?, ended_at = ?, instances = ? WHERE id = ? AND state = 'active'",
        (state, now, instances, assoc_id),
    )
    if cur.rowcount == 0:
        return 0
    cur = conn.execute(
        """UPDATE series SET open_associations = MAX(open_associations - 1, 0), last_end = ?
           WHERE series_instance_uid IN (SELECT series_instance_uid FROM series_associations WHERE association_id = ?)""",
        (state, assoc_id),
    )
    return cur.rowcount


def store_instance(conn: sqlite3.Connection, rec: InstanceRecord, replace: bool) -> str:
    """Index one stored instance and update its series.

    Returns
    -------
    str
        ``"stored"``, ``"replaced"`` (policy replace, already present) or
        ``"duplicate"`` (policy keep_first, already present; nothing changes).
    """
    values = asdict(rec)
    cols = ", ".join(values)
    marks = ", ".join(f":{k}" for k in values)
    if replace:
        existed = conn.execute(
            "SELECT 1 FROM instances WHERE sop_instance_uid = ?", (rec.sop_instance_uid,)
        ).fetchone()
        conn.execute(f"INSERT OR REPLACE INTO instances({cols}) VALUES ({marks})", values)
        outcome = REPLACED if existed else STORED
    else:
        cur = conn.execute(f"INSERT OR IGNORE INTO instances({cols}) VALUES ({marks})", values)
        if cur.rowcount == 0:
            touch_duplicate(conn, rec)
            return DUPLICATE
        outcome = STORED
    added = 1 if outcome == STORED else 0
    conn.execute(
        """INSERT INTO series(series_instance_uid, study_instance_uid, modality, calling_ae, instance_count,
                              first_received_at, last_received_at, state)
           VALUES (?, ?, ?, ?, ?, ?, ?, 'receiving')
           ON CONFLICT(series_instance_uid) DO UPDATE SET
               instance_count = series.instance_count + excluded.instance_count,
               last_received_at = MAX(series.last_received_at, excluded.last_received_at),
               state = 'receiving'""",
        (rec.series_instance_uid, rec.study_instance_uid, rec.modality, rec.calling_ae, added,
         rec.received_at, rec.received_at),
    )
    _link(conn, rec)
    return outcome


def touch_duplicate(conn: sqlite3.Connection, rec: InstanceRecord) -> None:
    """A kept-first duplicate arrived: nothing is stored or counted, but a series still
    being received now also waits for this association (a PACS retrying an aborted
    send completes the series by releasing the retry)."""
    cur = conn.execute(
        "UPDATE series SET last_received_at = MAX(last_received_at, ?) WHERE series_instance_uid = ? AND state = 'receiving'",
        (rec.received_at, rec.series_instance_uid),
    )
    if cur.rowcount:
        _link(conn, rec)


def _link(conn: sqlite3.Connection, rec: InstanceRecord) -> None:
    link = conn.execute(
        "INSERT OR IGNORE INTO series_associations(series_instance_uid, association_id) VALUES (?, ?)",
        (rec.series_instance_uid, rec.association_id),
    )
    if link.rowcount:
        conn.execute(
            "UPDATE series SET open_associations = open_associations + 1 WHERE series_instance_uid = ?",
            (rec.series_instance_uid,),
        )


def recover(conn: sqlite3.Connection, now: float) -> int:
    """After a crash: associations still 'active' died with the process; count them as aborted.

    Returns
    -------
    int
        Number of associations marked aborted.
    """
    dead = [r[0] for r in conn.execute("SELECT id FROM associations WHERE state = 'active'")]
    for assoc_id in dead:
        end_association(conn, assoc_id, "aborted", now)
    return len(dead)


def complete_due(conn: sqlite3.Connection, now: float, quiet_period: float, abort_grace: float) -> list[dict[str, object]]:
    """Complete every series whose wait is over and emit completion events.

    Returns
    -------
    list of dict
        The events inserted (kind, study/series UID, instance count).
    """
    due = conn.execute(
        """SELECT series_instance_uid, study_instance_uid, instance_count FROM series
           WHERE state = 'receiving' AND open_associations = 0 AND (
                 (last_end = 'released' AND last_received_at <= ?) OR
                 (last_end = 'aborted' AND last_received_at <= ?))""",
        (now - quiet_period, now - abort_grace),
    ).fetchall()
    events: list[dict[str, object]] = []
    studies: set[str] = set()
    for row in due:
        conn.execute(
            """UPDATE series SET state = 'complete', completed_at = ?, completions = completions + 1
               WHERE series_instance_uid = ?""",
            (now, row["series_instance_uid"]),
        )
        events.append(_event(conn, "series_complete", row["study_instance_uid"], row["series_instance_uid"],
                             row["instance_count"], now))
        studies.add(row["study_instance_uid"])
    for study in sorted(studies):
        open_left, total = conn.execute(
            """SELECT SUM(CASE WHEN state = 'receiving' THEN 1 ELSE 0 END), SUM(instance_count) FROM series WHERE study_instance_uid = ?""",
            (study,),
        ).fetchone()
        if not open_left:
            events.append(_event(conn, "study_complete", study, None, int(total or 0), now))
    return events


def _event(
    conn: sqlite3.Connection, kind: str, study: str, series: str | None, count: int, now: float
) -> dict[str, object]:
    conn.execute(
        """INSERT INTO events(kind, study_instance_uid, series_instance_uid, instance_count, created_at)
           VALUES (?, ?, ?, ?, ?)""",
        (kind, study, series, count, now),
    )
    return {"kind": kind, "study_instance_uid": study, "series_instance_uid": series, "instance_count": count}
