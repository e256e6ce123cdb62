"""Retrieval sessions (Clara AIAA style): series fetched or uploaded once, predicted on by session id.

A session is a row of the index (``sessions``, with its instances in
``session_instances``) and a folder ``<storage.root>/sessions/<session id>/``
holding its Part 10 files (see :mod:`dicom_node.sources.sessions_sink`). The id
is generated here (128 random bits, hex); nothing a peer sends becomes a path.

Kinds:

- ``upload``: the caller uploaded the files (``PUT /v1/sessions`` with a multipart body);
- ``dicom``: C-GET/C-MOVE from a configured ``[[sources.remotes]]`` entry (:class:`DimseSource`);
- ``dicomweb``: WADO-RS from a configured ``[[sources.pollers]]`` entry of kind ``dicomweb``
  (:class:`DicomwebSource`).

What is retrieved is what the narrowest identifier names (see
:func:`~dicom_node.sources.sessions_request.plan_of`): ``sop_instance_uid`` one
instance, else ``series_uid`` one series, else ``study_uid`` one study, else
``patient_id`` the patient's studies; a broader ``query_level`` never widens it.
A series or instance named without its study is first located by a SERIES- or
IMAGE-level C-FIND or QIDO-RS (:meth:`RetrievalPlan.targets`).

Only configured nodes are ever contacted: a request naming an address, port and
AE title that match no configured remote is refused before any connection
(:class:`SessionRefused`). A retrieval is work of kind ``retrieval`` on the node's
work queue (:mod:`dicom_node.workqueue`, at most :data:`MAX_ACTIVE_RETRIEVALS` at
once; more are refused with 429): status ``retrieving``, then ``ready`` or
``failed`` with the reason. What to retrieve and from where is kept in memory
only (a PATIENT-level request's patient ID is never written to the index), so a
restart cannot resume a retrieval: it keeps ready sessions (rows and files are
durable), marks the retrievals it interrupted as failed, and removes folders
that no session row owns. The sweeper thread (a periodic scan, not queued work)
removes expired sessions with their files, waking at the next expiry.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from dicom_node.errors import DicomNodeError, StorageError
from dicom_node.index import sessions as session_queries
from dicom_node.sources.sessions_plan import RetrievalPlan, RetrievalSource, SessionRefused, SessionUnavailable
from dicom_node.sources.sessions_sink import SessionSink
from dicom_node.sources.sink import NodeStorage
from dicom_node.workqueue import Done, Failed, Outcome, Retry, WorkItem, WorkQueue

log = logging.getLogger(__name__)

_T = TypeVar("_T")

SESSION_ID_RE = re.compile(r"[0-9a-f]{32}")
#: Longest wait of the sweeper between two looks at the index (new sessions also wake it).
MAX_SWEEP_WAIT = 30.0
#: Most retrievals running at once (each holds an association or an HTTP connection to a PACS).
MAX_ACTIVE_RETRIEVALS = 8
#: The work kind of a session's retrieval (ref: the session id).
RETRIEVAL = "retrieval"
#: The image of a NIfTI session (Clara AIAA ``PUT /session/``), in the session folder; read by ``GET /session/{id}``.
NIFTI_FILE = "image.nii.gz"
#: Seconds before a retrieval another live node queued (and holds the plan of) is offered again.
HAND_BACK_AFTER = 1.0
#: Seconds a session folder without a row must be old before a node on a shared storage root removes it:
#: another node creates the folder just before the row (:meth:`SessionService.open`).
SHARED_ORPHAN_GRACE = 3600.0


class SessionService:
    """Session store, background retrievals and the expiry sweeper of one node.

    Parameters
    ----------
    node : NodeStorage
        The node's storage (``config``, ``index``, ``writer``, ``spool``; ``ingestor`` for the sinks).
    queue : WorkQueue
        The node's work queue; retrievals run on it as kind ``retrieval``.
    """

    def __init__(self, node: NodeStorage, queue: WorkQueue) -> None:
        self.node = node
        self.queue = queue
        self.root = Path(node.config.storage.root).resolve() / "sessions"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._lock = threading.Lock()
        self._started = False
        #: session id -> (cancel event, source, plan) of retrievals queued or running in this process.
        self._active: dict[str, tuple[threading.Event, RetrievalSource, RetrievalPlan]] = {}
        queue.register(RETRIEVAL, _RetrievalHandler(self), MAX_ACTIVE_RETRIEVALS)

    # --- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the folder, recover from a previous run, start the sweeper (idempotent)."""
        with self._lock:
            if self._started:
                return
            self._started = True
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the sessions folder {self.root}: {exc.strerror}") from exc
        self._fail_interrupted()
        self._remove_orphans()
        self._stop.clear()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="session-sweeper", daemon=True)
        self._sweeper.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the sweeper and cancel running retrievals (the queue's workers end them; the node stops it)."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            active = list(self._active.values())
            self._started = False
        for cancel, _source, _plan in active:
            cancel.set()
        if self._sweeper is not None and self._sweeper.is_alive():
            self._sweeper.join(max(0.1, timeout))

    def folder(self, session_id: str) -> Path:
        """The folder of a session (``session_id`` must be a server-generated id)."""
        if not SESSION_ID_RE.fullmatch(session_id):
            raise ValueError("not a session id")
        return self.root / session_id

    # --- creation ------------------------------------------------------------------------------------------

    def expiry_for(self, requested: float | None) -> float:
        """The expiry in seconds for a request: default ``sources.session_expiry``, at most ``max_session_expiry``.

        Raises
        ------
        SessionRefused
            400 ``invalid_expiry`` when ``requested`` is not a number of seconds in range.
        """
        cfg = self.node.config.sources
        if requested is None:
            return float(min(cfg.session_expiry, cfg.max_session_expiry))
        if not (math.isfinite(requested) and 0 < requested <= cfg.max_session_expiry):
            raise SessionRefused(400, "invalid_expiry", f"expiry must be more than 0 and at most "
                                 f"{cfg.max_session_expiry:g} seconds (sources.max_session_expiry); got {requested!r}")
        return float(requested)

    def open(self, kind: str, source: str, request: dict[str, Any], expiry: float) -> dict[str, Any]:
        """Create a session row (status ``retrieving``) and its folder; return the row."""
        session_id = uuid.uuid4().hex
        now = time.time()
        folder = self.folder(session_id)
        try:
            folder.mkdir(mode=0o750)
            self.node.spool.sync_dirs({self.root})
        except OSError as exc:
            raise StorageError(f"cannot create a session folder: {exc.strerror}") from exc
        row = {"id": session_id, "kind": kind, "source": source, "request": json.dumps(request),
               "status": "retrieving", "reason": None, "created_at": now, "updated_at": now,
               "expires_at": now + expiry}
        try:
            self.node.writer.run(lambda c: session_queries.insert(c, row))
        except StorageError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._wake.set()
        log.info("session opened id=%s kind=%s source=%s expiry=%.0f", session_id, kind, source, expiry)
        return row

    def sink(self, session_id: str) -> SessionSink:
        """A sink storing into the session's folder (uploads)."""
        return SessionSink(self.node, session_id, self.folder(session_id), self._cancel_event(session_id))

    def _cancel_event(self, session_id: str) -> threading.Event:
        with self._lock:
            entry = self._active.get(session_id)
        return entry[0] if entry else threading.Event()

    def finish(self, session_id: str, sink: SessionSink, failures: dict[str, str] | None = None,
               empty_reason: str = "no instance was stored") -> dict[str, Any] | None:
        """Mark the session ``ready`` when something was stored, else ``failed``; return the row."""
        failed = [s for s in sink.stored if s.status != 0]
        reasons = dict(failures or {})
        reasons.update({s.sop_instance_uid: s.reason or f"status 0x{s.status:04X}" for s in failed})
        if sink.ok_count:
            status = "ready"
            reason = (f"{len(reasons)} instance(s) not stored; first: {next(iter(reasons.values()))}"
                      if reasons else None)
        else:
            status = "failed"
            reason = f"{empty_reason}; first failure: {next(iter(reasons.values()))}" if reasons else empty_reason
        self._set_status(session_id, status, reason)
        log.info("session %s id=%s instances=%d failed=%d", status, session_id, sink.ok_count, len(reasons))
        return self.get(session_id)

    def store_nifti(self, session_id: str, data: bytes) -> dict[str, Any] | None:
        """Keep a NIfTI image (already read by :func:`dicom_node.pixels.nifti.read_nifti`) and mark the session ready.

        Gzipped on the way in when it is a plain ``.nii``, so the folder holds one name (:data:`NIFTI_FILE`).
        Returns the row, None when the session was closed meanwhile.
        """
        if not data.startswith(b"\x1f\x8b"):
            data = gzip.compress(data, compresslevel=6, mtime=0)
        folder = self.folder(session_id)
        temp = folder / f".{NIFTI_FILE}.part"
        try:
            with open(temp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, folder / NIFTI_FILE)
            self.node.spool.sync_dirs({folder})
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise StorageError(f"cannot write the session image: {exc.strerror}") from exc
        self._set_status(session_id, "ready", None)
        log.info("session ready id=%s image=nifti bytes=%d", session_id, len(data))
        return self.get(session_id)

    def nifti_file(self, session_id: str) -> Path | None:
        """The NIfTI image of a ready session that holds one; None for a DICOM session or an unknown id."""
        session = self.get(session_id) if isinstance(session_id, str) else None
        if session is None or session["status"] != "ready":
            return None
        path = self.folder(session_id) / NIFTI_FILE
        return path if path.is_file() else None

    def _set_status(self, session_id: str, status: str, reason: str | None) -> None:
        now = time.time()
        self.node.writer.run(lambda c: session_queries.set_status(c, session_id, status, reason, now))

    def start_retrieval(self, kind: str, source: RetrievalSource, source_name: str, plan: RetrievalPlan,
                        expiry: float) -> dict[str, Any]:
        """Open a session and queue the retrieval of ``plan`` from ``source``; return the row.

        Raises
        ------
        SessionRefused
            429 ``busy`` while :data:`MAX_ACTIVE_RETRIEVALS` retrievals run.
        """
        with self._lock:
            busy = len(self._active) >= MAX_ACTIVE_RETRIEVALS
        if busy:
            raise SessionRefused(429, "busy", f"{MAX_ACTIVE_RETRIEVALS} session retrievals are running; "
                                 "try again when one has finished")
        row = self.open(kind, source_name, {**plan.describe(), "node": source_name}, expiry)
        with self._lock:
            self._active[row["id"]] = (threading.Event(), source, plan)
        try:
            self.queue.enqueue(RETRIEVAL, row["id"])
        except StorageError:
            with self._lock:
                self._active.pop(row["id"], None)
            self._fail_quietly(row["id"], "the retrieval could not be queued")
            raise
        return row

    def held_elsewhere(self, session_id: str) -> bool:
        """Whether another live node queued this retrieval (nodes sharing a PostgreSQL index).

        Its plan (the patient ID of a patient-level request is never written to the index) lives in
        that node's memory, so this node hands the work row back instead of failing the session.
        """
        with self._lock:
            if session_id in self._active:
                return False
        lease, now = self.node.config.assembly.node_lease, time.time()
        return self._read(lambda c: session_queries.held_by_live_node(c, session_id, now, lease))

    def run_retrieval(self, session_id: str) -> bool:
        """Run the queued retrieval of ``session_id`` (the ``retrieval`` handler); True when the session is ready.

        A retrieval this process did not queue was interrupted by a restart: its session fails.
        """
        with self._lock:
            entry = self._active.get(session_id)
        if entry is None:
            session = self._read(lambda c: session_queries.get(c, session_id))
            if session is not None and session["status"] == "retrieving":
                self._fail_quietly(session_id, session_queries.INTERRUPTED)
            return False
        cancel, source, plan = entry
        self._retrieve(session_id, source, plan, cancel)
        session = self._read(lambda c: session_queries.get(c, session_id))
        return session is not None and session["status"] == "ready"

    def _retrieve(self, session_id: str, source: RetrievalSource, plan: RetrievalPlan, cancel: threading.Event) -> None:
        sink = SessionSink(self.node, session_id, self.folder(session_id), cancel)
        failures: dict[str, str] = {}
        finished = False
        try:
            for study, series, instances in plan.targets(source):
                if cancel.is_set():
                    break
                result = source.retrieve(study, series, sink, instances)
                failures.update(result.failed)
            level = {"IMAGE": "instance"}.get(plan.level, plan.level.lower())
            what = f"the source returned no instance for this {level}"
            self.finish(session_id, sink, failures, empty_reason=what)
            finished = True
        except (DicomNodeError, OSError) as exc:
            log.warning("session retrieval failed id=%s source=%s error=%s", session_id,
                        source.name, type(exc).__name__)
            self._fail_quietly(session_id, f"retrieval failed: {exc}")
            finished = True
        finally:
            if not finished:  # an unexpected error: never leave the session "retrieving" for ever
                self._fail_quietly(session_id, "retrieval stopped by an internal error (see the node's log)")
            close = getattr(source, "close", None)
            if callable(close):  # pooled HTTP connections of a DICOMweb source
                close()
            with self._lock:
                self._active.pop(session_id, None)

    def _fail_quietly(self, session_id: str, reason: str) -> None:
        try:
            self._set_status(session_id, "failed", reason[:1000])
        except StorageError as exc:
            log.error("could not record a failed session id=%s error=%s", session_id, exc)

    # --- reading ---------------------------------------------------------------------------------------------

    def _read(self, query: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self.node.index.reader()
        try:
            return query(conn)
        finally:
            conn.close()

    def get(self, session_id: str, now: float | None = None) -> dict[str, Any] | None:
        """The session with its series (UIDs, modality, instance count); None when unknown or expired."""
        if not SESSION_ID_RE.fullmatch(session_id):
            return None
        session = self._read(lambda c: session_queries.get(c, session_id))
        if session is None or session["expires_at"] <= (now or time.time()):
            return None
        series = self._read(lambda c: session_queries.series(c, session_id))
        session["series"] = series
        session["instances"] = sum(r["instances"] for r in series)
        return session

    def series_files(self, session_id: str, series_uid: str | None = None) -> list[Path]:
        """The files of one series of a ready session, for ``predict``.

        Raises
        ------
        SessionUnavailable
            Unknown or expired session, not ready, or ``series_uid`` missing while it holds several series.
        """
        session = self.get(session_id) if isinstance(session_id, str) else None
        if session is None:
            raise SessionUnavailable(f"no session {str(session_id)[:64]!r} (unknown, deleted or expired)")
        if session["status"] != "ready":
            why = f": {session['reason']}" if session["reason"] else ""
            raise SessionUnavailable(f"session {session_id} is {session['status']}{why}; predict once it is ready")
        uids = [s["series_instance_uid"] for s in session["series"]]
        if series_uid is None:
            if len(uids) != 1:
                raise SessionUnavailable(f"session {session_id} holds {len(uids)} series; name one with series_uid "
                                         f"({', '.join(uids[:10])})")
            series_uid = uids[0]
        elif series_uid not in uids:
            raise SessionUnavailable(f"session {session_id} holds no series {series_uid[:64]!r}")
        wanted = series_uid
        paths = self._read(lambda c: session_queries.series_paths(c, session_id, wanted))
        folder = self.folder(session_id)
        return [folder / p for p in paths]

    # --- removal ---------------------------------------------------------------------------------------------

    def delete(self, session_id: str) -> bool:
        """Close a session: cancel its retrieval, remove its rows, then its files. False when unknown."""
        if not SESSION_ID_RE.fullmatch(session_id):
            return False
        with self._lock:
            entry = self._active.get(session_id)
        if entry is not None:
            entry[0].set()
        existed = self.node.writer.run(lambda c: _delete_rows(c, [session_id]))
        self._remove_folder(session_id)
        if existed:
            log.info("session closed id=%s", session_id)
        return bool(existed)

    def sweep(self, now: float | None = None) -> int:
        """Remove expired sessions with their files; returns how many."""
        now = time.time() if now is None else now
        at = now
        expired = self._read(lambda c: session_queries.expired(c, at))
        if not expired:
            return 0
        with self._lock:
            for session_id in expired:
                if session_id in self._active:
                    self._active[session_id][0].set()
        self.node.writer.run(lambda c: _delete_rows(c, expired))
        for session_id in expired:
            self._remove_folder(session_id)
        log.info("expired sessions removed count=%d", len(expired))
        return len(expired)

    @property
    def _shared(self) -> bool:
        """True when other nodes share this node's index (PostgreSQL) and storage root."""
        return self.node.config.storage.database is not None

    def _fail_interrupted(self) -> None:
        """Fail the sessions left ``retrieving`` by a process that is gone (at start; on a shared index at
        every sweep too, so a dead node's uploads and retrievals fail once its heartbeat runs out)."""
        now, lease = time.time(), self.node.config.assembly.node_lease
        interrupted = self.node.writer.run(lambda c: session_queries.fail_interrupted(c, now, lease))
        if interrupted:
            log.warning("retrieval sessions interrupted by a restart marked failed count=%d", interrupted)

    def _next_expiry(self) -> float | None:
        return self._read(session_queries.next_expiry)

    def _sweep_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            wait = MAX_SWEEP_WAIT
            try:
                if self._shared:
                    self._fail_interrupted()
                self.sweep()
                nxt = self._next_expiry()
                if nxt is not None:
                    wait = min(MAX_SWEEP_WAIT, max(0.05, nxt - time.time() + 0.01))
            except (StorageError, sqlite3.Error, OSError) as exc:
                log.error("session sweep failed error=%s", exc)
            self._wake.wait(wait)

    def _remove_folder(self, session_id: str) -> None:
        folder = self.folder(session_id)
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("could not remove a session folder id=%s error=%s", session_id, exc.strerror)

    def _remove_orphans(self) -> None:
        """Remove folders no session row owns (a crash between the row delete and the folder removal)."""
        known = self._read(session_queries.ids)
        # On a shared root another node's folder may not have its row yet: only old leftovers go.
        newest = time.time() - SHARED_ORPHAN_GRACE if self._shared else float("inf")
        removed = 0
        for entry in os.scandir(self.root):
            if entry.is_dir(follow_symlinks=False) and SESSION_ID_RE.fullmatch(entry.name) and entry.name not in known \
                    and entry.stat(follow_symlinks=False).st_mtime <= newest:
                self._remove_folder(entry.name)
                removed += 1
        if removed:
            log.warning("removed session folders without a session count=%d", removed)


class _RetrievalHandler:
    """Kind ``retrieval``: one session's retrieval (:meth:`SessionService.run_retrieval`)."""

    def __init__(self, service: SessionService) -> None:
        self.service = service

    def handle(self, item: WorkItem) -> Outcome:
        """Retrieve into the session; the session row says ready or failed, with the reason."""
        if self.service.held_elsewhere(item.ref):
            return Retry("queued by another live node, which holds its plan", after=HAND_BACK_AFTER)
        with item.stage("retrieve"):
            ready = self.service.run_retrieval(item.ref)
        if ready:
            return Done()
        session = self.service._read(lambda c: session_queries.get(c, item.ref))
        return Failed(str(session["reason"]) if session and session["reason"] else "the session was closed")

    def give_up(self, item: WorkItem, state: str, reason: str) -> None:
        """The session fails with ``reason`` (never left ``retrieving``)."""
        with self.service._lock:
            self.service._active.pop(item.ref, None)
        self.service._fail_quietly(item.ref, reason)


def _delete_rows(conn: sqlite3.Connection, ids: list[str]) -> int:
    return session_queries.delete(conn, ids)
