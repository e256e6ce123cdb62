"""Filling the search index from stored files: results as they are written, and an upgraded database.

An index created before migration 3 has instances and results but no ``qido_*`` rows. At start the
node reads the headers of those files (no pixel data) and indexes them, at most :data:`BACKFILL_LIMIT`
per start so an upgrade of a very large archive cannot hold start-up indefinitely; what is left is
indexed at the next start. One log line gives the counts (never an attribute value).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from pydicom.errors import InvalidDicomError

from dicom_node.archive.keys import record_from_dataset
from dicom_node.errors import DicomNodeError, StorageError
from dicom_node.index import Index, IndexWriter, qido
from dicom_node.index.qido import Origin, QidoRecord
from dicom_node.pixels.decode import read_dataset
from dicom_node.spool import Spool

log = logging.getLogger(__name__)

#: Instances indexed per start (header reads: about 1 ms each on the CI machine).
BACKFILL_LIMIT = 50_000
_BATCH = 500
_READ_ERRORS = (OSError, InvalidDicomError, ValueError, TypeError, KeyError, AttributeError, EOFError, DicomNodeError)


def index_result(path: Path, max_inflated: int, origin: Origin = "result") -> QidoRecord | None:
    """The search-index record of one stored file; None when its header cannot be read (logged)."""
    try:
        ds = read_dataset(str(path), stop_before_pixels=True, max_inflated_bytes=max_inflated)
    except _READ_ERRORS as exc:
        log.warning("search index: header unreadable file=%s error=%s", path.name, type(exc).__name__)
        return None
    return record_from_dataset(ds, origin)


def backfill(index: Index, writer: IndexWriter, spool: Spool, max_inflated: int,
             limit: int = BACKFILL_LIMIT) -> tuple[int, int]:
    """Index stored instances and results that have no ``qido_instances`` row; returns (indexed, unreadable).

    Received instances' paths are relative to the spool, results' to ``storage.root``; both are read
    through :meth:`Spool.local`. Runs with the writer started; paths that leave their directory are
    skipped (a damaged index must not make the node read other files).
    """
    conn = index.reader()
    try:
        todo = qido.missing(conn, limit)
    finally:
        conn.close()
    if not todo:
        return 0, 0
    bases: dict[str, Path] = {"received": spool.files.resolve(), "result": spool.root.resolve()}
    indexed = unreadable = 0
    for start in range(0, len(todo), _BATCH):
        records = []
        for _uid, rel, origin in todo[start : start + _BATCH]:
            base = bases[origin]
            path = (base / rel).resolve()
            rec = None
            if base in path.parents:
                try:
                    rec = index_result(spool.local(rel, result=origin == "result"), max_inflated, origin)
                except StorageError as exc:  # storage.spool_url unreadable: counted unreadable, tried next start
                    log.warning("search index: stored file unavailable error=%s", exc)
            if rec is None:
                unreadable += 1
            else:
                records.append(rec)
        now = time.time()

        def write(conn_: sqlite3.Connection, batch: list[QidoRecord] = records, at: float = now) -> None:
            for rec in batch:
                qido.record(conn_, rec, at)

        writer.run(write)
        indexed += len(records)
    log.info("search index backfilled indexed=%d unreadable=%d limit=%d", indexed, unreadable, limit)
    return indexed, unreadable
