"""Read queries of the ``results`` table: the SEG and SR objects the node has written.

One row per result object (PS3.3 A.51 Segmentation, A.35.13 Comprehensive 3D SR),
keyed by its SOP Instance UID; ``path`` is relative to ``storage.root``. The
rows are written by :func:`dicom_node.index.jobs.record_results` when a job stores its results.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Literal, cast

ResultKind = Literal["SEG", "SR"]

_COLUMNS = ("sop_instance_uid, job_id, kind, sop_class_uid, series_instance_uid, study_instance_uid, "
            "source_series_uid, model, model_version, path, created_at")


@dataclass(frozen=True)
class ResultRecord:
    """One result object as the index knows it (no patient attributes).

    Attributes
    ----------
    sop_instance_uid : str
        SOP Instance UID (0008,0018) of the result object.
    kind : {"SEG", "SR"}
        Segmentation or TID 1500 measurement report.
    sop_class_uid : str
        SOP Class UID (0008,0016).
    series_instance_uid : str
        The result's own Series Instance UID (0020,000E).
    study_instance_uid : str
        The study it was added to (the source's Study Instance UID, 0020,000D).
    source_series_uid : str
        The series the model ran on.
    model, model_version : str
        Model name and version that produced it.
    job_id : str
        The job that wrote it.
    path : str
        File path relative to ``storage.root``.
    created_at : float
        POSIX time the row was written.
    """

    sop_instance_uid: str
    job_id: str
    kind: ResultKind
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    source_series_uid: str
    model: str
    model_version: str
    path: str
    created_at: float


def _record(row: sqlite3.Row) -> ResultRecord:
    return ResultRecord(
        sop_instance_uid=str(row["sop_instance_uid"]), job_id=str(row["job_id"]),
        kind=cast(ResultKind, row["kind"]), sop_class_uid=str(row["sop_class_uid"]),
        series_instance_uid=str(row["series_instance_uid"]), study_instance_uid=str(row["study_instance_uid"]),
        source_series_uid=str(row["source_series_uid"]), model=str(row["model"]),
        model_version=str(row["model_version"]), path=str(row["path"]), created_at=float(row["created_at"]),
    )


def list_results(conn: sqlite3.Connection, study_uid: str | None = None) -> list[ResultRecord]:
    """Result objects, oldest first (SEG before SR of one job), optionally of one study.

    Parameters
    ----------
    conn : sqlite3.Connection
        A connection to the index (``row_factory = sqlite3.Row``).
    study_uid : str, optional
        Only results of this Study Instance UID (uses the ``results_study`` index).
    """
    where = " WHERE study_instance_uid = ?" if study_uid is not None else ""
    params: tuple[str, ...] = (study_uid,) if study_uid is not None else ()
    sql = f"SELECT {_COLUMNS} FROM results{where} ORDER BY created_at, study_instance_uid, kind, sop_instance_uid"
    return [_record(row) for row in conn.execute(sql, params)]


def get_result(conn: sqlite3.Connection, sop_instance_uid: str) -> ResultRecord | None:
    """The result object with this SOP Instance UID, or None."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM results WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
    return None if row is None else _record(row)
