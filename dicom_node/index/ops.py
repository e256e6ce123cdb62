"""Write operations on the index, each run by :class:`~dicom_node.index.writer.IndexWriter`.

Each function takes the writer's connection (inside its transaction) and returns
a plain value. Assembly rules (PS3.4 has none for "study complete"; these follow
what PACS routers do): a series completes once no association that delivered
to it is still open, the last one ended with a release, and the quiet period
has passed since its last instance. A series whose last association was aborted
waits ``abort_grace`` instead, so a PACS that retries the send is not raced.

Several nodes may share one PostgreSQL database (issue 18): the instances of one series then arrive
at different nodes, and every node's assembler runs :func:`complete_due`. Completion is decided once
for the cluster: each series' state change is conditional (``WHERE ... state = 'receiving'`` and
still due, acted on by its rowcount), and the decisions are serialised by the advisory lock of
:func:`dicom_node.index.nodes.lock_assembly`, so that under READ COMMITTED (PostgreSQL's default,
which the writer keeps: each statement sees what committed before it began) the node completing the
last series of a study sees every other series' completion, committed before it got the lock, and
emits the one ``study_complete``. Recovery aborts only the associations of dead nodes
(:mod:`dicom_node.index.nodes`).
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict

from dicom_node.index import nodes
from dicom_node.index.store import InstanceRecord

STORED, DUPLICATE, REPLACED = "stored", "duplicate", "replaced"


def begin_association(
    conn: sqlite3.Connection, assoc_id: str, calling_ae: str, called_ae: str, peer_host: str, now: float
) -> None:
    """Record a newly accepted association (on PostgreSQL with the id of the node whose writer records it)."""
    if nodes.shared(conn):
        # The node id this writer's session was tied to by nodes.register (NULL for a writer without one).
        conn.execute(
            "INSERT INTO associations(id, calling_ae, called_ae, peer_host, started_at, state, node_id) "
            "VALUES (?,?,?,?,?, 'active', NULLIF(current_setting(?, true), ''))",
            (assoc_id, calling_ae, called_ae, peer_host, now, nodes.NODE_SETTING),
        )
        return
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
        # An association already ended (another node counted its node dead and aborted it) will never
        # release this hold: only a known, ended association is left uncounted.
        conn.execute(
            """UPDATE series SET open_associations = open_associations + 1 WHERE series_instance_uid = ?
               AND NOT EXISTS (SELECT 1 FROM associations WHERE id = ? AND state != 'active')""",
            (rec.series_instance_uid, rec.association_id),
        )


def recover(conn: sqlite3.Connection, now: float, lease: float = 30.0) -> int:
    """At a node's start: count the associations that died with their process as aborted.

    On SQLite the starting node owns the index, so every association still 'active' died with the
    previous process. On PostgreSQL other nodes may be running: only the associations of nodes whose
    heartbeat is older than ``lease`` (``assembly.node_lease``), and those recorded without a node id,
    are dead. The rows of dead nodes are then removed (on SQLite every other node's).

    Returns
    -------
    int
        Number of associations marked aborted.
    """
    if nodes.shared(conn):
        dead = nodes.dead_associations(conn, now, lease, unowned=True)
    else:
        dead = [r[0] for r in conn.execute("SELECT id FROM associations WHERE state = 'active'")]
    for assoc_id in dead:
        end_association(conn, assoc_id, "aborted", now)
    # The rows of dead nodes go (on SQLite every earlier process is dead), so the table stays small.
    nodes.prune(conn, now, lease if nodes.shared(conn) else 0.0)
    return len(dead)


def abort_dead(conn: sqlite3.Connection, now: float, lease: float) -> int:
    """While running (an assembler poll): abort the open associations of nodes dead for ``lease``.

    A node that died and never comes back thus stops holding its series open once its lease
    expires (they then complete after ``abort_grace``, as any aborted send). Only on PostgreSQL, under
    the assembly lock (False: another node is deciding now); associations without a node id are left
    to a starting node's :func:`recover`, as they always were. Returns how many were aborted.
    """
    if not nodes.shared(conn) or not nodes.lock_assembly(conn):
        return 0
    dead = nodes.dead_associations(conn, now, lease, unowned=False)
    for assoc_id in dead:
        end_association(conn, assoc_id, "aborted", now)
    return len(dead)


def complete_due(conn: sqlite3.Connection, now: float, quiet_period: float, abort_grace: float) -> list[dict[str, object]]:
    """Complete every series whose wait is over and emit completion events.

    On PostgreSQL nothing is done (``[]``) while another node holds the assembly lock: it is
    deciding the same series now, and this node's next poll looks again. Each series' change is
    conditional on it still being due, so an instance or association committed by another node
    between the look-up and the change keeps the series open (an event is emitted only for a
    change that took effect). Series are changed in key order, as every node does, so two nodes'
    row locks are taken in one order.

    Returns
    -------
    list of dict
        The events inserted (kind, study/series UID, instance count).
    """
    if not nodes.lock_assembly(conn):
        return []
    due_where = """state = 'receiving' AND open_associations = 0 AND (
                 (last_end = 'released' AND last_received_at <= ?) OR
                 (last_end = 'aborted' AND last_received_at <= ?))"""
    waits = (now - quiet_period, now - abort_grace)
    due = conn.execute(
        f"""SELECT series_instance_uid, study_instance_uid, instance_count FROM series
           WHERE {due_where} ORDER BY series_instance_uid""",
        waits,
    ).fetchall()
    events: list[dict[str, object]] = []
    studies: set[str] = set()
    for row in due:
        changed = conn.execute(
            f"""UPDATE series SET state = 'complete', completed_at = ?, completions = completions + 1
               WHERE series_instance_uid = ? AND {due_where}""",
            (now, row["series_instance_uid"], *waits),
        ).rowcount
        if not changed:
            continue
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
