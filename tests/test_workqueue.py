"""The one work queue (dicom_node.workqueue): limits, retries, dead-letter, stage timings, crash recovery.

Every test runs on both backends (``index_location``: a SQLite file, a PostgreSQL database); several
consumers on one PostgreSQL are in ``test_workqueue_cluster.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.index import Index, IndexWriter
from dicom_node.index import work as ops
from dicom_node.index.work import WorkRow
from dicom_node.net.retry import RetryPolicy
from dicom_node.workqueue import DeadLetter, Done, Failed, Outcome, Retry, WorkItem, WorkQueue
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    """A handler that returns scripted outcomes and records what the queue told it."""

    def __init__(self, *outcomes: Outcome | Exception, hold: threading.Event | None = None) -> None:
        self.outcomes = list(outcomes)
        self.hold = hold
        self.runs: list[tuple[str, int, float]] = []
        self.gave_up: list[tuple[str, str, str]] = []
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()

    def handle(self, item: WorkItem) -> Outcome:
        with self._lock:
            self.runs.append((item.ref, item.attempts, time.time()))
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            with item.stage("work"):
                if self.hold is not None:
                    self.hold.wait(10)
            outcome = self.outcomes.pop(0) if self.outcomes else Done()
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        finally:
            with self._lock:
                self.active -= 1

    def give_up(self, item: WorkItem, state: str, reason: str) -> None:
        self.gave_up.append((item.ref, state, reason))


@pytest.fixture
def db(index_location: str | Path) -> Iterator[tuple[Index, IndexWriter]]:
    index = Index(index_location)
    writer = IndexWriter(index_location)
    writer.start()
    yield index, writer
    writer.stop()
    index.close()


def _row(index: Index, kind: str, ref: str) -> WorkRow:
    conn = index.reader()
    try:
        row = ops.get(conn, kind, ref)
    finally:
        conn.close()
    assert row is not None
    return row


def _row_at(location: str | Path, kind: str, ref: str) -> WorkRow:
    index = Index(location)
    try:
        return _row(index, kind, ref)
    finally:
        index.close()


def _ended(index: Index, kind: str, ref: str) -> bool:
    return _row(index, kind, ref).state in ops.TERMINAL


def test_per_kind_concurrency_limit_holds(db: tuple[Index, IndexWriter]) -> None:
    index, writer = db
    release = threading.Event()
    a, b = Recorder(hold=release), Recorder(hold=release)
    queue = WorkQueue(writer, poll_interval=0.02)
    queue.register("a", a, limit=2)
    queue.register("b", b, limit=1)
    for n in range(6):
        queue.enqueue("a", f"a{n}")
        queue.enqueue("b", f"b{n}")
    queue.start()
    try:
        assert wait_for(lambda: a.active == 2 and b.active == 1)
        time.sleep(0.3)  # idle workers keep polling; none may take a third "a" or a second "b"
        assert (a.active, b.active) == (2, 1)
        assert queue.running("a") == 2 and queue.running("b") == 1
        release.set()
        assert wait_for(lambda: all(_ended(index, "a", f"a{n}") and _ended(index, "b", f"b{n}") for n in range(6)))
    finally:
        release.set()
        queue.stop()
    assert (a.peak, b.peak) == (2, 1)
    assert len(a.runs) == len(b.runs) == 6


def test_retry_runs_again_no_earlier_than_asked(db: tuple[Index, IndexWriter]) -> None:
    index, writer = db
    handler = Recorder(Retry("peer busy", after=0.6), Done())
    queue = WorkQueue(writer, poll_interval=0.02)
    queue.register("hook", handler, limit=1)
    queue.enqueue("hook", "r1")
    queue.start()
    try:
        assert wait_for(lambda: len(handler.runs) == 1)
        parked = _row(index, "hook", "r1")
        assert parked.state == "retry" and parked.reason == "peer busy"
        assert wait_for(lambda: _row(index, "hook", "r1").state == "done", timeout=5)
    finally:
        queue.stop()
    (_, first, t1), (_, second, t2) = handler.runs
    assert (first, second) == (1, 2), "each run counts an attempt"
    assert t2 - t1 >= 0.6


def test_retry_without_a_time_follows_the_policy_and_honours_retry_after(db: tuple[Index, IndexWriter]) -> None:
    index, writer = db
    handler = Recorder(Retry("HTTP 503", retry_after=0.8), Done())
    queue = WorkQueue(writer, poll_interval=0.02)
    queue.register("hook", handler, limit=1, retry=RetryPolicy(attempts=5, initial=0.05, factor=2.0, cap=10.0))
    queue.enqueue("hook", "r1")
    queue.start()
    try:
        assert wait_for(lambda: _row(index, "hook", "r1").state == "done", timeout=5)
    finally:
        queue.stop()
    (_, _, t1), (_, _, t2) = handler.runs
    assert t2 - t1 >= 0.8, "the peer's Retry-After is longer than the backoff, and wins"


def test_spent_policy_dead_letters_and_tells_the_handler(db: tuple[Index, IndexWriter]) -> None:
    index, writer = db
    handler = Recorder(Retry("HTTP 500"), Retry("HTTP 500"))
    queue = WorkQueue(writer, poll_interval=0.02)
    queue.register("hook", handler, limit=1, retry=RetryPolicy(attempts=2, initial=0.01, factor=1.0, cap=1.0))
    queue.enqueue("hook", "r1")
    queue.start()
    try:
        assert wait_for(lambda: _ended(index, "hook", "r1"), timeout=5)
    finally:
        queue.stop()
    row = _row(index, "hook", "r1")
    assert (row.state, row.attempts) == ("dead-letter", 2)
    assert row.reason == "gave up after 2 attempts: HTTP 500"
    assert handler.gave_up == [("r1", "dead-letter", "gave up after 2 attempts: HTTP 500")]


def test_outcomes_and_exceptions_end_the_row(db: tuple[Index, IndexWriter]) -> None:
    index, writer = db
    handler = Recorder(DeadLetter("refused by the peer"), Failed("bad input"), ZeroDivisionError("secret detail"))
    queue = WorkQueue(writer, poll_interval=0.02)
    queue.register("k", handler, limit=1)
    for ref in ("dead", "failed", "crashed"):
        queue.enqueue("k", ref)
    queue.start()
    try:
        assert wait_for(lambda: all(_ended(index, "k", r) for r in ("dead", "failed", "crashed")))
    finally:
        queue.stop()
    assert (_row(index, "k", "dead").state, _row(index, "k", "dead").reason) == ("dead-letter", "refused by the peer")
    assert (_row(index, "k", "failed").state, _row(index, "k", "failed").reason) == ("failed", "bad input")
    crashed = _row(index, "k", "crashed")
    # The error is named; its message and traceback stay in the log.
    assert (crashed.state, crashed.reason) == ("failed", "internal error: ZeroDivisionError")
    assert handler.gave_up == [("crashed", "failed", "internal error: ZeroDivisionError")]


def test_stage_timings_are_recorded_with_the_row(db: tuple[Index, IndexWriter]) -> None:
    index, writer = db
    queue = WorkQueue(writer, poll_interval=0.02)
    queue.register("k", Recorder(), limit=1)
    queue.enqueue("k", "r1")
    queue.start()
    try:
        assert wait_for(lambda: _ended(index, "k", "r1"))
    finally:
        queue.stop()
    times = _row(index, "k", "r1").stage_times
    assert set(times) == {"work"} and times["work"] >= 0


def test_enqueue_is_idempotent_and_requeues_ended_work(db: tuple[Index, IndexWriter]) -> None:
    index, writer = db
    assert writer.run(lambda c: ops.enqueue(c, "k", "r1", 1.0, 3))
    assert not writer.run(lambda c: ops.enqueue(c, "k", "r1", 2.0, 3)), "open work is not queued twice"
    writer.run(lambda c: ops.finish(c, _row(index, "k", "r1").id, "failed", 3.0, "boom"))
    assert writer.run(lambda c: ops.enqueue(c, "k", "r1", 4.0))
    row = _row(index, "k", "r1")
    assert (row.state, row.attempts, row.reason, row.max_attempts) == ("queued", 0, None, 3)


def test_expired_lease_is_claimed_again_counting_an_attempt(db: tuple[Index, IndexWriter]) -> None:
    """A row left running by a dead process runs again; once interrupted max_attempts times it ends failed."""
    index, writer = db
    writer.run(lambda c: ops.enqueue(c, "k", "again", 0.0, 2))
    writer.run(lambda c: ops.enqueue(c, "k", "spent", 0.0, 2))
    # A previous process claimed both and died; "spent" had already been interrupted once before.
    writer.run(lambda c: ops.claim(c, ["k"], 1.0, 60.0))
    writer.run(lambda c: ops.claim(c, ["k"], 1.0, 60.0))
    writer.run(lambda c: ops.renew(c, [_row(index, "k", "spent").id], 61.0))
    spent_id = _row(index, "k", "spent").id
    writer.run(lambda c: c.execute("UPDATE work SET attempts = 2 WHERE id = ?", (spent_id,)))
    handler = Recorder()
    queue = WorkQueue(writer, poll_interval=0.02)
    queue.register("k", handler, limit=1, max_attempts=2)
    queue.start()
    try:
        assert wait_for(lambda: _ended(index, "k", "again") and _ended(index, "k", "spent"))
    finally:
        queue.stop()
    assert [(r, a) for r, a, _t in handler.runs] == [("again", 2)]
    assert _row(index, "k", "again").state == "done"
    spent = _row(index, "k", "spent")
    assert (spent.state, spent.reason) == ("failed", "interrupted 2 times")
    assert handler.gave_up == [("spent", "failed", "interrupted 2 times")]


def _child(db: str | Path, mode: str, marker: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "tests.workqueue_child", str(db), mode, str(marker)],
                            cwd=ROOT, env=env)


def test_sigkill_mid_item_then_restart_finishes_it(tmp_path: Path, index_location: str | Path) -> None:
    db, marker = index_location, tmp_path / "marker"
    proc = _child(db, "hang", marker)
    try:
        assert wait_for(marker.exists, timeout=30), "the item never started"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert _row_at(db, "slow", "item-1").state == "running"
    proc = _child(db, "finish", marker)
    assert proc.wait(30) == 0
    row = _row_at(db, "slow", "item-1")
    assert (row.state, row.attempts) == ("done", 2), "the interrupted run counts an attempt"
    assert marker.read_text() == "2\n"


def test_sigkill_every_time_ends_failed_after_max_attempts(tmp_path: Path, index_location: str | Path) -> None:
    db, marker = index_location, tmp_path / "marker"
    for attempt in (1, 2, 3):  # max_attempts = 3 in the child
        marker.unlink(missing_ok=True)
        proc = _child(db, "hang", marker)
        try:
            assert wait_for(marker.exists, timeout=30)
            assert marker.read_text() == f"{attempt}\n"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    proc = _child(db, "hang", marker)
    assert proc.wait(30) == 0, "the fourth start ends the row instead of running it"
    row = _row_at(db, "slow", "item-1")
    assert (row.state, row.reason) == ("failed", "interrupted 3 times")
    assert marker.read_text() == "gave up: interrupted 3 times\n"


def test_a_kind_registered_after_start_runs_what_waited(db: tuple[Index, IndexWriter]) -> None:
    """The REST front end registers its kinds when it starts: rows queued before then wait, then run."""
    index, writer = db
    queue = WorkQueue(writer, poll_interval=0.02)
    queue.register("early", Recorder(), limit=1)
    queue.enqueue("late", "r1")
    queue.start()
    try:
        time.sleep(0.2)
        assert _row(index, "late", "r1").state == "queued", "no handler yet: the row waits"
        late = Recorder()
        queue.register("late", late, limit=1)
        assert wait_for(lambda: _ended(index, "late", "r1"))
        with pytest.raises(ValueError):
            queue.register("late", late, limit=1)
    finally:
        queue.stop()
    assert [r for r, _a, _t in late.runs] == ["r1"]
