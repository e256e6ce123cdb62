"""The one durable work queue: a ``work`` table, per-kind handlers, one pool of worker threads.

Every kind of background work (series jobs, result deliveries, invocations, webhooks, session
retrievals) is enqueued here as ``(kind, ref)`` and run by the handler registered for its kind.
The queue owns what used to be repeated by each engine:

- the state machine (:mod:`dicom_node.index.work`): queued -> running -> done | retry | failed |
  dead-letter, durably, so a restart resumes where the previous process stopped;
- retries: a :class:`~dicom_node.workqueue.item.Retry` parks the row until its ``next_attempt_at``
  (its own time, or the kind's :class:`~dicom_node.net.retry.RetryPolicy`: exponential backoff with
  jitter, honouring Retry-After); a spent policy ends the row ``dead-letter``;
- crash recovery: a running row holds a lease, renewed while its worker lives; the rows a dead
  process held are claimed again, each claim counting an attempt, and after ``max_attempts`` the row
  ends ``failed`` ("interrupted N times") so work that kills the node cannot kill it forever;
- stage timings (``with item.stage("decode"):``), stored with the row;
- concurrency: one pool of threads, at most ``limit`` items of a kind running at once.

Claims go through the single :class:`~dicom_node.index.IndexWriter` (one transaction each), so two
workers never take the same row.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from dicom_node.index import IndexWriter
from dicom_node.index import work as ops
from dicom_node.net.retry import RetryPolicy
from dicom_node.workqueue.item import DeadLetter, Done, Failed, Handler, Outcome, Retry, WorkItem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kind:
    """A registered kind: its handler, how many run at once, crash budget and retry policy."""

    name: str
    handler: Handler
    limit: int
    max_attempts: int
    retry: RetryPolicy


class WorkQueue:
    """Run queued work of every registered kind on one pool of worker threads.

    Parameters
    ----------
    writer : IndexWriter
        The single index writer (claims and state changes are its transactions).
    poll_interval : float
        Seconds an idle worker waits before looking for due work again (retries come due by time).
    lease : float
        Seconds a claim holds its row before another process may take it; renewed every third of it.
    clock : callable
        Epoch seconds (tests pass their own).
    """

    def __init__(self, writer: IndexWriter, poll_interval: float = 0.2, lease: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._writer = writer
        self._poll = poll_interval
        self._lease = lease
        self._clock = clock
        self._kinds: dict[str, Kind] = {}
        self._running: dict[str, int] = {}
        self._held: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        #: Until then (clock time) idle workers do not ask the index: the last look found nothing due.
        #: One look per poll interval serves the whole pool, so idle threads cost the writer almost nothing.
        self._quiet_until = 0.0

    def register(self, kind: str, handler: Handler, limit: int, max_attempts: int = 3,
                 retry: RetryPolicy | None = None) -> None:
        """Run ``kind`` with ``handler``, at most ``limit`` at once (0: the kind's rows wait, unrun).

        A kind registered after :meth:`start` (a front end's kinds, registered when it starts) adds
        ``limit`` threads to the pool; until then its rows wait, durably.

        Parameters
        ----------
        max_attempts : int
            Claims (runs, retries and runs interrupted by a crash) after which an interrupted run ends failed.
        retry : RetryPolicy, optional
            Schedules a :class:`Retry` that names no time; default: 10 attempts, 1 s doubling to 300 s, 10 % jitter.
        """
        policy = retry or RetryPolicy(attempts=10, initial=1.0, factor=2.0, cap=300.0, jitter=0.1)
        spec = Kind(kind, handler, max(0, limit), max(1, max_attempts), policy)
        with self._lock:
            if kind in self._kinds:
                raise ValueError(f"work kind {kind!r} is already registered")
            self._kinds[kind] = spec
            self._running[kind] = 0
            started = bool(self._threads)
        if started:
            self._writer.run(partial(ops.set_max_attempts, kind=spec.name, max_attempts=spec.max_attempts))
            self._end_exhausted(self._clock())
            self._spawn(spec.limit)
            self.wake()

    def registered(self, kind: str) -> bool:
        """True once ``kind`` has a handler."""
        with self._lock:
            return kind in self._kinds

    def enqueue(self, kind: str, ref: str, at: float | None = None) -> bool:
        """Queue ``(kind, ref)`` in its own transaction (see :meth:`enqueue_in`); True when queued."""
        queued: bool = self._writer.run(lambda c: self.enqueue_in(c, kind, ref, at))
        self.wake()
        return queued

    def enqueue_in(self, conn: sqlite3.Connection, kind: str, ref: str, at: float | None = None) -> bool:
        """Queue ``(kind, ref)`` inside the caller's writer transaction, so the domain row and its work commit together.

        Idempotent: work still open for ``(kind, ref)`` is left as it is; ended work is queued again.
        Call :meth:`wake` after the transaction committed.
        """
        spec = self._kinds.get(kind)
        return ops.enqueue(conn, kind, ref, self._clock(), spec.max_attempts if spec else 3, at)

    def wake(self) -> None:
        """Tell idle workers that work may be due."""
        with self._wake:
            self._quiet_until = 0.0
            self._wake.notify_all()

    def start(self) -> None:
        """Take over the rows a previous process left running, start the workers and the lease keeper."""
        now = self._clock()
        left = self._writer.run(lambda c: ops.expire_leases(c, now))
        if left:
            log.warning("work interrupted by a previous run will be claimed again count=%d", left)
        for spec in self._kinds.values():
            self._writer.run(partial(ops.set_max_attempts, kind=spec.name, max_attempts=spec.max_attempts))
        self._end_exhausted(now)
        self._stop.clear()
        keeper = threading.Thread(target=self._keep, name="work-leases", daemon=True)
        with self._lock:
            self._threads.append(keeper)
            size = sum(spec.limit for spec in self._kinds.values())
        keeper.start()
        self._spawn(size)

    def _spawn(self, count: int) -> None:
        with self._lock:
            threads = [threading.Thread(target=self._work, name=f"work-{len(self._threads) + n}", daemon=True)
                       for n in range(count)]
            self._threads.extend(threads)
        for thread in threads:
            thread.start()

    def stop(self) -> None:
        """Stop claiming; wait for the items running now to end (their outcomes are committed)."""
        self._stop.set()
        self.wake()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join()
        with self._lock:
            self._threads.clear()

    def running(self, kind: str) -> int:
        """Items of ``kind`` running now in this process."""
        with self._lock:
            return self._running.get(kind, 0)

    def limit(self, kind: str) -> int:
        """The concurrency limit of ``kind`` (0 when not registered)."""
        spec = self._kinds.get(kind)
        return spec.limit if spec else 0

    # --- workers ------------------------------------------------------------------------------------------------

    def _claim(self) -> ops.WorkRow | None:
        # Under the lock: which kinds have room and the claim itself, so a limit cannot be overshot.
        with self._lock:
            kinds = [k for k, spec in self._kinds.items() if self._running[k] < spec.limit]
            now = self._clock()
            if not kinds or now < self._quiet_until:
                return None
            row: ops.WorkRow | None = self._writer.run(lambda c: ops.claim(c, kinds, now, self._lease))
            if row is None:
                self._quiet_until = now + self._poll
            else:
                self._running[row.kind] += 1
                self._held.add(row.id)
            return row

    def _work(self) -> None:
        while not self._stop.is_set():
            row = self._claim()
            if row is None:
                with self._wake:
                    if not self._stop.is_set():
                        self._wake.wait(self._poll)
                continue
            try:
                self._run(self._kinds[row.kind], WorkItem.of(row))
            finally:
                with self._wake:
                    self._running[row.kind] -= 1
                    self._held.discard(row.id)
                    self._quiet_until = 0.0  # a slot of this kind is free: its waiting rows may be claimed
                    self._wake.notify_all()

    def _run(self, spec: Kind, item: WorkItem) -> None:
        try:
            outcome: Outcome = spec.handler.handle(item)
        except Exception as exc:  # noqa: BLE001 - a worker thread must outlive any handler bug
            # The traceback goes to the log; the row (and the user) get the error's type, never a trace.
            log.exception("work crashed kind=%s ref=%s", item.kind, item.ref)
            reason = f"internal error: {type(exc).__name__}"
            self._end(item, "failed", reason)
            self._give_up(spec, item, "failed", reason)
            return
        if isinstance(outcome, Done):
            self._end(item, "done", None)
        elif isinstance(outcome, Failed):
            self._end(item, "failed", outcome.reason)
        elif isinstance(outcome, DeadLetter):
            self._end(item, "dead-letter", outcome.reason)
        else:
            self._retry(spec, item, outcome)

    def _retry(self, spec: Kind, item: WorkItem, outcome: Retry) -> None:
        now = self._clock()
        if outcome.at is not None:
            at = outcome.at
        elif outcome.after is not None:
            at = now + outcome.after
        elif spec.retry.exhausted(item.attempts):
            reason = f"gave up after {item.attempts} attempts: {outcome.reason}"
            self._end(item, "dead-letter", reason)
            self._give_up(spec, item, "dead-letter", reason)
            return
        else:
            at = spec.retry.next_attempt_at(item.attempts, now, outcome.retry_after)
        self._end(item, "retry", outcome.reason, at)
        log.info("work retry kind=%s ref=%s attempt=%d in=%.1fs reason=%s", item.kind, item.ref, item.attempts,
                 max(0.0, at - now), outcome.reason)

    def _end(self, item: WorkItem, state: str, reason: str | None, at: float = 0.0) -> None:
        now, times = self._clock(), dict(item.stage_times)
        self._writer.run(lambda c: ops.finish(c, item.id, state, now, reason, at, times))
        if state in ("failed", "dead-letter"):
            log.warning("work %s kind=%s ref=%s reason=%s", state, item.kind, item.ref, reason)

    def _give_up(self, spec: Kind, item: WorkItem, state: str, reason: str) -> None:
        try:
            spec.handler.give_up(item, state, reason)
        except Exception:  # noqa: BLE001 - the row already ended; a handler bug must not kill the thread
            log.exception("give_up failed kind=%s ref=%s", item.kind, item.ref)

    # --- leases ---------------------------------------------------------------------------------------------------

    def _keep(self) -> None:
        """Every third of the lease: renew the leases of running items, end rows interrupted ``max_attempts`` times."""
        while not self._stop.wait(self._lease / 3):
            now = self._clock()
            with self._lock:
                held = sorted(self._held)
            if held:
                self._writer.run(partial(ops.renew, ids=held, until=now + self._lease))
            self._end_exhausted(now)

    def _end_exhausted(self, now: float) -> None:
        # Such rows exist only after a restart (or a lease that ran out): claims skip them, this ends them.
        with self._lock:
            kinds = list(self._kinds)
        for row in self._writer.run(partial(ops.exhausted, kinds=kinds, now=now)):
            reason = f"interrupted {row.attempts} times"
            log.warning("work failed kind=%s ref=%s reason=%s", row.kind, row.ref, reason)
            self._give_up(self._kinds[row.kind], WorkItem.of(row), "failed", reason)
