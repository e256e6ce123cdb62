"""A crash-tolerant process pool for natively compiled codecs.

The codecs behind pydicom's backends (libjpeg, OpenJPEG, CharLS) are C/C++; a
malformed stream can crash one of them outright. Decoding in worker processes
turns such a crash into a failed item: when the pool breaks, it is rebuilt and
every item that was in flight is re-run alone, so only the item that crashes
again fails, with a :class:`~dicom_node.errors.DecodeError` saying so. Results
stream back with a bounded number of items in flight, so the caller can write
each into a preallocated array and peak memory stays near the output size.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from dicom_node.errors import DecodeError, PixelError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def default_workers(configured: int | None = None) -> int:
    """Return the worker count: ``configured`` when positive, else one per CPU core.

    Mirrors ``pixels.decode_workers`` in the node configuration (0 = one per core).
    """
    if configured:
        return configured
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class DecodePool:
    """Worker processes that run decode tasks and survive codec crashes.

    Parameters
    ----------
    workers : int, optional
        Number of processes (default: one per CPU core).
    max_in_flight : int, optional
        Items submitted but not yet consumed (default: twice ``workers``);
        bounds the memory held by results waiting to be copied out.

    Notes
    -----
    Workers are started with the ``spawn`` method: the node runs threads
    (pynetdicom, the API server) and ``fork`` would copy their locks mid-state.
    """

    def __init__(self, workers: int | None = None, *, max_in_flight: int | None = None) -> None:
        self.workers = default_workers(workers)
        self.max_in_flight = max_in_flight or 2 * self.workers
        self._executor: ProcessPoolExecutor | None = None
        self.rebuilds = 0

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            ctx = multiprocessing.get_context("spawn")
            self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        return self._executor

    def _rebuild(self) -> None:
        self.rebuilds += 1
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        log.warning("decode worker process died; pool rebuilt (rebuild %d)", self.rebuilds)

    def imap(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[int, R | PixelError]]:
        """Run ``fn`` over ``items`` in the workers, yielding ``(index, result or error)``.

        Results come in completion order. A :class:`PixelError` raised by ``fn``
        is yielded, not raised; a worker crash yields a :class:`DecodeError` for
        the one item that crashes when re-run alone.

        Parameters
        ----------
        fn : callable
            A module-level function (picklable), run in a worker.
        items : iterable
            Arguments, one per call.
        """
        pending: deque[tuple[int, T]] = deque(enumerate(items))
        in_flight: dict[Future[R], tuple[int, T]] = {}
        while pending or in_flight:
            while pending and len(in_flight) < self.max_in_flight:
                idx, item = pending.popleft()
                in_flight[self._pool().submit(fn, item)] = (idx, item)
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            suspects: list[tuple[int, T]] = []
            for fut in done:
                idx, item = in_flight.pop(fut)
                outcome = _outcome(fut)
                if outcome is _BROKEN:
                    suspects.append((idx, item))
                else:
                    yield idx, outcome
            if suspects:
                # Every future in flight fails once the pool breaks; find the culprit by re-running each alone.
                suspects.extend(in_flight.values())
                for fut in in_flight:
                    fut.cancel()
                in_flight.clear()
                self._rebuild()
                for idx, item in sorted(suspects, key=lambda s: s[0]):
                    yield idx, self._run_alone(fn, item)

    def _run_alone(self, fn: Callable[[T], R], item: T) -> R | PixelError:
        outcome = _outcome(self._pool().submit(fn, item))
        if outcome is _BROKEN:
            self._rebuild()
            return DecodeError(f"decoder process crashed on {_label(item)} (codec fault); item failed, node continues")
        return outcome


class _Broken:
    """Marker: the worker died (segfault, abort, out of memory)."""


_BROKEN: Any = _Broken()


def _outcome(fut: Future[Any]) -> Any:
    """Return the future's result, its PixelError, or ``_BROKEN`` when the worker died."""
    try:
        return fut.result()
    except BrokenProcessPool:
        return _BROKEN
    except PixelError as exc:
        return exc


def _label(item: object) -> str:
    """Name an item for a log line without its folder (folders may carry patient names)."""
    if isinstance(item, tuple) and item:
        item = item[0]
    return os.path.basename(str(item))
