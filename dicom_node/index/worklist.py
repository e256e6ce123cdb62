"""Read queries of the worklist (``GET /v1/worklist``): studies by arrival, their jobs and SR results."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class StudyRow:
    """One study as the worklist lists it (aggregated over its series)."""

    study_uid: str
    last_received_at: float
    series: int
    instances: int
    modalities: list[str]


@dataclass(frozen=True)
class JobCount:
    """How many jobs of one model are in one state, for one study."""

    model: str
    state: str
    count: int


@dataclass(frozen=True)
class Failure:
    """The model and reason of a study's most recent failed or dead-lettered job."""

    model: str
    reason: str | None


@dataclass(frozen=True)
class SrResult:
    """An SR result object of a study: its model and ``storage.root``-relative path."""

    model: str
    path: str


def recent_studies(conn: sqlite3.Connection, limit: int) -> list[StudyRow]:
    """Studies by most recent arrival, newest first."""
    # GROUP_CONCAT is SQLite's (PostgreSQL: string_agg).
    rows = conn.execute(
        """SELECT study_instance_uid AS study, MAX(last_received_at) AS last, COUNT(*) AS series,
                  SUM(instance_count) AS instances, GROUP_CONCAT(DISTINCT modality) AS modalities
           FROM series GROUP BY study_instance_uid ORDER BY last DESC LIMIT ?""", (limit,)).fetchall()
    return [StudyRow(study_uid=r["study"], last_received_at=r["last"], series=int(r["series"]),
                     instances=int(r["instances"] or 0),
                     modalities=sorted(m for m in (r["modalities"] or "").split(",") if m)) for r in rows]


def job_counts(conn: sqlite3.Connection, study: str) -> list[JobCount]:
    """Jobs of a study counted by model and state, ordered by model."""
    return [JobCount(r[0], r[1], int(r[2])) for r in conn.execute(
        "SELECT model, state, COUNT(*) AS n FROM jobs WHERE study_instance_uid = ? GROUP BY model, state ORDER BY model",
        (study,))]


def last_failure(conn: sqlite3.Connection, study: str) -> Failure | None:
    """The most recently updated failed or dead-lettered job of a study, or None."""
    row = conn.execute("SELECT model, reason FROM jobs WHERE study_instance_uid = ? AND state IN "
                       "('failed', 'dead-letter') ORDER BY updated_at DESC LIMIT 1", (study,)).fetchone()
    return None if row is None else Failure(row[0], row[1])


def sr_results(conn: sqlite3.Connection, study: str) -> list[SrResult]:
    """The SR result objects of a study."""
    return [SrResult(r[0], r[1]) for r in conn.execute(
        "SELECT model, path FROM results WHERE study_instance_uid = ? AND kind = 'SR'", (study,))]
