"""Counts for ``GET /metrics`` (:mod:`dicom_node.api.metrics`): one aggregate query each, on a reader connection."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class SourceCounters:
    """One poller's state row, as the metrics show it."""

    source: str
    state: str
    polls: int
    retrieved: int
    failures: int


def _by(conn: sqlite3.Connection, sql: str) -> dict[str, int]:
    return {str(key): int(n) for key, n in conn.execute(sql).fetchall()}


def jobs_by_state(conn: sqlite3.Connection) -> dict[str, int]:
    """Series jobs per state (states without jobs are absent)."""
    return _by(conn, "SELECT state, COUNT(*) FROM jobs GROUP BY state")


def series_by_state(conn: sqlite3.Connection) -> dict[str, int]:
    """Series per assembly state."""
    return _by(conn, "SELECT state, COUNT(*) FROM series GROUP BY state")


def deliveries_by_state(conn: sqlite3.Connection) -> dict[str, int]:
    """Ledger rows per state (pending, sent, dead)."""
    return _by(conn, "SELECT state, COUNT(*) FROM deliveries GROUP BY state")


def delivery_retries(conn: sqlite3.Connection) -> int:
    """Delivery attempts beyond the first, over every ledger row."""
    # Two-argument MAX is SQLite's scalar maximum (PostgreSQL: GREATEST).
    return int(conn.execute("SELECT COALESCE(SUM(MAX(attempts - 1, 0)), 0) FROM deliveries").fetchone()[0])


def job_retries(conn: sqlite3.Connection) -> int:
    """Job attempts beyond the first, over every series job."""
    return int(conn.execute("SELECT COALESCE(SUM(MAX(attempts - 1, 0)), 0) FROM jobs").fetchone()[0])


def recent_stage_times(conn: sqlite3.Connection, limit: int) -> list[str]:
    """The ``stage_times`` JSON texts of the ``limit`` most recently updated jobs that have any."""
    rows = conn.execute("SELECT stage_times FROM jobs WHERE stage_times != '{}' ORDER BY updated_at DESC LIMIT ?",
                        (limit,)).fetchall()
    return [str(r[0]) for r in rows]


def webhook_failures(conn: sqlite3.Connection) -> int:
    """Invocation webhooks that finally failed or were refused."""
    return int(conn.execute(
        "SELECT COUNT(*) FROM invocations WHERE webhook_state IN ('failed', 'refused')").fetchone()[0])


def source_counters(conn: sqlite3.Connection) -> list[SourceCounters]:
    """Every poller's state and counters."""
    rows = conn.execute("SELECT source, state, polls, retrieved, failures FROM source_state").fetchall()
    return [SourceCounters(str(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]


def sessions_by_status(conn: sqlite3.Connection) -> dict[str, int]:
    """Retrieval sessions per status."""
    return _by(conn, "SELECT status, COUNT(*) FROM sessions GROUP BY status")
