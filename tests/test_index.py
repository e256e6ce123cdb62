"""Index and assembly rules, on a real SQLite file and a real PostgreSQL database, through the real writer thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.index import Index, IndexWriter, InstanceRecord, ops


@pytest.fixture
def db(index_location: str | Path) -> Iterator[tuple[Index, IndexWriter]]:
    index = Index(index_location)
    writer = IndexWriter(index.path)
    writer.start()
    yield index, writer
    writer.stop()
    index.close()


def record(n: int, series: str = "1.2.3.1", assoc: str = "a1", at: float = 100.0, study: str = "1.2.3") -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=f"1.2.3.1.{n}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2", series_instance_uid=series,
        study_instance_uid=study, transfer_syntax_uid="1.2.840.10008.1.2.1", modality="CT", instance_number=n,
        calling_ae="PACS", called_ae="DICOM_NODE", association_id=assoc, path=f"00/{n}.dcm", size=10, received_at=at,
    )


def test_store_counts_and_duplicates(db: tuple[Index, IndexWriter]) -> None:
    index, writer = db
    writer.run(lambda c: ops.begin_association(c, "a1", "PACS", "DICOM_NODE", "127.0.0.1", 99.0))
    assert writer.run(lambda c: ops.store_instance(c, record(1), False)) == ops.STORED
    assert writer.run(lambda c: ops.store_instance(c, record(2), False)) == ops.STORED
    assert writer.run(lambda c: ops.store_instance(c, record(1), False)) == ops.DUPLICATE
    assert writer.run(lambda c: ops.store_instance(c, record(1), True)) == ops.REPLACED
    assert index.counts() == {"studies": 1, "series": 1, "instances": 2, "pending": 1, "complete": 0}
    assert index.series()[0]["instance_count"] == 2


def test_completion_waits_for_release_and_quiet_period(db: tuple[Index, IndexWriter]) -> None:
    index, writer = db
    writer.run(lambda c: ops.begin_association(c, "a1", "PACS", "DICOM_NODE", "127.0.0.1", 99.0))
    writer.run(lambda c: ops.store_instance(c, record(1, at=100.0), False))
    # Association still open: never complete, however long ago.
    assert writer.run(lambda c: ops.complete_due(c, 1000.0, 10.0, 3600.0)) == []
    writer.run(lambda c: ops.end_association(c, "a1", "released", 101.0))
    # Released, but the quiet period (10 s after the last instance) has not passed.
    assert writer.run(lambda c: ops.complete_due(c, 105.0, 10.0, 3600.0)) == []
    events = writer.run(lambda c: ops.complete_due(c, 111.0, 10.0, 3600.0))
    assert [e["kind"] for e in events] == ["series_complete", "study_complete"]
    assert writer.run(lambda c: ops.complete_due(c, 200.0, 10.0, 3600.0)) == [], "completion must not repeat"
    assert index.counts()["complete"] == 1


def test_aborted_association_waits_for_the_grace_period(db: tuple[Index, IndexWriter]) -> None:
    index, writer = db
    writer.run(lambda c: ops.begin_association(c, "a1", "PACS", "DICOM_NODE", "127.0.0.1", 99.0))
    writer.run(lambda c: ops.store_instance(c, record(1, at=100.0), False))
    writer.run(lambda c: ops.end_association(c, "a1", "aborted", 101.0))
    assert writer.run(lambda c: ops.complete_due(c, 500.0, 10.0, 3600.0)) == []
    # The sender retries on a new association and releases it: complete after the quiet period.
    writer.run(lambda c: ops.begin_association(c, "a2", "PACS", "DICOM_NODE", "127.0.0.1", 600.0))
    writer.run(lambda c: ops.store_instance(c, record(1, assoc="a2", at=601.0), False))
    writer.run(lambda c: ops.end_association(c, "a2", "released", 602.0))
    events = writer.run(lambda c: ops.complete_due(c, 612.0, 10.0, 3600.0))
    assert events and events[0]["instance_count"] == 1


def test_late_instance_reopens_the_series(db: tuple[Index, IndexWriter]) -> None:
    index, writer = db
    for assoc, n, at in (("a1", 1, 100.0), ("a2", 2, 300.0)):
        writer.run(lambda c, a=assoc, t=at: ops.begin_association(c, a, "PACS", "DICOM_NODE", "127.0.0.1", t))
        writer.run(lambda c, a=assoc, n=n, t=at: ops.store_instance(c, record(n, assoc=a, at=t), False))
        writer.run(lambda c, a=assoc, at=at: ops.end_association(c, a, "released", at + 1))
        writer.run(lambda c, at=at: ops.complete_due(c, at + 20, 10.0, 3600.0))
    series_events = [e for e in index.events() if e["kind"] == "series_complete"]
    assert [e["instance_count"] for e in series_events] == [1, 2]
    assert index.series()[0]["completions"] == 2


def test_study_completes_only_when_all_its_series_are(db: tuple[Index, IndexWriter]) -> None:
    index, writer = db
    writer.run(lambda c: ops.begin_association(c, "a1", "PACS", "DICOM_NODE", "127.0.0.1", 99.0))
    writer.run(lambda c: ops.store_instance(c, record(1, series="1.2.3.1", at=100.0), False))
    writer.run(lambda c: ops.end_association(c, "a1", "released", 101.0))
    writer.run(lambda c: ops.begin_association(c, "a2", "PACS", "DICOM_NODE", "127.0.0.1", 99.0))
    writer.run(lambda c: ops.store_instance(c, record(2, series="1.2.3.2", assoc="a2", at=100.0), False))
    events = writer.run(lambda c: ops.complete_due(c, 120.0, 10.0, 3600.0))
    assert [e["kind"] for e in events] == ["series_complete"]
    writer.run(lambda c: ops.end_association(c, "a2", "released", 121.0))
    events = writer.run(lambda c: ops.complete_due(c, 140.0, 10.0, 3600.0))
    assert [e["kind"] for e in events] == ["series_complete", "study_complete"]
    assert events[1]["instance_count"] == 2


def test_recover_marks_dead_associations_aborted(db: tuple[Index, IndexWriter]) -> None:
    index, writer = db
    writer.run(lambda c: ops.begin_association(c, "a1", "PACS", "DICOM_NODE", "127.0.0.1", 99.0))
    writer.run(lambda c: ops.store_instance(c, record(1, at=100.0), False))
    assert writer.run(lambda c: ops.recover(c, 200.0)) == 1
    assert writer.run(lambda c: ops.recover(c, 201.0)) == 0
    row = index.series()[0]
    assert row["open_associations"] == 0 and row["last_end"] == "aborted"


def test_failing_operation_rolls_back_alone(db: tuple[Index, IndexWriter]) -> None:
    index, writer = db

    def broken(conn: object) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")  # type: ignore[attr-defined]

    good = writer.submit(lambda c: ops.store_instance(c, record(7), False))
    bad = writer.submit(broken)
    assert good.result(10) == ops.STORED
    with pytest.raises(Exception, match="no_such_table"):
        bad.result(10)
    assert index.counts()["instances"] == 1


def test_an_index_read_failure_is_a_storage_error(db: tuple[Index, IndexWriter]) -> None:
    # Ingest maps StorageError to 0xA700 (the sender retries); a raw sqlite3 error was unmapped.
    from dicom_node.errors import StorageError

    index, _ = db
    conn = index.reader()
    conn.close()
    with pytest.raises(StorageError, match="index read failed"):
        index.has_instance(conn, "1.2.3")
