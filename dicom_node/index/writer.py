"""The single index writer: batches operations into one transaction (group commit).

Every write to the index goes through :class:`IndexWriter`. An operation is a
function of the connection; the writer runs whatever is queued (up to
``max_batch``) inside one ``BEGIN IMMEDIATE`` transaction, each operation under
its own savepoint so one failure rolls back only itself, commits (one WAL fsync
for the whole batch), and only then resolves the futures. A C-STORE handler
waits on its future before answering success.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from dicom_node.errors import StorageError
from dicom_node.index import pg
from dicom_node.index.schema import migrate
from dicom_node.index.store import Location, connect

log = logging.getLogger(__name__)

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], Any]
#: How long a successful write probe is trusted; ``/readyz`` stays cheap under frequent polling.
PROBE_OK_SECONDS = 5.0
#: A failed probe is retried sooner, so readiness comes back soon after space is freed.
PROBE_FAILED_SECONDS = 1.0
#: PostgreSQL errors after which an operation succeeds when run again in a later transaction
#: (Appendix A, "Class 40 - Transaction Rollback": deadlock_detected, serialization_failure).
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
#: Most times one operation is run again after such an error before it fails.
MAX_RETRIES = 3


class IndexWriter:
    """Thread that owns the write connection of the index.

    Parameters
    ----------
    path : pathlib.Path or str
        The SQLite file, or a ``postgresql://`` URL (the writer then holds one connection of its own;
        a batch is one PostgreSQL transaction, each operation under its own savepoint, as on SQLite).
    durable : bool
        ``synchronous=FULL`` (every commit fsynced) when True; only a benchmark
        reference turns it off.
    max_batch : int
        Most operations per transaction.
    """

    def __init__(self, path: Location, durable: bool = True, max_batch: int = 256) -> None:
        self._path = path
        self._durable = durable
        self._max_batch = max_batch
        self._queue: queue.Queue[tuple[Operation, Future[Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
        self._started = False
        self._probe_lock = threading.Lock()
        self._probe: tuple[float, str | None] = (float("-inf"), None)
        #: Retries so far of operations re-queued after a deadlock (writer thread only), by future.
        self._retries: dict[int, int] = {}

    def start(self) -> None:
        """Bring the schema up to date (a no-op after :class:`~dicom_node.index.store.Index` did), start the thread.

        Raises
        ------
        StorageError
            The database cannot be opened, is newer than this code, or a migration failed.
        """
        conn = connect(self._path)
        try:
            migrate(conn, pg.redact(self._path) if isinstance(self._path, str) else self._path)
        finally:
            conn.close()
        self._thread.start()
        self._started = True

    def stop(self) -> None:
        """Finish queued operations and stop."""
        if self._started:
            self._queue.put(None)
            self._thread.join()
            self._started = False

    def submit(self, op: Callable[[sqlite3.Connection], T]) -> Future[T]:
        """Queue ``op``; the future resolves after its transaction committed."""
        future: Future[T] = Future()
        if not self._started:
            future.set_exception(StorageError("the index writer is not running"))
            return future
        self._queue.put((op, future))
        return future

    def run(self, op: Callable[[sqlite3.Connection], T], timeout: float = 60.0) -> T:
        """Submit ``op`` and wait for its committed result.

        Raises
        ------
        StorageError
            The operation or its commit failed, or the writer did not answer within
            ``timeout`` (a stuck or dead writer is a storage failure, not a network timeout).
        """
        try:
            return self.submit(op).result(timeout=timeout)
        except concurrent.futures.TimeoutError as exc:
            raise StorageError(f"the index writer did not answer within {timeout:g} s") from exc

    def probe(self, timeout: float = 5.0) -> str | None:
        """Whether the index can commit a write now: None when it can, else the reason.

        Upserts one ``meta`` row through the writer thread, so a full disk
        (SQLITE_FULL on the WAL), an I/O error, a lock held past the busy timeout
        or a stuck writer all show. The answer is cached (:data:`PROBE_OK_SECONDS`
        after a success, :data:`PROBE_FAILED_SECONDS` after a failure) so that
        frequent readiness polls cost at most one small commit every few seconds.
        """
        with self._probe_lock:
            checked_at, reason = self._probe
            ttl = PROBE_OK_SECONDS if reason is None else PROBE_FAILED_SECONDS
            if time.monotonic() - checked_at < ttl:
                return reason
            try:
                self.run(_touch_probe, timeout=timeout)
                reason = None
            except StorageError as exc:
                reason = f"index cannot write: {exc}"
            self._probe = (time.monotonic(), reason)
            return reason

    def _take_batch(self, first: tuple[Operation, Future[Any]]) -> tuple[list[Any], bool]:
        batch, stop = [first], False
        while len(batch) < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _run(self) -> None:
        conn = connect(self._path)
        if not self._durable:
            conn.execute("PRAGMA synchronous=OFF")
        try:
            stopping = False
            while True:
                # After the stop sentinel, operations re-queued after a deadlock still run (bounded retries).
                if stopping and self._queue.empty():
                    return
                first = self._queue.get()
                if first is None:
                    stopping = True
                    continue
                batch, stop = self._take_batch(first)
                try:
                    self._commit(conn, batch)
                except Exception as exc:  # noqa: BLE001 - the one writer thread must outlive any bug
                    # A bug outside the expected storage errors (a TypeError in an operation's
                    # bookkeeping, a driver error class not wrapped) used to end this thread, and
                    # every later write then waited its full timeout. Fail this batch, live on.
                    log.error("index writer batch failed error_class=%s batch=%d", type(exc).__name__, len(batch))
                    self._rollback(conn)
                    for _op, future in batch:
                        if not future.done():
                            future.set_exception(StorageError(f"index write failed: {type(exc).__name__}"))
                stopping = stopping or stop
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[tuple[Operation, Future[Any]]]) -> None:
        results: list[tuple[Future[Any], bool, Any]] = []
        again: list[tuple[Operation, Future[Any]]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for n, (op, future) in enumerate(batch):
                conn.execute(f"SAVEPOINT op{n}")
                try:
                    value = op(conn)
                except (sqlite3.Error, StorageError, ValueError, KeyError) as exc:
                    conn.execute(f"ROLLBACK TO op{n}")
                    if self._retry(exc, future):
                        # Nodes sharing PostgreSQL: this batch and another node's took the same rows in
                        # opposite orders (two series of one study), and PostgreSQL chose this operation
                        # to end the deadlock. Run alone, later, it succeeds; failing it would answer a
                        # C-STORE 0xA700 for a transient conflict.
                        again.append((op, future))
                        continue
                    results.append((future, False, exc))
                except Exception as exc:  # noqa: BLE001 - a bug in one operation fails that operation only
                    log.error("index operation failed error_class=%s", type(exc).__name__)
                    conn.execute(f"ROLLBACK TO op{n}")
                    results.append((future, False, StorageError(f"index operation failed: {type(exc).__name__}")))
                else:
                    results.append((future, True, value))
                conn.execute(f"RELEASE op{n}")
            conn.execute("COMMIT")
        except (sqlite3.Error, StorageError, OSError) as exc:  # StorageError: PostgreSQL's, wrapped by pg.py
            log.error("index commit failed error=%s batch=%d", exc, len(batch))
            self._rollback(conn)
            failure = StorageError(f"index commit failed: {exc}")
            for _op, future in batch:
                self._retries.pop(id(future), None)
                future.set_exception(failure)
            return
        for item in again:  # behind what is queued: the other node's transaction commits meanwhile
            self._queue.put(item)
        for future, ok, value in results:
            self._retries.pop(id(future), None)
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value if isinstance(value, StorageError) else StorageError(str(value)))

    def _retry(self, exc: BaseException, future: Future[Any]) -> bool:
        """Whether an operation that raised ``exc`` runs again in a later transaction (counted per future)."""
        if getattr(exc.__cause__, "sqlstate", None) not in RETRYABLE_SQLSTATES:
            return False
        tries = self._retries.get(id(future), 0)
        if tries >= MAX_RETRIES:
            return False
        self._retries[id(future)] = tries + 1
        log.warning("index operation retried after a transaction conflict attempt=%d", tries + 1)
        return True

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        """Roll back after a failed commit without ever ending the writer thread.

        On SQLITE_FULL or an I/O error SQLite may already have rolled back, or the
        ROLLBACK itself may fail; either way the next batch starts its own
        ``BEGIN IMMEDIATE``, so a failure here is logged and the thread lives on
        (before, a raising ROLLBACK killed the thread and every later write hung).
        """
        if not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except (sqlite3.Error, StorageError) as exc:
            log.error("index rollback failed error=%s", exc)


def _touch_probe(conn: sqlite3.Connection) -> None:
    """The write probe: one small upsert that must reach the WAL to commit."""
    conn.execute(
        "INSERT INTO meta(key, value) VALUES ('write_probe', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (repr(time.time()),),
    )
