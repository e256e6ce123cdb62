"""The poller service: one thread polls every enabled ``[[sources.pollers]]`` entry on its interval.

DICOMweb and DIMSE sources run the :class:`PollCycle` below; bucket prefixes
(``kind = "object"``) run :class:`dicom_node.sources.objects.ObjectPollCycle`. Both
share :class:`dicom_node.sources.cycle.CycleBase` (lease, cancellation, sink) and
everything this service does around a cycle: scheduling, backoff, ``stopped``, the
persisted watermark.

A poll cycle of one source (:class:`PollCycle`):

1. Query studies page by page (``limit = page_size``, ``offset`` growing) with
   ModalitiesInStudy, a StudyDate window (``study_date_days`` before today, but
   starting no later than the persisted watermark, see
   :mod:`dicom_node.index.sources`) and the poller's other filters.
2. Skip a study when this source already brought in as many instances as its
   NumberOfStudyRelatedInstances says; else list its series and retrieve each
   series whose NumberOfSeriesRelatedInstances exceeds what was brought in:
   the whole series when nothing of it was, else only the SOP Instance UIDs not
   in the seen set (a series that grew gets its new instances only).
3. Each retrieval runs in its own :class:`~dicom_node.sources.sink.RetrievalSink`
   (a pseudo-association with the poller's name as calling AE): released when it
   succeeded, aborted when it failed, so assembly waits for the retry instead of
   completing half a series. An instance enters the seen set only after the sink
   stored it durably (or refused it for good, so a broken object is not fetched
   on every poll).
4. At most ``max_studies`` studies with something new are retrieved per cycle;
   when that cap (or an error) ends the scan early the watermark stays where it
   was, so nothing is missed, and the next cycle continues.

Scheduling: ``next_poll_at`` is persisted. HTTP 429/503/504/5xx, connection
errors and other retryable source errors put the source in ``backoff`` for
``backoff_initial * 2**(failures-1)`` seconds (capped at ``backoff_max``) plus up
to 10 % jitter, or longer when the server's Retry-After asks for it (up to
``backoff_max``), on the node's one :class:`~dicom_node.net.retry.RetryPolicy`. HTTP 401/403, and any
non-retryable failure of the study query itself (a bad filter, a refused
association), put it in ``stopped``: it is not polled again until the service
restarts or ``dicom-node sources poll-now`` succeeds; /readyz reports it.

A lease in the state row lets only one process poll a source at a time, so the
service and ``poll-now`` in another process never fetch the same study twice.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from dicom_node.config.sources import Poller
from dicom_node.errors import DicomNodeError, SourceError, StorageError
from dicom_node.index import sources as state
from dicom_node.net.retry import RetryPolicy
from dicom_node.objects import ObjectStores
from dicom_node.sources.cycle import LEASE, Arrived, CycleBase, CycleReport, PollCancelled
from dicom_node.sources.factory import make_source
from dicom_node.sources.objects import ObjectPollCycle, ObjectSource
from dicom_node.sources.sink import NodeStorage, Stored

if TYPE_CHECKING:
    from concurrent.futures import Future

    from dicom_node.sources.base import Source

log = logging.getLogger(__name__)

def study_filters(poller: Poller, watermark: str | None, today: dt.date) -> tuple[dict[str, str], str | None]:
    """Matching keys of the study query, and the window start the watermark advances to after a full scan."""
    filters: dict[str, str] = {}
    if poller.modalities:
        filters["ModalitiesInStudy"] = ",".join(poller.modalities)
    start = None
    if poller.study_date_days:
        start = (today - dt.timedelta(days=poller.study_date_days)).strftime("%Y%m%d")
        begin = min(start, watermark) if watermark else start
        filters["StudyDate"] = f"{begin}-{today:%Y%m%d}"
    filters.update(poller.filters)
    return filters, start


def _transient(status: int) -> bool:
    """PS3.4 0xA7xx (out of resources): the same instance may store fine later."""
    return status & 0xFF00 == 0xA700


class PollCycle(CycleBase):
    """One poll of one DICOMweb or DIMSE source (see the module docstring); :meth:`run` raises on failure."""

    def __init__(self, node: NodeStorage, poller: Poller, source: Source, owner: str, cancel: threading.Event,
                 today: dt.date | None = None) -> None:
        super().__init__(node, poller, owner, cancel, source.peer_host)
        self.source = source
        self.today = today or dt.date.today()
        self._conn: sqlite3.Connection | None = None

    def run(self, watermark: str | None) -> str | None:
        """Scan and retrieve; returns the new watermark when the scan was complete."""
        filters, start = study_filters(self.poller, watermark, self.today)
        self._conn = self.node.index.reader()
        try:
            complete = self._scan(filters)
        finally:
            self._conn.close()
        self.report.complete = complete
        return start if complete else None

    def _reader(self) -> sqlite3.Connection:
        """The index connection :meth:`run` opened for this cycle's seen-set queries."""
        if self._conn is None:
            raise StorageError("poll cycle used outside run()")
        return self._conn

    def _scan(self, filters: dict[str, str]) -> bool:
        limit, offset, worked = self.poller.page_size, 0, 0
        looked: set[str] = set()
        while True:
            self._check()
            page = self.source.find_studies(filters, limit, offset)
            fresh = [s for s in page if s.study_instance_uid not in looked]
            for study in fresh:
                looked.add(study.study_instance_uid)
                self.report.studies += 1
                seen = state.study_seen(self._reader(), self.name, study.study_instance_uid)
                if study.instances is not None and seen >= study.instances:
                    continue
                if worked >= self.poller.max_studies:
                    log.info("poll reached max_studies source=%s max_studies=%d", self.name, self.poller.max_studies)
                    return False
                worked += 1
                self._study(study.study_instance_uid, study.study_date)
            # A short page ends the scan; a page with nothing new means the server ignores offset.
            if len(page) < limit or not fresh:
                return True
            offset += len(page)

    def _study(self, study_uid: str, study_date: str = "") -> None:
        try:
            series = self.source.find_series(study_uid)
            have = state.series_seen(self._reader(), self.name, study_uid)
            for s in series:
                count = have.get(s.series_instance_uid, 0)
                if s.instances is not None and count >= s.instances:
                    continue
                wanted = None
                if count:
                    seen = state.seen_uids(self._reader(), self.name, study_uid, s.series_instance_uid)
                    wanted = [u for u in self.source.find_instances(study_uid, s.series_instance_uid) if u not in seen]
                    if not wanted:
                        continue
                self._retrieve(study_uid, s.series_instance_uid, wanted, study_date)
        except SourceError as exc:
            if exc.retryable or getattr(exc, "status", 0) in (401, 403):
                raise
            # One study the source cannot serve must not hold back the others.
            log.warning("study skipped source=%s study_uid=%s error=%s", self.name, study_uid, exc)
            message = str(exc)
            self.node.writer.run(lambda c: state.note_error(c, self.name, message, time.time()))

    def _retrieve(self, study_uid: str, series_uid: str, wanted: list[str] | None, study_date: str = "") -> None:
        """Retrieve one series (or ``wanted`` of it) in one pseudo-association."""
        pending: list[Future[None]] = []

        def on_stored(result: Stored) -> None:
            if result.sop_instance_uid and (result.status == 0 or not _transient(result.status)):
                seen = state.Seen(result.sop_instance_uid, study_uid, series_uid,
                                  result.outcome if result.status == 0 else "refused", study_date)
                pending.append(self.node.writer.submit(lambda c: state.mark_seen(c, self.name, [seen], time.time())))
            self._check()

        with self._sink(on_stored) as sink:
            result = self.source.retrieve(study_uid, series_uid, sink, wanted)
            for future in pending:
                future.result(timeout=60)
            transient = [s for s in sink.stored if s.status and _transient(s.status)]
            if transient:
                raise SourceError(f"{len(transient)} instance(s) could not be stored now: {transient[0].reason}",
                                  retryable=True)
        arrived = Arrived(study_uid, series_uid, len(result.stored), len(result.duplicates), len(result.failed))
        self.report.arrived.append(arrived)
        log.info("series retrieved source=%s series_uid=%s stored=%d duplicates=%d failed=%d", self.name,
                 series_uid, arrived.stored, arrived.duplicates, arrived.failed)


class PollerService:
    """Runs the poll cycles of the enabled pollers in one thread, with backoff and persisted status.

    Parameters
    ----------
    node : Node
        The running node (``config``, ``index``, ``writer``, ``spool``, ``ingestor``).
    tick : float
        How often the thread looks for a due source.
    objects : ObjectStores, optional
        The node's object storage, which ``kind = "object"`` pollers list and read.
    """

    def __init__(self, node: NodeStorage, tick: float = 0.25, objects: ObjectStores | None = None) -> None:
        self.node = node
        self.tick = tick
        self.objects = objects
        # Bucket sources keep what they saw of each folder between cycles (growth: see sources.objects).
        self._buckets: dict[str, ObjectSource] = {}
        self.pollers = {p.name: p for p in node.config.sources.pollers if p.enabled}
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._sources: dict[str, Source] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The lease is per process (owner); this lock keeps two threads of this process off one cycle at a time.
        self._cycle_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Reset stopped sources (their configuration may be fixed now), free dead leases, start the thread."""
        now = time.time()
        for poller in self.pollers.values():
            self.node.writer.run(functools.partial(state.reset_for_start, source=poller.name, kind=poller.kind, now=now))
        dead = [o for o in self._lease_owners() if _owner_dead(o)]
        if dead:
            self.node.writer.run(lambda c: state.release_dead(c, dead))
        self._thread = threading.Thread(target=self._loop, name="poller", daemon=True)
        self._thread.start()
        log.info("poller started sources=%s", ",".join(self.pollers))

    def stop(self) -> None:
        """Cancel the running cycle (its retrieval is aborted, nothing is lost) and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for source in self._sources.values():
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def _lease_owners(self) -> list[str]:
        conn = self.node.index.reader()
        try:
            return state.lease_owners(conn)
        finally:
            conn.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                ran = self.step()
            except (StorageError, sqlite3.Error) as exc:  # the index is unavailable: try again at the next tick
                log.error("poller step failed error=%s", exc)
                ran = False
            if not ran:
                self._stop.wait(self.tick)

    def step(self) -> bool:
        """Run the most overdue source, if any is due; True when one ran."""
        rows = self.status()
        now = time.time()
        due = [(r["next_poll_at"] or 0.0, name) for name, r in rows.items()
               if name in self.pollers and r["state"] != state.STOPPED and (r["next_poll_at"] or 0.0) <= now]
        if not due:
            return False
        report = self.run_cycle(min(due)[1], wait_lease=0.0)
        return report.state != state.POLLING or report.ok

    # -- one cycle ---------------------------------------------------------------------------------------------

    def source(self, poller: Poller) -> Source:
        """The (cached) source object of ``poller``."""
        if poller.name not in self._sources:
            self._sources[poller.name] = make_source(self.node.config, poller, self.node)
        return self._sources[poller.name]

    def _cycle(self, poller: Poller) -> CycleBase:
        """A new cycle of ``poller``: a bucket listing (``object``), else a DICOMweb/DIMSE query."""
        if poller.kind != "object":
            return PollCycle(self.node, poller, self.source(poller), self.owner, self._stop)
        if self.objects is None:
            raise SourceError(f"poller {poller.name}: object storage is not available here", retryable=False)
        bucket = self._buckets.get(poller.name)
        if bucket is None:
            bucket = self._buckets[poller.name] = ObjectSource(poller, self.objects)
        return ObjectPollCycle(self.node, poller, bucket, self.owner, self._stop)

    def run_cycle(self, name: str, *, poller: Poller | None = None, wait_lease: float = 60.0) -> CycleReport:
        """Poll ``name`` once now, whatever its state; the outcome is persisted and returned.

        Parameters
        ----------
        name : str
            The poller.
        poller : Poller, optional
            Its configuration when it is not an enabled poller of this service (``poll-now`` of a disabled one).
        wait_lease : float
            Seconds to wait while another cycle (this process or another) polls; 0 = do not wait.
        """
        poller = poller or self.pollers[name]
        locked = self._cycle_lock.acquire(timeout=wait_lease) if wait_lease > 0 else self._cycle_lock.acquire(False)
        if not locked:
            return CycleReport(name, ok=False, state=state.POLLING, error="another poll of this process is running")
        try:
            return self._run_cycle(name, poller, wait_lease)
        finally:
            self._cycle_lock.release()

    def _run_cycle(self, name: str, poller: Poller, wait_lease: float) -> CycleReport:
        writer = self.node.writer
        writer.run(lambda c: state.ensure(c, name, poller.kind, time.time()))
        deadline = time.monotonic() + wait_lease
        while not writer.run(lambda c: state.acquire(c, name, self.owner, time.time(), time.time() + LEASE)):
            if time.monotonic() >= deadline or self._stop.wait(0.2):
                holder = self.status().get(name, {}).get("lease_owner")
                return CycleReport(name, ok=False, state=state.POLLING, error=f"being polled by {holder}")
        watermark = self.status().get(name, {}).get("watermark")
        try:
            cycle = self._cycle(poller)
        except (SourceError, StorageError, DicomNodeError) as exc:  # e.g. a remote missing from the config
            return self._failed(poller, CycleReport(name), exc)
        try:
            new_watermark = cycle.run(watermark)
        except PollCancelled as exc:
            writer.run(lambda c: state.release(c, name, self.owner, time.time()))
            cycle.report.ok, cycle.report.error = False, str(exc)
            return cycle.report
        except (SourceError, StorageError, DicomNodeError) as exc:
            return self._failed(poller, cycle.report, exc)
        except (sqlite3.Error, OSError) as exc:  # reading the seen set, or the spool: transient, back off
            return self._failed(poller, cycle.report, StorageError(f"{type(exc).__name__}: {exc}"))
        report = cycle.report
        now = time.time()
        writer.run(lambda c: state.succeeded(c, name, self.owner, now, now + poller.interval, report.retrieved,
                                             new_watermark))
        log.info("poll done source=%s studies=%d retrieved=%d complete=%s", name, report.studies, report.retrieved,
                 report.complete)
        return report

    def _failed(self, poller: Poller, report: CycleReport, exc: DicomNodeError) -> CycleReport:
        status = getattr(exc, "status", 0)
        retryable = bool(getattr(exc, "retryable", isinstance(exc, StorageError)))
        query_failed = report.studies == 0 and not report.arrived
        stop = status in (401, 403) or (not retryable and query_failed and isinstance(exc, SourceError))
        now = time.time()
        report.ok, report.error = False, str(exc)
        if stop:
            report.state = state.STOPPED
            self.node.writer.run(lambda c: state.failed(c, poller.name, self.owner, now, state.STOPPED, str(exc), None,
                                                        report.retrieved))
            log.error("source stopped source=%s reason=%s", poller.name, exc)
            return report
        conn = self.node.index.reader()
        try:
            failures = state.failures(conn, poller.name) + 1
        finally:
            conn.close()
        retry_after = getattr(exc, "retry_after", None)
        delay = backoff_policy(poller).delay(failures, float(retry_after) if retry_after is not None else None)
        report.state, report.retry_in = state.BACKOFF, delay
        self.node.writer.run(lambda c: state.failed(c, poller.name, self.owner, now, state.BACKOFF, str(exc),
                                                    now + delay, report.retrieved))
        log.warning("source backing off source=%s failures=%d delay=%.1fs error=%s", poller.name, failures, delay, exc)
        return report

    # -- status ------------------------------------------------------------------------------------------------

    def status(self) -> dict[str, dict[str, Any]]:
        """Persisted state rows by source name (see :mod:`dicom_node.index.sources`)."""
        conn = self.node.index.reader()
        try:
            return state.rows(conn)
        finally:
            conn.close()

    def readiness(self) -> dict[str, str]:
        """For /readyz: ``"ok"``, ``"backoff until ...: error"`` or ``"stopped: reason"`` per enabled source."""
        return readiness(self.status(), list(self.pollers))


def backoff_policy(poller: Poller) -> RetryPolicy:
    """The poller's backoff: from ``backoff_initial`` doubling to ``backoff_max``, 10 % jitter; it never gives up."""
    # A source is polled again however often it failed (attempts is not consulted); jitter spreads
    # the polls of several nodes that an outage of one server put in backoff at the same moment.
    return RetryPolicy(attempts=1000, initial=poller.backoff_initial, factor=2.0, cap=poller.backoff_max, jitter=0.1)


def readiness(rows: dict[str, dict[str, Any]], names: list[str]) -> dict[str, str]:
    """Readiness text per source from persisted rows (a stopped source makes the node not ready)."""
    out: dict[str, str] = {}
    for name in names:
        row = rows.get(name) or {}
        if row.get("state") == state.STOPPED:
            out[name] = f"stopped: {row.get('reason') or row.get('last_error') or 'unknown'}"
        elif row.get("state") == state.BACKOFF:
            until = dt.datetime.fromtimestamp(row.get("backoff_until") or 0, dt.UTC).strftime("%H:%M:%SZ")
            out[name] = f"backoff until {until}: {row.get('last_error') or ''}"
        else:
            out[name] = "ok"
    return out


def _owner_dead(owner: str) -> bool:
    """True when a lease owner ``host:pid:nonce`` is a process of this host that no longer runs."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
