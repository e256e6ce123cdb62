"""Queries of ``sessions`` and ``session_instances``: retrieval sessions (:mod:`dicom_node.sources.sessions`).

A session's files live under ``<storage.root>/sessions/<id>/``, outside the spool; ``path`` is relative
to that folder. Writes run through the index writer; reads take a reader connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from dicom_node.index import nodes

#: Why a session still ``retrieving`` at start is failed.
INTERRUPTED = "the retrieval was interrupted by a restart of the node"


# -- writes ---------------------------------------------------------------------------------------------------


def fail_interrupted(conn: sqlite3.Connection, now: float, lease: float = 30.0) -> int:
    """Sessions left ``retrieving`` by a process that is gone fail; returns how many.

    On SQLite (at start) every one: the starting node owns the index. On PostgreSQL other nodes may be
    retrieving or receiving an upload right now: only the sessions of nodes whose heartbeat is older
    than ``lease`` (``assembly.node_lease``, :mod:`dicom_node.index.nodes`), or recorded without a node, fail.
    """
    if nodes.shared(conn):
        return conn.execute(
            """UPDATE sessions SET status = 'failed', reason = ?, updated_at = ? WHERE status = 'retrieving'
               AND (node_id IS NULL OR NOT EXISTS (
                   SELECT 1 FROM nodes n WHERE n.id = sessions.node_id AND n.last_seen >= ?))""",
            (INTERRUPTED, now, now - lease)).rowcount
    return conn.execute("UPDATE sessions SET status = 'failed', reason = ?, updated_at = ? WHERE status = 'retrieving'",
                        (INTERRUPTED, now)).rowcount


def held_by_live_node(conn: sqlite3.Connection, session_id: str, now: float, lease: float) -> bool:
    """Whether the session was opened by a node whose heartbeat is within ``lease`` (PostgreSQL only).

    A retrieval's plan lives in the memory of the node that queued it; another node that claims
    its work row must hand it back while that node lives. On SQLite one node owns the index: False.
    """
    if not nodes.shared(conn):
        return False
    return conn.execute(
        """SELECT 1 FROM sessions s JOIN nodes n ON n.id = s.node_id
           WHERE s.id = ? AND s.status = 'retrieving' AND n.last_seen >= ?""",
        (session_id, now - lease)).fetchone() is not None


def insert(conn: sqlite3.Connection, row: Mapping[str, object]) -> None:
    """Add a session (keys: id, kind, source, request, status, reason, created_at, updated_at, expires_at).

    On PostgreSQL the session records the node of this writer (see :mod:`dicom_node.index.nodes`).
    """
    if nodes.shared(conn):
        conn.execute(
            "INSERT INTO sessions(id, kind, source, request, status, reason, created_at, updated_at, expires_at,"
            " node_id) VALUES (:id, :kind, :source, :request, :status, :reason, :created_at, :updated_at,"
            " :expires_at, NULLIF(current_setting(:node_setting, true), ''))",
            {**row, "node_setting": nodes.NODE_SETTING})
        return
    conn.execute(
        "INSERT INTO sessions(id, kind, source, request, status, reason, created_at, updated_at, expires_at)"
        " VALUES (:id, :kind, :source, :request, :status, :reason, :created_at, :updated_at, :expires_at)", row)


def set_status(conn: sqlite3.Connection, session_id: str, status: str, reason: str | None, now: float) -> None:
    """Set a session's status and reason."""
    conn.execute("UPDATE sessions SET status = ?, reason = ?, updated_at = ? WHERE id = ?",
                 (status, reason, now, session_id))


def add_instance(conn: sqlite3.Connection, session_id: str, row: Mapping[str, object]) -> str | None:
    """Add (or replace) an instance row while the session exists.

    Returns
    -------
    str or None
        ``"stored"``, ``"replaced"`` (the session had it already), or None when the session is gone.
    """
    if conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone() is None:
        return None
    existed = conn.execute("SELECT 1 FROM session_instances WHERE session_id = ? AND sop_instance_uid = ?",
                           (session_id, row["sop_instance_uid"])).fetchone() is not None
    conn.execute(
        "INSERT OR REPLACE INTO session_instances(session_id, sop_instance_uid, sop_class_uid, series_instance_uid,"
        " study_instance_uid, transfer_syntax_uid, modality, instance_number, path, size)"
        " VALUES (:session_id, :sop_instance_uid, :sop_class_uid, :series_instance_uid, :study_instance_uid,"
        " :transfer_syntax_uid, :modality, :instance_number, :path, :size)", {"session_id": session_id, **row})
    return "replaced" if existed else "stored"


def delete(conn: sqlite3.Connection, ids: Sequence[str]) -> int:
    """Remove sessions and their instance rows; returns how many sessions existed."""
    marks = ",".join("?" * len(ids))
    conn.execute(f"DELETE FROM session_instances WHERE session_id IN ({marks})", list(ids))
    return int(conn.execute(f"DELETE FROM sessions WHERE id IN ({marks})", list(ids)).rowcount)


# -- reads ----------------------------------------------------------------------------------------------------


def get(conn: sqlite3.Connection, session_id: str) -> dict[str, Any] | None:
    """The session row (every column), or None."""
    row = conn.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
    return None if row is None else dict(row)


def series(conn: sqlite3.Connection, session_id: str) -> list[dict[str, Any]]:
    """The series of a session: study and series UID, modality and instance count, in UID order."""
    rows = conn.execute(
        "SELECT study_instance_uid, series_instance_uid, MAX(modality) AS modality, COUNT(*) AS instances"
        " FROM session_instances WHERE session_id = ? GROUP BY study_instance_uid, series_instance_uid"
        " ORDER BY study_instance_uid, series_instance_uid", (session_id,)).fetchall()
    return [{"study_instance_uid": r[0], "series_instance_uid": r[1], "modality": r[2], "instances": int(r[3])}
            for r in rows]


def series_paths(conn: sqlite3.Connection, session_id: str, series_uid: str) -> list[str]:
    """Folder-relative paths of one series of a session, in instance order."""
    rows = conn.execute("SELECT path FROM session_instances WHERE session_id = ? AND series_instance_uid = ?"
                        " ORDER BY instance_number, sop_instance_uid", (session_id, series_uid)).fetchall()
    return [str(r[0]) for r in rows]


def expired(conn: sqlite3.Connection, now: float) -> list[str]:
    """Ids of sessions expired at ``now``."""
    return [str(r[0]) for r in conn.execute("SELECT id FROM sessions WHERE expires_at <= ?", (now,))]


def next_expiry(conn: sqlite3.Connection) -> float | None:
    """When the next session expires, or None when there is none."""
    row = conn.execute("SELECT MIN(expires_at) FROM sessions").fetchone()
    return None if row is None or row[0] is None else float(row[0])


def ids(conn: sqlite3.Connection) -> set[str]:
    """Every session id."""
    return {str(r[0]) for r in conn.execute("SELECT id FROM sessions")}
