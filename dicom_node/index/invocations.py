"""Queries of the ``invocations`` table: REST model runs on one upload and their webhooks.

Used by :mod:`dicom_node.invocations` (writes through the index writer) and,
through :mod:`dicom_node.index.jobs`, by the jobs views. Rows are plain dicts keyed by :data:`COLUMNS`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

#: Every column of the table, in schema order.
COLUMNS = ("id", "examination_id", "model", "parameters", "webhook_url", "filename", "state", "result", "error",
           "created_at", "updated_at", "webhook_state", "webhook_attempts", "next_webhook_at", "webhook_error",
           "input_url", "output_url")


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
