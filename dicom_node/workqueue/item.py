"""What a handler gets (:class:`WorkItem`), what it returns (:data:`Outcome`) and its :class:`Handler` protocol."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from dicom_node.index.work import WorkRow


@dataclass(frozen=True)
class Done:
    """The work is finished."""


@dataclass(frozen=True)
class Retry:
    """Run again later: at ``at`` (epoch seconds), or ``after`` seconds, or by the kind's retry policy.

    ``retry_after`` is a peer's Retry-After (seconds), honoured by the policy up to its cap. With
    neither ``at`` nor ``after``, a kind whose policy's attempts are spent ends ``dead-letter``.
    """

    reason: str
    at: float | None = None
    after: float | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class Failed:
    """The work cannot succeed (bad input, unknown model); ``reason`` says why."""

    reason: str


@dataclass(frozen=True)
class DeadLetter:
    """The work gave up on a peer (retries spent, permanent refusal); an operator may requeue it."""

    reason: str


#: What :meth:`Handler.handle` returns.
Outcome = Done | Retry | Failed | DeadLetter


@dataclass
class WorkItem:
    """One claimed row of the queue, handed to its kind's handler.

    Attributes
    ----------
    id : int
        The row's id.
    kind, ref : str
        The kind of work and the id of its domain row (job id, request UUID, session id).
    attempts : int
        Claims so far, this one included.
    max_attempts : int
        Claims after which an interrupted run ends failed.
    stage_times : dict
        Seconds per stage timed with :meth:`stage` (this run's).
    """

    id: int
    kind: str
    ref: str
    attempts: int
    max_attempts: int
    stage_times: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, row: WorkRow) -> WorkItem:
        """The item of a claimed row."""
        return cls(row.id, row.kind, row.ref, row.attempts, row.max_attempts)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name``; the queue stores the timings with the row when the run ends.

        A stage that raises is not recorded (it did not complete).
        """
        t0 = time.perf_counter()
        yield
        self.stage_times[name] = time.perf_counter() - t0


class Handler(Protocol):
    """Runs one kind of work. Registered with :meth:`dicom_node.workqueue.WorkQueue.register`."""

    def handle(self, item: WorkItem) -> Outcome:
        """Run ``item`` (its domain row is found by ``item.ref``) and say how it ended.

        An exception ends the item ``failed`` (the error's type named, its traceback logged) and
        :meth:`give_up` is called, so a handler need not catch what it cannot handle.
        """
        ...

    def give_up(self, item: WorkItem, state: str, reason: str) -> None:
        """The queue ended ``item`` as ``state`` (failed or dead-letter) without a normal outcome.

        Called after an exception in :meth:`handle`, when a run was interrupted ``max_attempts``
        times (the node died while running it), or when a :class:`Retry` spent the kind's retry
        policy. The handler records ``reason`` on its domain row.
        """
        ...
