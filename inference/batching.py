"""Micro-batching: work items from concurrent jobs become full backend requests.

One :class:`MicroBatcher` per loaded model owns one worker thread. Callers
:meth:`~MicroBatcher.submit` single items (a slice, an image, a tile) and get a
:class:`concurrent.futures.Future` each. The worker waits for the first item,
then keeps collecting until ``max_batch`` items are queued or ``max_delay``
has passed since that first item (Triton's ``dynamic_batching`` with
``max_queue_delay_microseconds``), groups items of equal shape and dtype in
arrival order, and runs each group as one request.

Errors are isolated per item: an item that cannot be stacked or that a
backend rejects fails its own future; when a whole batch fails, its items are
retried one by one so that a single bad item fails alone.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from inference.errors import BackendError, InferenceError

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
RunBatch = Callable[[np.ndarray], Outputs]


@dataclass
class BatchStats:
    """Counters of one batcher (read them with :meth:`MicroBatcher.stats`)."""

    max_batch: int
    batches: int = 0
    items: int = 0
    failed_items: int = 0
    sizes: list[int] = field(default_factory=list)

    @property
    def fill_ratio(self) -> float:
        """Mean batch size over ``max_batch`` (1.0 = every request was full)."""
        return (self.items / self.batches / self.max_batch) if self.batches else 0.0


@dataclass
class _Work:
    item: np.ndarray
    future: Future[Outputs]


_STOP = object()
_FLUSH = object()


class MicroBatcher:
    """Collect items into batches and run them on a worker thread.

    Parameters
    ----------
    run : callable
        ``run(batch) -> {output name: array}``; every output's axis 0 is the batch.
    max_batch : int
        Largest batch one request carries.
    max_delay_s : float
        Longest time the first item of a batch waits for company.
    name : str
        Used in the thread name and in log lines.
    validate : callable, optional
        Called on each item at submit time; raising
        :class:`~inference.errors.InferenceError` fails that item alone.
    """

    def __init__(
        self,
        run: RunBatch,
        max_batch: int,
        max_delay_s: float,
        name: str = "model",
        validate: Callable[[np.ndarray], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._run = run
        self._max_batch = max_batch
        self._max_delay = max(0.0, max_delay_s)
        self._validate = validate
        self._name = name
        self._queue: queue.Queue[_Work | object] = queue.Queue()
        self._stats = BatchStats(max_batch=max_batch)
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    def submit(self, item: np.ndarray) -> Future[Outputs]:
        """Queue one item; the future resolves to its outputs (batch axis removed)."""
        future: Future[Outputs] = Future()
        if self._closed:
            future.set_exception(BackendError(f"batcher for {self._name!r} is closed"))
            return future
        if self._validate is not None:
            try:
                self._validate(item)
            except InferenceError as exc:
                future.set_exception(exc)
                return future
        self._queue.put(_Work(item, future))
        return future

    def submit_many(self, items: Iterable[np.ndarray], flush: bool = False) -> list[Future[Outputs]]:
        """Queue several items in order; return their futures in the same order.

        With ``flush``, the caller declares it has nothing more to add: the
        worker stops waiting for company once these items are collected and
        nothing else is queued, instead of sitting out ``max_delay``.
        """
        futures = [self.submit(item) for item in items]
        if flush and not self._closed:
            self._queue.put(_FLUSH)
        return futures

    def stats(self) -> BatchStats:
        """A copy of the counters."""
        with self._lock:
            return BatchStats(
                self._stats.max_batch, self._stats.batches, self._stats.items, self._stats.failed_items, list(self._stats.sizes)
            )

    def close(self) -> None:
        """Stop the worker after the queued items; later submits fail at once."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()

    def _collect(self, first: _Work) -> tuple[list[_Work], bool]:
        pending = [first]
        deadline = time.monotonic() + self._max_delay
        stop = False
        while len(pending) < self._max_batch:
            remaining = deadline - time.monotonic()
            try:
                work = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if work is _STOP:
                stop = True
                break
            if work is _FLUSH:
                if self._queue.empty():
                    break
                continue
            assert isinstance(work, _Work)
            pending.append(work)
        return pending, stop

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            if first is _FLUSH:
                continue
            assert isinstance(first, _Work)
            pending, stop = self._collect(first)
            for group in _group(pending, self._max_batch):
                self._execute(group)
            if stop:
                return

    def _execute(self, group: list[_Work]) -> None:
        live = [w for w in group if w.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            outputs = self._run(stack_views([w.item for w in live]))
            _check_batch_axis(outputs, len(live))
        except InferenceError as exc:
            if len(live) == 1:
                self._fail(live[0], exc)
                return
            log.warning("batch failed, retrying items one by one model=%s size=%d error=%s", self._name, len(live), exc)
            for work in live:
                self._run_single(work)
            return
        self._record(len(live))
        for i, work in enumerate(live):
            work.future.set_result({name: arr[i] for name, arr in outputs.items()})

    def _run_single(self, work: _Work) -> None:
        try:
            outputs = self._run(work.item[None])
            _check_batch_axis(outputs, 1)
        except InferenceError as exc:
            self._fail(work, exc)
            return
        self._record(1)
        work.future.set_result({name: arr[0] for name, arr in outputs.items()})

    def _fail(self, work: _Work, exc: InferenceError) -> None:
        with self._lock:
            self._stats.failed_items += 1
        work.future.set_exception(exc)

    def _record(self, size: int) -> None:
        with self._lock:
            self._stats.batches += 1
            self._stats.items += size
            self._stats.sizes.append(size)


def _group(pending: list[_Work], max_batch: int) -> list[list[_Work]]:
    """Split into runs of equal (shape, dtype), each at most ``max_batch`` long, keeping arrival order."""
    groups: dict[tuple[tuple[int, ...], str], list[_Work]] = {}
    for work in pending:
        groups.setdefault((work.item.shape, work.item.dtype.str), []).append(work)
    out: list[list[_Work]] = []
    for members in groups.values():
        out.extend(members[i : i + max_batch] for i in range(0, len(members), max_batch))
    return out


def _check_batch_axis(outputs: Outputs, size: int) -> None:
    for name, arr in outputs.items():
        if arr.shape[:1] != (size,):
            raise BackendError(f"output {name!r} has shape {arr.shape}, expected batch axis {size}")


def stack_views(arrays: list[np.ndarray]) -> np.ndarray:
    """``np.stack(arrays)``, without the copy when they are consecutive slices of one C-contiguous array.

    A job's slices are views of its preprocessed volume, and a job's outputs
    are views of one batch output; re-stacking them would copy every voxel
    once more per stage for nothing.
    """
    first = arrays[0]
    base = first.base
    if isinstance(base, np.ndarray) and base.flags.c_contiguous and all(a.base is base and a.flags.c_contiguous for a in arrays):
        start = first.__array_interface__["data"][0]
        if all(a.__array_interface__["data"][0] == start + i * first.nbytes and a.dtype == first.dtype for i, a in enumerate(arrays)):
            offset = start - base.__array_interface__["data"][0]
            if offset + len(arrays) * first.nbytes <= base.nbytes:
                return np.ndarray((len(arrays), *first.shape), dtype=first.dtype, buffer=base, offset=offset)
    return np.stack(arrays)
