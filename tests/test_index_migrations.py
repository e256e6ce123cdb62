"""Schema versions: a database written by the previous release upgrades in place and loses nothing.

``fixtures/index-4781e18.sql`` is the ``sqlite3 .dump`` of an index written by the code at commit
4781e18 (the release before schema versions; ``fixtures/make_index_4781e18.py`` made it): one CT
series of 3 instances, a completed job with its SEG result, two ledger rows, an invocation, a
poller state row with a seen instance and a retrieval session with one instance.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from dicom_node.errors import StorageError
from dicom_node.index import Index, deliveries, jobs, results, schema, sessions, sources, work
from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import wait_for
from tests.scu import send_all

FIXTURE = Path(__file__).parent / "fixtures" / "index-4781e18.sql"
OLD_JOB = "0a3b11376305fe4a4614d7a4"
OLD_INVOCATION = "0b7e9c1e-4c2a-4e0e-9d43-7d1e6c2a9f10"
OLD_SEG = "1.2.826.0.1.3680043.8.498.2.1"
OLD_STUDY = "1.2.826.0.1.3680043.8.498.1"
OLD_SESSION = "5e551011aaaabbbbccccddddeeeeffff"

#: Rows per table in the fixture.
OLD_COUNTS = {
    "instances": 3, "series": 1, "associations": 1, "series_associations": 1, "events": 2, "meta": 1,
    "jobs": 1, "results": 1, "unrouted": 0, "source_state": 1, "source_seen": 1, "sessions": 1,
    "session_instances": 1, "deliveries": 2, "invocations": 1,
}


def _load_old(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.executescript(FIXTURE.read_text(encoding="utf-8"))
    finally:
        conn.close()


def _counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {table: int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]) for table in OLD_COUNTS}
    finally:
        conn.close()


def _version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def test_fixture_is_an_unversioned_database(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    _load_old(path)
    assert _version(path) == 0
    assert _counts(path) == OLD_COUNTS


def test_fresh_database_gets_the_latest_version_and_migrating_twice_is_a_noop(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    Index(path)
    assert _version(path) == schema.LATEST
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        tables = conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
        assert schema.migrate(conn, path) == schema.LATEST, "nothing is pending"
        assert conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall() == tables
    finally:
        conn.close()
    Index(path)
    assert _version(path) == schema.LATEST


def test_every_migration_statement_is_idempotent_on_the_latest_schema(tmp_path: Path) -> None:
    """Migration 1 adopts tables that exist: replaying it on a current database changes nothing."""
    path = tmp_path / "index.sqlite3"
    Index(path)
    conn = sqlite3.connect(path)
    try:
        before = conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
        for statement in schema.MIGRATIONS[0].statements():
            conn.execute(statement)
        assert conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall() == before
    finally:
        conn.close()


def test_a_newer_database_is_refused_naming_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    Index(path)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {schema.LATEST + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError) as err:
        Index(path)
    assert f"schema version {schema.LATEST + 1}" in str(err.value)
    assert f"supports ({schema.LATEST})" in str(err.value)
    assert _version(path) == schema.LATEST + 1, "a refused database is left as it was"


def test_partial_old_database_is_adopted(tmp_path: Path) -> None:
    """The old release created ``deliveries`` and ``invocations`` lazily: a root may lack them."""
    path = tmp_path / "index.sqlite3"
    _load_old(path)
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE deliveries")
    conn.execute("DROP TABLE invocations")
    conn.commit()
    conn.close()
    Index(path)
    assert _version(path) == schema.LATEST
    counts = _counts(path)
    assert counts["deliveries"] == 0 and counts["invocations"] == 0
    assert counts["instances"] == 3 and counts["jobs"] == 1


def test_query_functions_read_the_upgraded_rows(tmp_path: Path) -> None:
    """The CLI's and REST's query functions (dicom_node.index.*) read what the old release wrote."""
    path = tmp_path / "index.sqlite3"
    _load_old(path)
    index = Index(path)
    conn = index.reader()
    try:
        [job] = [j for j in jobs.list_jobs(conn, jobs.JobFilter(status="done"), 10) if j["kind"] == "series"]
        assert job["id"] == OLD_JOB and json.loads(job["stage_times"]) == {"inferring": 1.5, "writing": 0.25}
        assert json.loads(job["destinations"]) == ["pacs", "archive"]
        shown = jobs.find_job(conn, OLD_INVOCATION)
        assert shown is not None and shown["kind"] == "invocation" and shown["examination_id"] == "EXAM-1"
        assert [r["id"] for r in jobs.list_jobs(conn, jobs.JobFilter(), 10)] == [OLD_INVOCATION, OLD_JOB]
        [seg] = results.list_results(conn, OLD_STUDY)
        assert (seg.sop_instance_uid, seg.kind, seg.model_version) == (OLD_SEG, "SEG", "1.0.0")
        sent = deliveries.lookup(conn, [OLD_SEG], "pacs")[OLD_SEG]
        assert (sent.state, sent.sent_at) == ("sent", 1700000120.0)
        assert deliveries.due(conn, 1700000500.0)[0].destination == "archive"
        assert sources.row(conn, "pacs-poll") is not None and sources.failures(conn, "pacs-poll") == 0
        assert sessions.get(conn, OLD_SESSION) is not None
        assert sessions.series(conn, OLD_SESSION)[0]["instances"] == 1
        assert index.counts() == {"studies": 1, "series": 1, "instances": 3, "pending": 0, "complete": 1}
    finally:
        conn.close()


def test_node_restarts_on_a_database_of_the_previous_release(
    tmp_path: Path, start_node: Callable[..., Node]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    _load_old(root / "index.sqlite3")

    node = start_node(root, storage={"database": None})  # the old release's SQLite file, upgraded in place
    path = root / "index.sqlite3"
    assert _version(path) == schema.LATEST
    assert _counts(path) == OLD_COUNTS, "the upgrade must keep every row"

    # The old job, its result and the invocation are served by today's queries.
    assert node.api is not None
    base = f"http://127.0.0.1:{node.api.port}"
    job = httpx.get(f"{base}/v1/jobs/{OLD_JOB}").json()
    assert job["status"] == "done" and job["model"] == "spleen"
    listed = httpx.get(f"{base}/v1/jobs").json()
    ids = {j["id"] for j in listed["jobs"]}
    assert {OLD_JOB, OLD_INVOCATION} <= ids
    results = httpx.get(f"{base}/v1/studies/{OLD_STUDY}/results").json()
    assert [r["sop_instance_uid"] for r in results["results"]] == [OLD_SEG]
    assert httpx.get(f"{base}/v1/sessions/{OLD_SESSION}").json()["status"] == "ready"

    # And the node works on it: a new C-STORE is indexed next to the old rows.
    datasets = list(ct_datasets(SeriesSpec(slices=2, rows=16, columns=16, seed="migration")))
    assert send_all(node.scp.port, datasets) == [0, 0]
    assert wait_for(lambda: node.index.counts()["instances"] == 5)
    assert node.index.counts()["series"] == 2


def test_work_in_flight_in_an_old_database_runs_after_the_upgrade(
    tmp_path: Path, start_node: Callable[..., Node]
) -> None:
    """Migration 2 queues the old release's unfinished jobs on the work queue: they run after the upgrade."""
    root = tmp_path / "root"
    root.mkdir()
    path = root / "index.sqlite3"
    _load_old(path)
    conn = sqlite3.connect(path)
    # Queued and interrupted mid-stage (the previous release's states), and one waiting to deliver to nobody.
    for n, (jid, state, attempts, model) in enumerate((("old-queued", "queued", 0, "no-such-model"),
                                                       ("old-inferring", "inferring", 1, "no-such-model"),
                                                       ("old-spent", "decoding", 3, "no-such-model"),
                                                       ("old-delivering", "delivering", 1, "spleen"))):
        conn.execute(
            """INSERT INTO jobs(id, event_id, series_instance_uid, study_instance_uid, model, rule, destinations,
                   state, attempts, created_at, updated_at, result)
               SELECT ?, event_id + 100 + ?, series_instance_uid, study_instance_uid, ?, rule, '[]', ?, ?, 1.0, 1.0,
                      result FROM jobs WHERE id = ?""",
            (jid, n, model, state, attempts, OLD_JOB))
    conn.commit()
    conn.close()

    node = start_node(root, storage={"database": None})  # the old release's SQLite file, upgraded in place
    assert _version(path) == schema.LATEST

    def job(jid: str) -> dict[str, object]:
        conn = node.index.reader()
        try:
            row = jobs.find_job(conn, jid)
        finally:
            conn.close()
        assert row is not None
        return row

    assert wait_for(lambda: all(job(j)["state"] in ("done", "failed") for j in
                                ("old-queued", "old-inferring", "old-spent", "old-delivering")), timeout=30)
    for jid, attempts in (("old-queued", 1), ("old-inferring", 2)):
        row = job(jid)
        assert row["state"] == "failed" and "no-such-model" in str(row["reason"]), row
        assert row["attempts"] == attempts, "the interrupted run counted as the previous release counted it"
    spent = job("old-spent")
    assert (spent["state"], spent["reason"], spent["attempts"]) == ("failed", "interrupted 3 times", 3), \
        "interrupted jobs.max_attempts times: it ends failed instead of running again"
    assert job("old-delivering")["state"] == "done", "nothing to deliver to: the delivery finishes"
    conn = node.index.reader()
    try:
        assert {(k, s) for (k, s), _n in work.counts(conn).items()} == {("job", "failed"), ("delivery", "done")}
    finally:
        conn.close()


# PostgreSQL (dicom_node.index.pg): the same migrations, the version in dicom_node_schema. There is no
# database of an older release on PostgreSQL to adopt, so the 4781e18 fixture stays SQLite's.


def _pg_version(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT MAX(version) FROM dicom_node_schema").fetchone()
        return int(row[0]) if row and row[0] is not None else 0


def _pg_tables(dsn: str) -> list[tuple[str, str, str]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return [tuple(r) for r in conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY 1, 2").fetchall()]


def test_postgresql_gets_every_table_at_the_latest_version_and_migrating_twice_is_a_noop(postgres_dsn: str) -> None:
    Index(postgres_dsn).close()
    assert _pg_version(postgres_dsn) == schema.LATEST
    tables = _pg_tables(postgres_dsn)
    assert {t for t, _c, _d in tables} >= set(OLD_COUNTS) | {"work", "qido_studies", "qido_series", "qido_instances"}
    # Epoch seconds need double precision (PostgreSQL's REAL is 4 bytes: a 2026 time to about 2 minutes).
    assert ("work", "lease_until", "double precision") in tables
    Index(postgres_dsn).close()
    assert _pg_tables(postgres_dsn) == tables and _pg_version(postgres_dsn) == schema.LATEST


def test_postgresql_newer_database_is_refused_naming_both_versions(postgres_dsn: str) -> None:
    import psycopg

    Index(postgres_dsn).close()
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("UPDATE dicom_node_schema SET version = %s", (schema.LATEST + 1,))
    with pytest.raises(StorageError) as err:
        Index(postgres_dsn)
    assert f"schema version {schema.LATEST + 1}" in str(err.value)


def test_postgresql_nodes_starting_together_migrate_once(postgres_dsn: str) -> None:
    """Four processes' worth of Index() at once: the advisory lock lets one migrate, the others see it done."""
    import threading

    errors: list[BaseException] = []

    def open_index() -> None:
        try:
            Index(postgres_dsn).close()
        except BaseException as exc:  # reported below, with the thread's error
            errors.append(exc)

    threads = [threading.Thread(target=open_index) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert _pg_version(postgres_dsn) == schema.LATEST
