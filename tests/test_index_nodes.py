"""Cluster-safe assembly in the index (issue 18): node heartbeats, recovery of dead nodes' associations,
and completion decided once when several nodes' writers share one PostgreSQL database.

Each simulated node is a real :class:`IndexWriter` registered with its own :class:`NodeIdentity`, so
an association records its node the way a running node's does (the writer session's node id).
Interleavings are forced with raw transactions on real PostgreSQL connections and PostgreSQL's own
view of who waits on a lock (``pg_stat_activity``), never with sleeps.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.index import Index, IndexWriter, nodes, ops, pg, sessions
from dicom_node.index.nodes import NodeIdentity
from tests.conftest import wait_for
from tests.test_index import record

LEASE = 30.0


def _writer(location: str | Path, node: NodeIdentity, now: float) -> IndexWriter:
    writer = IndexWriter(location)
    writer.start()
    writer.run(lambda c: nodes.register(c, node, now))
    return writer


def _node(name: str, started: float = 0.0) -> NodeIdentity:
    return NodeIdentity(id=name, host="test-host", pid=1, started_at=started)


@pytest.fixture
def cluster(index_location: str | Path) -> Iterator[tuple[Index, str | Path, list[IndexWriter]]]:
    index = Index(index_location)
    writers: list[IndexWriter] = []
    yield index, index_location, writers
    for w in writers:
        w.stop()
    index.close()


def _events(index: Index) -> list[tuple[str, str, str | None]]:
    conn = index.reader()
    try:
        return [(r[0], r[1], r[2]) for r in conn.execute(
            "SELECT kind, study_instance_uid, series_instance_uid FROM events ORDER BY id")]
    finally:
        conn.close()


def _associations(index: Index) -> dict[str, tuple[str, str | None]]:
    conn = index.reader()
    try:
        return {r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, state, node_id FROM associations")}
    finally:
        conn.close()


def test_recover_spares_a_live_nodes_associations_and_aborts_a_dead_ones(cluster) -> None:
    index, location, writers = cluster
    now = 10_000.0
    live, dead = _node("live"), _node("dead")
    writers += [_writer(location, live, now - 5), _writer(location, dead, now - 5)]
    w_live, w_dead = writers
    w_live.run(lambda c: ops.begin_association(c, "a-live", "PACS", "NODE", "10.0.0.1", now - 4))
    w_live.run(lambda c: ops.store_instance(c, record(1, series="1.2.3.1", assoc="a-live", at=now - 4), False))
    w_dead.run(lambda c: ops.begin_association(c, "a-dead", "PACS", "NODE", "10.0.0.2", now - 4))
    w_dead.run(lambda c: ops.store_instance(c, record(2, series="1.2.3.2", assoc="a-dead", at=now - 4), False))
    w_dead.stop()  # the process dies: no heartbeat from now on
    writers.remove(w_dead)
    later = now + LEASE + 1
    w_live.run(lambda c: nodes.heartbeat(c, live, later))  # the live node keeps beating

    starting = _node("new")
    writers.append(_writer(location, starting, later))
    recovered = writers[-1].run(lambda c: ops.recover(c, later, LEASE))
    states = {k: v[0] for k, v in _associations(index).items()}
    if pg.is_postgres(location):
        assert _associations(index)["a-live"] == ("active", "live"), "the association records its node"
        assert recovered == 1 and states == {"a-live": "active", "a-dead": "aborted"}
        conn = index.reader()
        try:
            assert {n["id"] for n in nodes.live(conn, later, LEASE)} == {"live", "new"}
            assert conn.execute("SELECT COUNT(*) FROM nodes WHERE id = 'dead'").fetchone()[0] == 0, "pruned"
            open_by_series = dict(conn.execute("SELECT series_instance_uid, open_associations FROM series").fetchall())
        finally:
            conn.close()
        assert open_by_series == {"1.2.3.1": 1, "1.2.3.2": 0}, "only the dead node's hold is released"
    else:
        # The embedded default: the starting node owns the file, every open association died.
        assert recovered == 2 and states == {"a-live": "aborted", "a-dead": "aborted"}
        conn = index.reader()
        try:
            # Rows not renewed since before this start go ("live" beat at this very instant here).
            assert sorted(r[0] for r in conn.execute("SELECT id FROM nodes")) == ["live", "new"]
        finally:
            conn.close()


def test_a_running_node_aborts_only_expired_nodes_associations(cluster, index_location) -> None:
    if not pg.is_postgres(index_location):
        pytest.skip("only nodes sharing a PostgreSQL database expire each other (SQLite: one node per file)")
    index, location, writers = cluster
    now = 20_000.0
    a, b = _node("a"), _node("b")
    writers += [_writer(location, a, now), _writer(location, b, now)]
    writers[0].run(lambda c: ops.begin_association(c, "from-a", "PACS", "NODE", "h", now))
    writers[1].run(lambda c: ops.begin_association(c, "from-b", "PACS", "NODE", "h", now))
    # A writer that never registered (a CLI command's) records no node: a running node never aborts it.
    anonymous = IndexWriter(location)
    anonymous.start()
    writers.append(anonymous)
    anonymous.run(lambda c: ops.begin_association(c, "from-cli", "PACS", "NODE", "h", now))
    assert writers[0].run(lambda c: ops.abort_dead(c, now + LEASE - 1, LEASE)) == 0, "b is within its lease"
    writers[0].run(lambda c: nodes.heartbeat(c, a, now + LEASE + 1))
    assert writers[0].run(lambda c: ops.abort_dead(c, now + LEASE + 1, LEASE)) == 1
    assert _associations(index) == {"from-a": ("active", "a"), "from-b": ("aborted", "b"),
                                    "from-cli": ("active", None)}


def _due_study(writer: IndexWriter, study: str, series: list[str], at: float) -> None:
    """One released association delivered one instance to each of ``series`` at ``at``."""
    assoc = f"assoc-{study}"
    writer.run(lambda c: ops.begin_association(c, assoc, "PACS", "NODE", "h", at))
    for n, s in enumerate(series):
        writer.run(lambda c, n=n, s=s: ops.store_instance(
            c, dataclasses.replace(record(n, series=s, assoc=assoc, at=at, study=study), sop_instance_uid=f"{s}.{n}"), False))
    writer.run(lambda c: ops.end_association(c, assoc, "released", at))


def test_two_nodes_racing_completion_emit_each_event_once(cluster) -> None:
    """Both nodes' writers poll complete_due as fast as they can while 20 studies of 3 series become due."""
    index, location, writers = cluster
    writers += [_writer(location, _node("n1"), 0.0), _writer(location, _node("n2"), 0.0)]
    studies = {f"9.{i}": [f"9.{i}.{j}" for j in range(3)] for i in range(20)}
    for k, (study, series) in enumerate(studies.items()):
        _due_study(writers[k % 2], study, series, at=100.0 + k)
    stop = threading.Event()

    def poll(writer: IndexWriter) -> None:
        t = 100.0
        while not stop.is_set() and t < 200.0:
            writer.run(lambda c, t=t: ops.complete_due(c, t, 10.0, 3600.0))
            t += 0.5

    threads = [threading.Thread(target=poll, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    counts = Counter((kind, study, series) for kind, study, series in _events(index))
    expected = Counter({("series_complete", st, s): 1 for st, ss in studies.items() for s in ss})
    expected.update({("study_complete", st, None): 1 for st in studies})
    assert counts == expected, "one series_complete per series and one study_complete per study"


def test_completion_waits_for_the_other_nodes_decision_and_emits_the_study_once(cluster, index_location) -> None:
    """The last two series of a study completed by two nodes at once: exactly one study_complete."""
    if not pg.is_postgres(index_location):
        pytest.skip("SQLite's BEGIN IMMEDIATE serialises every writer; the interleaving needs two PostgreSQL sessions")
    index, location, writers = cluster
    writers.append(_writer(location, _node("n1"), 0.0))
    # Series 1 became due at 110, series 2 (a later association) at 130.
    _due_study(writers[0], "7.1", ["7.1.1"], at=100.0)
    _due_study_second(writers[0], "7.1", "7.1.2", at=120.0)
    first, second = pg.connect(str(location)), pg.connect(str(location))
    try:
        first.execute("BEGIN")
        assert [e["kind"] for e in ops.complete_due(first, 115.0, 10.0, 3600.0)] == ["series_complete"]
        second.execute("BEGIN")
        # Uncommitted, the first node's decision is invisible here: without the lock this node would
        # complete series 2, see series 1 still receiving, and both would miss the study's completion.
        assert ops.complete_due(second, 135.0, 10.0, 3600.0) == [], "the other node is deciding"
        second.execute("COMMIT")
        first.execute("COMMIT")
        second.execute("BEGIN")
        assert [e["kind"] for e in ops.complete_due(second, 135.0, 10.0, 3600.0)] == \
            ["series_complete", "study_complete"]
        second.execute("COMMIT")
    finally:
        first.close()
        second.close()
    assert [k for k, _st, _s in _events(index)] == ["series_complete", "series_complete", "study_complete"]


def test_an_instance_committed_by_another_node_during_completion_keeps_the_series_open(
        cluster, index_location) -> None:
    if not pg.is_postgres(index_location):
        pytest.skip("needs two concurrent PostgreSQL sessions")
    index, location, writers = cluster
    writers.append(_writer(location, _node("n1"), 0.0))
    _due_study(writers[0], "8.1", ["8.1.1"], at=100.0)
    other, completer = pg.connect(str(location)), pg.connect(str(location))
    try:
        # Another node stores one more instance of the series (a new association, released at once),
        # holding the series row until it commits.
        other.execute("BEGIN")
        ops.begin_association(other, "late", "PACS", "NODE", "h", 150.0)
        ops.store_instance(other, dataclasses.replace(record(9, series="8.1.1", assoc="late", at=150.0, study="8.1"), sop_instance_uid="8.1.1.late"), False)
        ops.end_association(other, "late", "released", 150.0)
        pid = other.execute("SELECT pg_backend_pid()").fetchone()[0]
        result: list[list[dict[str, object]]] = []

        def complete() -> None:
            completer.execute("BEGIN")
            result.append(ops.complete_due(completer, 155.0, 10.0, 3600.0))
            completer.execute("COMMIT")

        thread = threading.Thread(target=complete)
        thread.start()
        watcher = Index(str(location))
        try:
            conn = watcher.reader()
            try:
                # The completer saw the series due (the store is uncommitted) and now waits on its row.
                assert wait_for(lambda: conn.execute(
                    "SELECT COUNT(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE NOT l.granted AND ? = ANY(pg_blocking_pids(a.pid))", (pid,)).fetchone()[0] > 0,
                    timeout=30), "the completer never waited on the other node's row"
            finally:
                conn.close()
        finally:
            watcher.close()
        other.execute("COMMIT")
        thread.join(30)
    finally:
        other.close()
        completer.close()
    assert result == [[]], "the series got an instance 5 s ago: not complete (quiet period 10 s)"
    assert _events(index) == []


def _due_study_second(writer: IndexWriter, study: str, series: str, at: float) -> None:
    assoc = f"assoc-{series}"
    writer.run(lambda c: ops.begin_association(c, assoc, "PACS", "NODE", "h", at))
    writer.run(lambda c: ops.store_instance(c, dataclasses.replace(record(1, series=series, assoc=assoc, at=at, study=study), sop_instance_uid=f"{series}.1"), False))
    writer.run(lambda c: ops.end_association(c, assoc, "released", at))


def test_a_starting_node_fails_only_dead_nodes_retrieval_sessions(cluster) -> None:
    index, location, writers = cluster
    now = 30_000.0
    live, dead = _node("live"), _node("dead")
    writers += [_writer(location, live, now), _writer(location, dead, now)]
    for writer, sid in ((writers[0], "a" * 32), (writers[1], "b" * 32)):
        row = {"id": sid, "kind": "upload", "source": "upload", "request": "{}", "status": "retrieving",
               "reason": None, "created_at": now, "updated_at": now, "expires_at": now + 3600}
        writer.run(lambda c, row=row: sessions.insert(c, row))
    later = now + LEASE + 1
    writers[0].run(lambda c: nodes.heartbeat(c, live, later))
    assert writers[0].run(lambda c: sessions.fail_interrupted(c, later, LEASE)) == (1 if pg.is_postgres(location) else 2)
    conn = index.reader()
    try:
        status = dict(conn.execute("SELECT id, status FROM sessions").fetchall())
    finally:
        conn.close()
    if pg.is_postgres(location):
        assert status == {"a" * 32: "retrieving", "b" * 32: "failed"}, "the live node's upload goes on"
    else:
        assert status == {"a" * 32: "failed", "b" * 32: "failed"}, "SQLite: the starting node owns every session"


def test_a_write_chosen_to_end_a_deadlock_with_another_node_runs_again_and_succeeds(cluster, index_location) -> None:
    """Two nodes' batches storing into two series of one study in opposite orders deadlock; PostgreSQL
    ends the cycle by failing one statement. The writer runs that operation again in a later
    transaction instead of failing it (which would answer the C-STORE 0xA700)."""
    if not pg.is_postgres(index_location):
        pytest.skip("SQLite's single writer cannot deadlock with another")
    index, location, writers = cluster
    writers.append(_writer(location, _node("n1"), 0.0))
    writer = writers[0]
    for assoc in ("w", "other"):
        writer.run(lambda c, a=assoc: ops.begin_association(c, a, "PACS", "NODE", "h", 100.0))

    def rec(uid: str, series: str, assoc: str) -> object:
        return dataclasses.replace(record(0, series=series, assoc=assoc, at=100.0, study="5.1"), sop_instance_uid=uid)

    for series in ("5.1.1", "5.1.2"):  # both series rows exist, as when several instances arrived
        writer.run(lambda c, s=series: ops.store_instance(c, rec(f"{s}.0", s, "w"), False))
    other = pg.connect(str(location))
    try:
        other.execute("BEGIN")
        ops.store_instance(other, rec("5.1.1.other", "5.1.1", "other"), False)  # holds series 5.1.1
        pid = other.execute("SELECT pg_backend_pid()").fetchone()[0]
        outcome: list[object] = []

        def both(c: object) -> list[str]:  # series 5.1.2, then 5.1.1 (held by the other node)
            return [ops.store_instance(c, rec(f"{s}.w", s, "w"), False) for s in ("5.1.2", "5.1.1")]

        thread = threading.Thread(target=lambda: outcome.append(writer.run(both)))
        thread.start()
        conn = index.reader()
        try:
            assert wait_for(lambda: conn.execute(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE ? = ANY(pg_blocking_pids(pid))", (pid,)).fetchone()[0] > 0,
                timeout=30), "the writer never waited on the other node's row"
        finally:
            conn.close()
        # The other node now wants series 5.1.2, which the writer's batch holds: a deadlock. The writer,
        # waiting longer, detects it and its operation is rolled back, releasing 5.1.2 to this one.
        ops.store_instance(other, rec("5.1.2.other", "5.1.2", "other"), False)
        other.execute("COMMIT")
        thread.join(60)
    finally:
        other.close()
    assert outcome == [[ops.STORED, ops.STORED]], "the operation ran again after the other node committed"
    conn = index.reader()
    try:
        counts = dict(conn.execute("SELECT series_instance_uid, instance_count FROM series").fetchall())
    finally:
        conn.close()
    assert counts == {"5.1.1": 3, "5.1.2": 3}
