"""The delivery ledger on a real SQLite index and a real PostgreSQL database, through the index writer."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.errors import StorageError
from dicom_node.index import Index
from dicom_node.index import deliveries as ledger
from dicom_node.index.writer import IndexWriter


@pytest.fixture
def writer(index_location: str | Path) -> Iterator[IndexWriter]:
    w = IndexWriter(index_location)
    w.start()  # creates the schema (dicom_node.index.schema), the deliveries table with it
    yield w
    w.stop()


def test_schema_constrains_state(writer: IndexWriter) -> None:
    with pytest.raises(StorageError, match="(?i)check"):
        writer.run(lambda c: c.execute("INSERT INTO deliveries (sop_instance_uid, destination, state) VALUES ('1', 'd', 'lost')"))


def test_states_attempts_and_due(writer: IndexWriter) -> None:
    assert writer.run(lambda c: ledger.record_attempt(c, "1.2.3", "pacs", "refused", 100.0, "/r/a.dcm")) == 1
    assert writer.run(lambda c: ledger.record_attempt(c, "1.2.3", "pacs", "refused", 160.0)) == 2
    writer.run(lambda c: ledger.record_attempt(c, "1.2.4", "pacs", "0xA700", 50.0))
    due = writer.run(lambda c: ledger.due(c, 120.0))
    assert [(d.sop_instance_uid, d.attempts) for d in due] == [("1.2.4", 1)]
    assert [d.path for d in writer.run(lambda c: ledger.due(c, 200.0))] == [None, "/r/a.dcm"]
    assert writer.run(lambda c: ledger.mark_sent(c, "1.2.3", "pacs", 170.0)) == 3
    assert writer.run(lambda c: ledger.was_sent(c, "1.2.3", "pacs"))
    assert not writer.run(lambda c: ledger.was_sent(c, "1.2.3", "other"))
    # A sent row is final: later failures or dead-letters do not touch it.
    writer.run(lambda c: ledger.record_attempt(c, "1.2.3", "pacs", "late", 999.0))
    writer.run(lambda c: ledger.mark_dead(c, "1.2.3", "pacs", "late"))
    row = writer.run(lambda c: ledger.lookup(c, ["1.2.3"], "pacs"))["1.2.3"]
    assert (row.state, row.attempts, row.sent_at, row.next_attempt_at) == ("sent", 3, 170.0, None)


def test_dead_rows_leave_the_queue_and_can_be_requeued(writer: IndexWriter) -> None:
    writer.run(lambda c: ledger.mark_dead(c, "9.9", "pacs", "0xA900"))
    writer.run(lambda c: ledger.mark_dead(c, "9.8", "pacs", "0xC000"))
    assert writer.run(lambda c: ledger.due(c, 1e12)) == []
    assert writer.run(lambda c: ledger.requeue(c, "pacs", "9.9", now=5.0)) == 1
    due = writer.run(lambda c: ledger.due(c, 5.0))
    assert [(d.sop_instance_uid, d.attempts) for d in due] == [("9.9", 0)]
    assert writer.run(lambda c: ledger.requeue(c, "pacs")) == 1


def test_lookup_handles_many_uids(index_location: str | Path) -> None:
    index = Index(index_location)
    # A plain autocommit connection (SQLite's own; a pooled one on PostgreSQL), outside the writer.
    conn = sqlite3.connect(index_location) if isinstance(index_location, Path) else index.reader()
    uids = [f"1.2.{n}" for n in range(1200)]
    for uid in uids[::2]:
        ledger.mark_sent(conn, uid, "d", 1.0)
    rows = ledger.lookup(conn, uids, "d")
    assert len(rows) == 600 and all(r.state == "sent" for r in rows.values())
    conn.close()
    index.close()
