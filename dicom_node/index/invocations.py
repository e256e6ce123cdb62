"""Queries of the ``invocations`` table: REST model runs on one upload and their webhooks.

Used by :class:`dicom_node.api.webhooks.InvocationService` (writes through the index writer) and,
through :mod:`dicom_node.index.jobs`, by the jobs views. Rows are plain dicts keyed by :data:`COLUMNS`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

#: Every column of the table, in schema order.
COLUMNS = ("id", "examination_id", "model", "parameters", "webhook_url", "filename", "state", "result", "error",
           "created_at", "updated_at", "webhook_state", "webhook_attempts", "next_webhook_at", "webhook_error")


def _checked(names: Mapping[str, object]) -> list[str]:
    # Column names become SQL text: only known ones are allowed.
    unknown = set(names) - set(COLUMNS)
    if unknown:
        raise KeyError(f"not a column of invocations: {sorted(unknown)}")
    return list(names)


def get(conn: sqlite3.Connection, request_uuid: str) -> dict[str, Any] | None:
    """The row of one invocation, or None."""
    found = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM invocations WHERE id = ?", (request_uuid,)).fetchone()
    return dict(zip(COLUMNS, found, strict=False)) if found else None


def insert(conn: sqlite3.Connection, values: Mapping[str, object]) -> None:
    """Add a new invocation row (a write)."""
    keys = _checked(values)
    conn.execute(f"INSERT INTO invocations ({', '.join(keys)}) VALUES ({', '.join('?' for _ in keys)})",
                 [values[k] for k in keys])


def update(conn: sqlite3.Connection, request_uuid: str, values: Mapping[str, object]) -> None:
    """Set columns of one invocation (a write)."""
    keys = _checked(values)
    conn.execute(f"UPDATE invocations SET {', '.join(f'{k} = ?' for k in keys)} WHERE id = ?",
                 [*(values[k] for k in keys), request_uuid])


def requeue_running(conn: sqlite3.Connection, now: float) -> int:
    """At start: invocations left ``running`` by a previous process are queued again; returns how many."""
    return conn.execute("UPDATE invocations SET state = 'queued', updated_at = ? WHERE state = 'running'",
                        (now,)).rowcount


def claim_next(conn: sqlite3.Connection, now: float) -> dict[str, Any] | None:
    """Take the oldest queued invocation (now ``running``), or None (a write)."""
    found = conn.execute("SELECT id FROM invocations WHERE state = 'queued' ORDER BY created_at LIMIT 1").fetchone()
    if found is None:
        return None
    conn.execute("UPDATE invocations SET state = 'running', updated_at = ? WHERE id = ?", (now, found[0]))
    return get(conn, found[0])


def due_webhooks(conn: sqlite3.Connection, now: float, limit: int = 16) -> list[dict[str, Any]]:
    """Invocations whose webhook is pending and due at ``now``, soonest first."""
    ids = [r[0] for r in conn.execute(
        "SELECT id FROM invocations WHERE webhook_state = 'pending' AND next_webhook_at <= ? "
        "ORDER BY next_webhook_at LIMIT ?", (now, limit))]
    return [r for r in (get(conn, i) for i in ids) if r is not None]
