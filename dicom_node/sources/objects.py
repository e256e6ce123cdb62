"""A bucket prefix as a pull source: new DICOM files under ``gs://``, ``s3://`` or ``az://`` are ingested.

A ``kind = "object"`` poller (:class:`~dicom_node.config.sources.Poller`) is scheduled by
:class:`~dicom_node.sources.poller.PollerService` like the DICOMweb and DIMSE pollers
(interval, lease, backoff, ``stopped`` on a refusal, the persisted watermark). One cycle
(:class:`ObjectPollCycle`):

1. lists the prefix through :class:`dicom_node.objects.ObjectStores` (recursive, at
   most ``max_objects``; the bucket must be allowlisted in ``[objects]``);
2. keeps the objects above the watermark, the largest ``(last modified, key digest)``
   up to which every object was handled (a SHA-256 digest of the key breaks ties of
   equal times, so the watermark the index keeps and ``sources list`` shows names no key); folder markers and empty objects count as handled;
3. groups them by folder (the key up to its last ``/``, where uploaders put a series)
   and reads a folder only once its new objects' listing (keys, sizes, ETags, times)
   stayed unchanged for ``settle`` seconds, across polls: a series still being uploaded
   waits, like the assembler's quiet period waits for a C-STORE association;
4. reads each object of a ready folder (``concurrency`` at once; up to 16 MiB with
   :meth:`ObjectStores.get`, larger ones streamed by :meth:`ObjectStores.download`
   into the spool's temporary folder, bounded by ``scp.max_dataset_bytes``) and stores
   it through a :class:`~dicom_node.sources.sink.RetrievalSink` (one pseudo-association
   per folder, calling AE = the poller's name, ``instances.source`` = ``object:<name>``),
   so it passes the same PS3.10 and ingest checks and starts the same jobs as a C-STORE;
5. moves the watermark over the handled objects, in ``(modified, key digest)`` order, up to
   the first one not handled (a folder still settling, a transient failure).

Objects above the watermark already handled are remembered in the index
(:func:`dicom_node.index.sources.seen_marks`: one ``source_seen`` row per object version,
identified by a digest of its key, ETag and size plus its modification time, written once the
object was stored durably or refused for good), so neither the next poll nor a restarted node,
nor another node polling the same database, reads them again; the rows the watermark passes are
dropped. A crash between an object's store and its row costs one re-read, which the ingestor
counts as a duplicate. A listing that reached ``max_objects`` may have left out keys with older
modification times, so the watermark does not move then (the report says the scan was
incomplete): keep a polled prefix smaller than that, for example by moving or expiring
what was read. An object that is overwritten (a new ETag, size or modification time: a new
version) is read again and stored like any arrival: with the same SOP Instance UID the
ingestor keeps the first copy as a duplicate, or replaces it under
``storage.duplicate_policy = "replace"``. Object keys are never logged (uploaders may put
identifiers in them).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from dicom_node.config.sources import Poller
from dicom_node.errors import SourceError
from dicom_node.index import instances
from dicom_node.index import sources as state
from dicom_node.objects import ObjectInfo, ObjectNotFound, ObjectStoreError, ObjectStores, ObjectTooLarge, ObjectUrl
from dicom_node.sources.cycle import Arrived, CycleBase
from dicom_node.sources.sink import NodeStorage, RetrievalSink, Stored

__all__ = ["ObjectPollCycle", "ObjectSource", "decode_mark", "encode_mark"]

log = logging.getLogger(__name__)

#: Chunk size when a downloaded file is fed to the sink.
_CHUNK = 1 << 20
#: Room for the File Meta Information above ``scp.max_dataset_bytes`` (which bounds the dataset).
_META_ROOM = 1 << 20
#: Objects up to this size are read into memory; larger ones are streamed through a spool temporary file.
MEMORY_READ = 16 << 20
#: Handled objects persisted per index write (the writer's group commit takes several at once anyway).
_SEEN_BATCH = 64
Mark = tuple[str, str]


def encode_mark(modified: dt.datetime, key: str) -> str:
    """The watermark text of an object: its UTC modification time (ISO 8601, microseconds), ``|``, its key's digest."""
    return f"{_iso(modified)}|{_digest(key)}"


def decode_mark(text: str | None) -> Mark | None:
    """``(iso time, key digest)`` of a watermark, or None when there is none or it is not one (another kind's)."""
    if not text or "|" not in text:
        return None
    when, _, key = text.partition("|")
    try:
        dt.datetime.fromisoformat(when)
    except ValueError:
        return None
    return when, key


def _iso(modified: dt.datetime) -> str:
    aware = modified if modified.tzinfo is not None else modified.replace(tzinfo=dt.UTC)
    return aware.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def object_id(info: ObjectInfo) -> str:
    """The seen-set id of one version of an object: ``obj:`` and a digest of its key, ETag and size."""
    version = f"{info.url.key}\0{info.etag or ''}\0{info.size}"
    return "obj:" + hashlib.sha256(version.encode("utf-8")).hexdigest()[:32]


def mark_text(info: ObjectInfo) -> str:
    """:func:`mark_of` as the text the index keeps (the watermark's form)."""
    return encode_mark(info.modified, info.url.key)


def mark_of(info: ObjectInfo) -> Mark:
    """The ``(modified, key digest)`` order of an object; fixed-width UTC times compare as text."""
    return _iso(info.modified), _digest(info.url.key)


def folder_of(info: ObjectInfo) -> str:
    """The folder of an object: its key up to the last ``/`` ("" at the prefix's top)."""
    return info.url.key.rpartition("/")[0]


@dataclass(frozen=True)
class _Sighting:
    """A folder's new objects as last listed, and since when (monotonic seconds) the listing is unchanged."""

    signature: frozenset[tuple[str, int, str, str]]
    since: float


class ObjectSource:
    """The bucket prefix of one ``kind = "object"`` poller, and what this process saw of it between polls.

    Parameters
    ----------
    poller : Poller
        The ``[[sources.pollers]]`` entry (``url``, ``settle``, ``max_objects``, ``concurrency``).
    stores : ObjectStores
        The node's object storage.
    """

    def __init__(self, poller: Poller, stores: ObjectStores) -> None:
        self.poller = poller
        self.stores = stores
        self.prefix = ObjectUrl.parse(poller.url)
        self.name = poller.name
        #: Recorded on the pseudo-associations: the bucket, not a host (the store's endpoint is configuration).
        self.peer_host = f"{self.prefix.scheme}://{self.prefix.bucket}"
        self._folders: dict[str, _Sighting] = {}
        #: Object version id -> mark text of what was handled above the watermark (the index's seen rows).
        self._done: dict[str, str] = {}
        self._lock = threading.Lock()

    def listing(self) -> tuple[list[ObjectInfo], bool]:
        """The objects under the prefix, and whether the listing reached its bound (may be incomplete).

        Raises
        ------
        SourceError
            The store refused (not retryable: the source stops) or could not be reached (retryable).
        """
        limit = min(self.poller.max_objects, self.stores.config.max_list_items)
        try:
            found = self.stores.list(self.prefix, max_items=limit)
        except ObjectStoreError as exc:
            raise SourceError(f"bucket source {self.name}: {exc}", retryable=exc.retryable) from exc
        return found, len(found) >= limit

    def load(self, conn: sqlite3.Connection) -> None:
        """Take the handled versions from the index: what this or another process stored before."""
        marks = state.seen_marks(conn, self.name)
        with self._lock:
            self._done = marks

    def handled(self, info: ObjectInfo) -> bool:
        """True when this version of the object was already handled (above the watermark)."""
        with self._lock:
            return self._done.get(object_id(info)) == mark_text(info)

    def remember(self, info: ObjectInfo) -> None:
        """Count this version of the object as handled (stored, already here, or refused for good)."""
        with self._lock:
            self._done[object_id(info)] = mark_text(info)

    def forget_below(self, mark: str) -> None:
        """Drop what the watermark (mark text) now covers, as the index's prune does."""
        with self._lock:
            self._done = {k: m for k, m in self._done.items() if m > mark}

    def ready(self, groups: dict[str, list[ObjectInfo]], now: float) -> tuple[list[str], list[str]]:
        """Split folders with new objects into ``(ready, settling)`` (see the module docstring, step 3)."""
        ready, settling = [], []
        settle = self.poller.settle
        for folder in sorted(groups):
            signature = frozenset((o.url.key, o.size, o.etag or "", _iso(o.modified)) for o in groups[folder])
            seen = self._folders.get(folder)
            if seen is None or seen.signature != signature:
                seen = self._folders[folder] = _Sighting(signature, now)
            if settle == 0 or now - seen.since >= settle:
                ready.append(folder)
            else:
                settling.append(folder)
        # Folders with nothing new any more are forgotten, so the map stays as small as the backlog.
        self._folders = {f: s for f, s in self._folders.items() if f in groups}
        return ready, settling

    def done_with(self, folder: str) -> None:
        """The folder was read: its sighting is no longer needed."""
        self._folders.pop(folder, None)


class ObjectPollCycle(CycleBase):
    """One poll of a bucket prefix (see the module docstring); :meth:`run` raises on failure.

    Parameters
    ----------
    node : NodeStorage
        Where objects are stored (spool, index, ingestor).
    poller : Poller
        The ``kind = "object"`` entry.
    source : ObjectSource
        The prefix and what this process saw of it (kept by the service between cycles).
    owner, cancel
        The lease owner id and the service's stop event (:class:`~dicom_node.sources.cycle.CycleBase`).
    """

    def __init__(self, node: NodeStorage, poller: Poller, source: ObjectSource, owner: str,
                 cancel: threading.Event) -> None:
        super().__init__(node, poller, owner, cancel, source.peer_host)
        self.source = source
        self._transient: list[str] = []
        self._failed = 0

    def run(self, watermark: str | None) -> str | None:
        """List, read the settled folders, and return the new watermark (None: keep the old one)."""
        self._check()
        conn = self.node.index.reader()
        try:
            self.source.load(conn)
        finally:
            conn.close()
        listing, truncated = self.source.listing()
        floor = decode_mark(watermark)
        above = [o for o in listing if floor is None or mark_of(o) > floor]
        for info in above:
            if info.url.key.endswith("/") or info.size == 0:  # folder markers and empty objects: nothing to read
                self.source.remember(info)
        fresh = [o for o in above if not self.source.handled(o)]
        groups: dict[str, list[ObjectInfo]] = {}
        for info in fresh:
            groups.setdefault(folder_of(info), []).append(info)
        ready, settling = self.source.ready(groups, time.monotonic())
        self.report.studies = len(groups)
        for folder in ready:
            self._check()
            self._read_folder(sorted(groups[folder], key=lambda o: o.url.key))
            self.source.done_with(folder)
        if self._transient:
            raise SourceError(f"bucket source {self.name}: {len(self._transient)} object(s) could not be stored "
                              f"now: {self._transient[0]}", retryable=True)
        if settling:
            log.info("bucket folders still settling source=%s folders=%d", self.name, len(settling))
        self.report.complete = not truncated and not settling
        if truncated:
            log.warning("bucket listing reached max_objects; the watermark stays source=%s max_objects=%d",
                        self.name, self.poller.max_objects)
            return None
        return self._advance(above, floor)

    def _advance(self, above: list[ObjectInfo], floor: Mark | None) -> str | None:
        """The highest mark up to which every listed object is handled; None when it does not move."""
        new: ObjectInfo | None = None
        for info in sorted(above, key=mark_of):
            if not self.source.handled(info):
                break
            new = info
        if new is None:
            return None
        mark = mark_of(new)
        self.source.forget_below(mark_text(new))
        return mark_text(new) if floor is None or mark > floor else None

    def _read_folder(self, infos: list[ObjectInfo]) -> None:
        """Read and store one folder's new objects in one pseudo-association."""
        outcomes: list[Stored] = []
        self._failed = 0  # objects of this folder refused or skipped for good
        seen: list[state.Seen] = []
        pending: list[Future[None]] = []
        with self._sink(lambda _stored: self._check()) as sink:
            try:
                for info, got in self._transfers(infos, sink):
                    if isinstance(got, Stored):
                        outcomes.append(got)
                    outcome = self._judge(info, got)
                    if outcome is not None:
                        self.source.remember(info)
                        seen.append(state.Seen(object_id(info), "", "", outcome, mark_text(info)))
                    if len(seen) >= _SEEN_BATCH:
                        pending.append(self._mark_seen(seen))
                        seen = []
            finally:
                # Also when the cycle ends early: what was stored stays stored, so it must not be read again.
                if seen:
                    pending.append(self._mark_seen(seen))
                for future in pending:
                    future.result(timeout=60)
        self._report(outcomes, self._failed)

    def _judge(self, info: ObjectInfo, got: Stored | ObjectStoreError) -> str | None:
        """The seen-set outcome of one object, or None when it must be tried again (out of resources, transient)."""
        if isinstance(got, Stored):
            if got.status and got.status & 0xFF00 == 0xA700:  # out of resources: try again later
                self._transient.append(got.reason or "out of resources")
                return None
            if not got.status:
                return got.outcome or "stored"
            self._failed += 1
            log.warning("bucket object refused source=%s status=0x%04X reason=%s", self.name, got.status, got.reason)
            return "refused"
        if isinstance(got, (ObjectNotFound, ObjectTooLarge)) or not got.retryable:
            self._failed += 1  # deleted since the listing, over the cap, or refused: a retry cannot help
            log.warning("bucket object skipped source=%s error=%s", self.name, _redact(got, info))
            return "refused"
        self._transient.append(_redact(got, info))
        return None

    def _mark_seen(self, seen: list[state.Seen]) -> Future[None]:
        """Persist handled object versions; the writer commits them with the stores' own rows."""
        rows = list(seen)
        return self.node.writer.submit(lambda c: state.mark_seen(c, self.name, rows, time.time()))

    def _transfers(self, infos: list[ObjectInfo], sink: RetrievalSink) -> Iterator[tuple[ObjectInfo, Stored | ObjectStoreError]]:
        """Each object read and stored by ``concurrency`` workers; outcomes in the order of ``infos``.

        Workers both read and store: the ingestor takes concurrent stores (as from several
        associations), so their fsyncs overlap and the index writer commits them together.
        A refusal of the store (access denied) ends the cycle as a :class:`SourceError`;
        other store errors are handed back per object. Read-ahead is bounded.
        """
        width = self.poller.concurrency
        pending: list[tuple[ObjectInfo, Future[Stored]]] = []
        queue = iter(infos)
        with ThreadPoolExecutor(max_workers=width, thread_name_prefix=f"bucket-{self.name}") as pool:
            try:
                while True:
                    while len(pending) < 2 * width:
                        info = next(queue, None)
                        if info is None:
                            break
                        pending.append((info, pool.submit(self._transfer, info, sink)))
                    if not pending:
                        return
                    info, future = pending.pop(0)
                    try:
                        yield info, future.result()
                    except ObjectStoreError as exc:
                        if exc.retryable or isinstance(exc, (ObjectNotFound, ObjectTooLarge)):
                            yield info, exc
                        else:  # access denied: every other object would be refused too
                            raise SourceError(f"bucket source {self.name}: {_redact(exc, info)}",
                                              retryable=False) from exc
            finally:
                for _info, future in pending:
                    future.cancel()

    def _transfer(self, info: ObjectInfo, sink: RetrievalSink) -> Stored:
        """Read one object and store it through ``sink`` (a worker thread).

        Objects up to ``MEMORY_READ`` bytes are read into memory (:meth:`ObjectStores.get`)
        and handed to the sink at once; larger ones are streamed to a spool temporary file
        (:meth:`ObjectStores.download`) and fed from there, so memory stays bounded by
        ``concurrency`` small objects whatever the size of a large one.
        """
        stores, cap = self.source.stores, self.node.config.scp.max_dataset_bytes + _META_ROOM
        if info.size <= MEMORY_READ:
            return sink.store_part10(stores.get(info.url, max_bytes=min(cap, 2 * MEMORY_READ)))
        dest = self.node.spool.tmp / f"{uuid.uuid4().hex}.obj.part"  # '.part': a crash leaves nothing behind
        try:
            stores.download(info.url, dest, max_bytes=cap)
            with dest.open("rb") as fh:
                return sink.store_part10(iter(lambda: fh.read(_CHUNK), b""))
        finally:
            dest.unlink(missing_ok=True)

    def _report(self, outcomes: list[Stored], failed: int) -> None:
        """One :class:`Arrived` per series the folder held (UIDs from the index, never from the key)."""
        conn = self.node.index.reader()
        try:
            series: dict[tuple[str, str], list[Stored]] = {}
            for stored in outcomes:
                if stored.status == 0:
                    where = instances.location_of(conn, stored.sop_instance_uid) or ("", "")
                    series.setdefault(where, []).append(stored)
        finally:
            conn.close()
        if not series and failed:
            series[("", "")] = []
        for n, ((study, series_uid), done) in enumerate(sorted(series.items())):
            arrived = Arrived(study, series_uid, sum(1 for s in done if s.outcome != "duplicate"),
                              sum(1 for s in done if s.outcome == "duplicate"), failed if n == 0 else 0)
            self.report.arrived.append(arrived)
            log.info("bucket series read source=%s series_uid=%s stored=%d duplicates=%d failed=%d", self.name,
                     series_uid, arrived.stored, arrived.duplicates, arrived.failed)


def _redact(exc: ObjectStoreError, info: ObjectInfo) -> str:
    """The error's message without the object's key (logged and kept as the source's last error)."""
    return str(exc).replace(str(info.url), f"an object in {info.url.scheme}://{info.url.bucket}")
