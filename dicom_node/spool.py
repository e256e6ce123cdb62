"""The spool: durable Part 10 files under ``<storage.root>/spool``.

Names never contain peer-supplied values: a stored instance lives at
``spool/<h0h1>/<h>.dcm`` where ``h`` is the SHA-256 of its (validated) SOP
Instance UID, and an in-flight receive at ``tmp/<random>.part``. The 256 bucket
directories are created (and synced) once, so storing an instance changes one
directory entry. A file is acknowledged only after its data and its directory
entry were fsynced and its index row committed (see :mod:`dicom_node.index`).

With ``storage.spool_url`` the spool has a :class:`SpoolMirror` (an object store,
:mod:`dicom_node.spool_objects`): the durable copy several nodes share, while the
local directories become this node's write-through cache. An instance's object is
written before its index row commits (:meth:`Spool.place`), so nothing is
acknowledged without it; a reader on a node that did not receive the file goes
through :meth:`Spool.local`, which fetches it into the cache. Without a mirror
every method behaves exactly as before (the embedded default).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from dicom_node.errors import InsufficientSpaceError, StorageError

log = logging.getLogger(__name__)

_SYNC_FILE_RANGE_WRITE = 2
#: Fetches into the cache are serialised per file by one of this many locks (two readers of one
#: uncached file must not download it twice into the same temporary name).
_FETCH_LOCKS = 64
#: Concurrent downloads when a reader asks for many files at once (:meth:`Spool.local_many`).
FETCH_WORKERS = 8


class SpoolMirror(Protocol):
    """The durable copy of spool files and results shared by several nodes (an object store).

    ``relpath`` is relative to ``storage.root`` (``spool/<h0h1>/<h>.dcm``, ``results/...``): the
    mirror keeps the same layout under its prefix, so every node finds a file where it put it.
    """

    def put(self, relpath: str, source: Path) -> None:
        """Write ``source`` as the object of ``relpath``; durable when it returns. Raises StorageError."""
        ...

    def fetch(self, relpath: str, dest: Path) -> bool:
        """Download the object of ``relpath`` to ``dest`` (temp + rename); False when there is none.

        Raises StorageError when the store cannot be read.
        """
        ...


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux ``sync_file_range(2)``, used to start writeback while data still arrives.

    Returns the foreign function typed as what callers use (fd, offset, length,
    flags -> int); ctypes converts the arguments with the ``argtypes`` set here.
    """
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


class Spool:
    """Files of received instances and the temporary files being received.

    Parameters
    ----------
    root : pathlib.Path
        ``storage.root``; ``spool/`` and ``tmp/`` are created under it.
    fsync : bool
        fsync files and directories before they count as stored.
    min_free_bytes : int
        Refuse new data while the volume has less free space than this.
    mirror : SpoolMirror, optional
        The shared durable copy (``storage.spool_url``); None keeps the spool local only.
    """

    def __init__(self, root: Path, fsync: bool = True, min_free_bytes: int = 0,
                 mirror: SpoolMirror | None = None) -> None:
        self.root = Path(root).resolve()
        self.mirror = mirror
        self._fetch_locks = [threading.Lock() for _ in range(_FETCH_LOCKS)] if mirror is not None else []
        self.files = self.root / "spool"
        self.tmp = self.root / "tmp"
        self.fsync = fsync
        self.min_free_bytes = min_free_bytes
        self._sync_file_range = _load_sync_file_range() if fsync else None
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            created = [self.files / f"{n:02x}" for n in range(256) if not (self.files / f"{n:02x}").is_dir()]
            for bucket in created:
                bucket.mkdir(parents=True, exist_ok=True)
            if created:
                self.sync_dirs({self.files, self.root})
        except OSError as exc:
            raise StorageError(f"cannot create the spool under {self.root}: {exc.strerror}") from exc

    def clean_temp(self, quiet: bool = False, min_age: float = 0.0) -> int:
        """Remove half-written receives left by a crash; return how many were removed.

        ``min_age`` (seconds) spares files modified more recently: on a spool shared by several
        nodes, another node's receive in flight looks exactly like a crash's leftover.
        """
        removed = 0
        cutoff = time.time() - min_age
        for entry in self.tmp.iterdir():
            if entry.is_file() and entry.suffix == ".part" and (not min_age or _mtime(entry) < cutoff):
                entry.unlink(missing_ok=True)
                removed += 1
        if removed and not quiet:
            log.warning("removed half-written temporary files count=%d", removed)
        return removed

    def scan(self, referenced: Iterable[str], min_age: float = 0.0) -> tuple[int, int]:
        """Remove what a crash left behind: spool files no index row references, and half-written temps.

        A file reaches the spool by a rename before its index row commits, and
        the peer is answered only after the commit; a crash in between leaves a
        file nobody acknowledged and nothing will ever read. It is deleted, not
        quarantined: the sender was never told it was stored, so it still holds
        the data and resends it, and a quarantine folder would only grow with
        files no tool looks at. Run before the SCP listens (nothing is in flight).

        The cost is bounded for a big spool: ``referenced`` is streamed in sorted
        order and merged bucket by bucket with the sorted directory listing, so
        memory holds one bucket's names (about 1/256 of the spool), never the
        whole index; time is one directory walk.

        With a mirror only the local cache is scanned: objects in the shared store are
        never listed or deleted here, since other nodes index and read them.

        Parameters
        ----------
        referenced : iterable of str
            The spool-relative paths the index references, in ascending order.
        min_age : float
            Seconds: files modified more recently are kept. 0 (one node on its own spool: nothing
            is in flight before the SCP listens). Nodes sharing a spool and a database must pass
            a grace period, or a starting node deletes a file another node has just renamed into
            the spool and is about to commit and acknowledge.

        Returns
        -------
        tuple of int
            (orphans removed, temporary files removed).
        """
        started = time.monotonic()
        temps = self.clean_temp(quiet=True, min_age=min_age)
        cutoff = time.time() - min_age
        wanted = iter(referenced)
        current = next(wanted, None)
        orphans = examined = 0
        for bucket in sorted(p for p in self.files.iterdir() if p.is_dir()):
            with os.scandir(bucket) as entries:
                names = sorted(e.name for e in entries if e.is_file(follow_symlinks=False))
            for name in names:
                examined += 1
                rel = f"{bucket.name}/{name}"
                while current is not None and current < rel:
                    current = next(wanted, None)
                if current != rel and (not min_age or _mtime(bucket / name) < cutoff):
                    (bucket / name).unlink(missing_ok=True)
                    orphans += 1
        level = logging.WARNING if orphans or temps else logging.INFO
        # One line, counts only: no names (they are hashes of UIDs, but a count is all an operator needs).
        log.log(level, "spool scan at start orphans=%d temp=%d examined=%d seconds=%.2f",
                orphans, temps, examined, time.monotonic() - started)
        return orphans, temps

    def reserve_problem(self) -> str | None:
        """Why new data cannot be accepted for lack of space (free space under the reserve), or None."""
        if not self.min_free_bytes:
            return None
        free = self.free_bytes()
        if free < self.min_free_bytes:
            return f"free space {free} bytes is below the reserve storage.min_free_bytes={self.min_free_bytes}"
        return None

    def free_bytes(self) -> int:
        """Free bytes on the spool volume available to this process."""
        return shutil.disk_usage(self.root).free

    def check_space(self) -> None:
        """Raise :class:`InsufficientSpaceError` while free space is below the reserve."""
        if self.min_free_bytes and self.free_bytes() < self.min_free_bytes:
            raise InsufficientSpaceError(
                f"free space on the spool volume is below the reserve of {self.min_free_bytes} bytes"
            )

    def new_temp(self) -> tuple[int, Path]:
        """Create an exclusive temporary file for one incoming dataset."""
        path = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o640)
        except OSError as exc:
            raise StorageError(f"cannot create a temporary file: {exc.strerror}") from exc
        return fd, path

    def relpath_for(self, sop_instance_uid: str) -> str:
        """Spool-relative path of an instance; derived from a hash, never from the UID text."""
        digest = hashlib.sha256(sop_instance_uid.encode("ascii")).hexdigest()[:40]
        return f"{digest[:2]}/{digest}.dcm"

    def path_for(self, relpath: str) -> Path:
        """Absolute path of a spool-relative path (where the file is or would be; nothing is fetched)."""
        return self.files / relpath

    def local(self, relpath: str, result: bool = False) -> Path:
        """The local file of an indexed instance (spool-relative) or, with ``result``, of a result (root-relative).

        Every reader of stored files goes through here. Without a mirror this is a path
        join, as it always was. With one, a file this node does not hold (another node
        received or wrote it) is fetched from the object store into the cache first
        (temp + rename, capped by ``objects.max_object_bytes``); a file the store does
        not have either is returned absent, so callers see a missing file as before.

        Raises
        ------
        StorageError
            ``relpath`` leaves its directory (a damaged index row), or the store cannot be read.
        """
        base = self.root if result else self.files
        path = base / relpath
        if self.mirror is None:
            return path
        resolved = path.resolve()
        if base not in resolved.parents:
            raise StorageError("an indexed path leaves the storage root; refused")
        if resolved.is_file():
            return resolved
        key = resolved.relative_to(self.root).as_posix()
        with self._fetch_locks[hash(key) % _FETCH_LOCKS]:
            if not resolved.is_file():
                try:
                    resolved.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StorageError(f"cannot create a spool cache directory: {exc.strerror}") from exc
                self.mirror.fetch(key, resolved)
        return resolved

    def local_many(self, relpaths: Sequence[str], result: bool = False) -> list[Path]:
        """:meth:`local` of each path, in order; those missing from the cache are fetched concurrently.

        A job reads a whole series: one request after another would make its wait the sum of
        the store's latencies (tens of ms each on a cloud store), so up to :data:`FETCH_WORKERS`
        downloads run at once. Without a mirror this is the plain path join of each.
        """
        if self.mirror is None:
            return [self.local(r, result) for r in relpaths]
        base = self.root if result else self.files
        missing = [r for r in relpaths if not (base / r).is_file()]
        if len(missing) > 1:
            with ThreadPoolExecutor(max_workers=min(FETCH_WORKERS, len(missing)),
                                    thread_name_prefix="spool-fetch") as pool:
                list(pool.map(lambda r: self.local(r, result), missing))  # raises the first failure
        return [self.local(r, result) for r in relpaths]

    def publish(self, relpath: str) -> None:
        """Copy a file just written under ``storage.root`` (a result) to the mirror, if any; durable on return.

        Raises
        ------
        StorageError
            The object could not be written.
        """
        if self.mirror is not None:
            self.mirror.put(relpath, self.root / relpath)

    def start_writeback(self, fd: int, offset: int, length: int) -> None:
        """Ask the kernel to start writing a just-written range, so the final fsync waits less."""
        if self._sync_file_range is not None and length > 0:
            self._sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    def place(self, fd: int, temp: Path, relpath: str, exists: bool) -> None:
        """Make ``temp`` durable at ``relpath`` (data and directory entry) and close ``fd``.

        A new name is renamed first and synced after: one journal commit then
        carries both the data and the rename, and nothing is acknowledged
        before the index commit anyway. An existing (acknowledged) file is only
        replaced by data already on disk, so a crash cannot damage it. The
        directory sync runs here, in the association's thread, so concurrent
        associations sync in parallel rather than inside the index writer.
        The temp directory needs no sync: a lost unlink there only leaves a
        ``.part`` file, removed at start.

        With a mirror the object is written first, from ``temp``, while nothing
        local has changed yet: when the store refuses, the caller discards the temp
        and answers 0xA700, and neither an object nor a file was ever acknowledged.
        When the rename then fails, the object is left for a resend to overwrite
        (its key derives from the SOP Instance UID), and no index row refers to it.
        """
        final = self.files / relpath
        if self.mirror is not None:
            self.mirror.put(f"spool/{relpath}", temp)
        try:
            if exists and self.fsync:
                os.fsync(fd)
            os.replace(temp, final)
            if not exists and self.fsync:
                os.fsync(fd)
            os.close(fd)
            self.sync_dirs({final.parent})
        except OSError as exc:
            raise StorageError(f"cannot store the instance: {exc.strerror}") from exc

    def remove(self, relpath: str) -> None:
        """Delete a just-placed file whose index commit failed (it was never acknowledged).

        With a mirror its object stays: another node may have stored and acknowledged the same
        instance under the same key at the same moment, and deleting would lose that copy. An
        object no row references is read by no node, and a resend overwrites it.
        """
        try:
            (self.files / relpath).unlink(missing_ok=True)
        except OSError as exc:  # left for the start-up scan, which removes unreferenced files
            log.error("cannot remove an unindexed spool file error=%s", exc.strerror)

    def sync_dirs(self, dirs: set[Path]) -> None:
        """fsync directories so renames survive a power loss."""
        if not self.fsync:
            return
        for directory in dirs:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def discard(self, fd: int | None, temp: Path) -> None:
        """Close and delete a temporary file that will not be stored."""
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:
                log.debug("closing a discarded temporary file failed: %s", exc.strerror)
        temp.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    """Modification time, or now for a file that vanished meanwhile (it is then left alone)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()
