"""Deliver result objects to a named destination, once, with bounded retries.

:class:`Deliverer` ties the pieces together for the job worker (synchronous):

1. read the SOP Instance UIDs of the Part 10 files;
2. skip objects the ledger says the destination already stored (``sent``) or
   that were dead-lettered (``dead``; an operator requeues those);
3. send the rest by C-STORE (PS3.4 Annex B), STOW-RS (PS3.18 10.5) or as objects
   in a bucket (:mod:`dicom_node.delivery.objects`);
4. record each outcome as it arrives: ``sent`` right after a success, the
   next attempt time for a retryable failure (:class:`~dicom_node.net.retry.RetryPolicy`),
   ``dead`` for a permanent failure or when the policy's attempts are spent.

All ledger operations go through ``conn_runner`` (the index writer's ``run``),
so they share the index's single writer and its durability.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_node.config.delivery import (
    DeliveryConfig,
    Destination,
    DimseDestination,
    KnownPeer,
    ObjectDestination,
    ReplyToCaller,
    StowDestination,
)
from dicom_node.delivery.classify import Outcome, Verdict
from dicom_node.delivery.dimse import send_dimse
from dicom_node.delivery.objects import send_objects
from dicom_node.delivery.stowrs import send_stow
from dicom_node.errors import DeliveryError
from dicom_node.index import deliveries as ledger
from dicom_node.net.policy import OutboundError
from dicom_node.net.retry import RetryPolicy
from dicom_node.objects import ObjectStores

__all__ = ["Caller", "Deliverer", "DeliveryResult", "ObjectResult", "resolve_reply"]

log = logging.getLogger(__name__)

ConnRunner = Callable[[Callable[[sqlite3.Connection], Any]], Any]


@dataclass(frozen=True)
class Caller:
    """Who sent the study: the calling AE title and the peer's IP address."""

    ae_title: str
    host: str


@dataclass(frozen=True)
class ObjectResult:
    """What happened to one object at one destination in this call.

    ``state`` is ``sent`` (stored now), ``already_sent`` (skipped), ``pending``
    (retry at ``next_attempt_at``), ``dead`` (dead-lettered now) or
    ``already_dead`` (skipped: dead-lettered earlier).
    """

    path: Path
    sop_instance_uid: str
    state: str
    attempts: int = 0
    detail: str = ""
    next_attempt_at: float | None = None


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of :meth:`Deliverer.deliver` for one destination."""

    destination: str
    objects: list[ObjectResult] = field(default_factory=list)

    def count(self, *states: str) -> int:
        """Number of objects in any of ``states``."""
        return sum(1 for o in self.objects if o.state in states)

    @property
    def complete(self) -> bool:
        """True when nothing is left to retry (all stored, or dead-lettered)."""
        return self.count("pending") == 0

    @property
    def next_attempt_at(self) -> float | None:
        """Earliest retry time among pending objects, or None."""
        times = [o.next_attempt_at for o in self.objects if o.state == "pending" and o.next_attempt_at is not None]
        return min(times) if times else None


def resolve_reply(reply: ReplyToCaller, known_peers: Sequence[KnownPeer], caller: Caller | None) -> DimseDestination:
    """Turn a reply-to-caller destination into a concrete Storage SCP.

    DICOM has no return address (PS3.8): the calling AE title is looked up in
    ``known_peers``; an unlisted caller is answered at its source host on
    ``reply.port`` when set.

    Raises
    ------
    DeliveryError
        Not retryable, when the caller is unknown and no fallback port is set.
    """
    if caller is None:
        raise DeliveryError(f"destination {reply.name}: no caller recorded for these results", retryable=False)
    called_ae = reply.ae_titles.get(caller.ae_title, caller.ae_title)
    peer = next((p for p in known_peers if p.ae_title == caller.ae_title), None)
    if peer is not None:
        host, port = peer.host, peer.port
    elif reply.port is not None:
        host, port = caller.host, reply.port
    else:
        raise DeliveryError(
            f"destination {reply.name}: calling AE {caller.ae_title!r} is not in delivery.known_peers and no port is set",
            retryable=False,
        )
    try:
        return DimseDestination(
            name=reply.name, ae_title=called_ae, host=host, port=port, calling_ae=reply.calling_ae,
            acse_timeout=reply.acse_timeout, dimse_timeout=reply.dimse_timeout, network_timeout=reply.network_timeout,
        )
    except ValueError as exc:
        raise DeliveryError(f"destination {reply.name}: cannot reply to {caller.ae_title!r}: {exc}", retryable=False) from exc


def _read(path: Path) -> Dataset:
    try:
        return dcmread(path)
    except (OSError, InvalidDicomError, ValueError, KeyError) as exc:
        raise DeliveryError(f"cannot read result file {path.name}: {exc}", retryable=False) from exc


class Deliverer:
    """Send result objects to configured destinations exactly once each, with retries.

    Parameters
    ----------
    destinations : sequence of Destination
        The configured destinations (names unique).
    policy : RetryPolicy
        Attempts and backoff.
    known_peers : sequence of KnownPeer
        Where calling AEs listen, for reply-to-caller destinations.
    clock : callable
        Wall-clock seconds (``time.time``); injectable for schedule tests.
    objects : ObjectStores, optional
        The node's object storage, for ``object`` destinations (without it they fail, not retryable).
    """

    def __init__(
        self, destinations: Sequence[Destination], policy: RetryPolicy,
        known_peers: Sequence[KnownPeer] = (), clock: Callable[[], float] = time.time,
        objects: ObjectStores | None = None,
    ) -> None:
        self._destinations = {d.name: d for d in destinations}
        self._policy = policy
        self._known_peers = tuple(known_peers)
        self._clock = clock
        self._objects = objects

    @classmethod
    def from_config(cls, config: DeliveryConfig, objects: ObjectStores | None = None) -> Deliverer:
        """Build from the ``[delivery]`` configuration section (and the node's object stores)."""
        return cls(config.destinations, config.retry, config.known_peers, objects=objects)

    def destination(self, name: str) -> Destination:
        """The destination called ``name``; raises :class:`DeliveryError` when unknown."""
        try:
            return self._destinations[name]
        except KeyError:
            raise DeliveryError(f"unknown delivery destination {name!r}", retryable=False) from None

    def deliver(
        self, objects: list[Path], destination_name: str, conn_runner: ConnRunner, *, caller: Caller | None = None,
    ) -> DeliveryResult:
        """Send ``objects`` to ``destination_name`` unless already stored there.

        Parameters
        ----------
        objects : list of pathlib.Path
            Part 10 result files (SEG, SR, ...).
        destination_name : str
            A configured destination.
        conn_runner : callable
            Runs a function of a :class:`sqlite3.Connection` in a committed
            transaction and returns its value (``IndexWriter.run``).
        caller : Caller, optional
            Calling AE and host of the source study; needed by ``reply`` destinations.

        Returns
        -------
        DeliveryResult
            One :class:`ObjectResult` per input file, in order.

        Raises
        ------
        DeliveryError
            Unknown destination name.
        """
        dest = self.destination(destination_name)
        loaded, results = self._load(objects, dest.name, conn_runner)
        uids = [str(ds.SOPInstanceUID) for _p, ds in loaded]
        rows = conn_runner(lambda c: ledger.lookup(c, uids, dest.name))
        todo: list[tuple[Path, Dataset]] = []
        for path, ds in loaded:
            row = rows.get(str(ds.SOPInstanceUID))
            if row is not None and row.state in ("sent", "dead"):
                results[path] = ObjectResult(path, row.sop_instance_uid, f"already_{row.state}", row.attempts, row.last_error or "")
            else:
                todo.append((path, ds))
        if todo:
            results.update(self._send(dest, todo, conn_runner, caller))
        result = DeliveryResult(dest.name, [results[p] for p in objects if p in results])
        log.info(
            "delivery destination=%s sent=%d already_sent=%d pending=%d dead=%d",
            dest.name, result.count("sent"), result.count("already_sent"), result.count("pending"),
            result.count("dead", "already_dead"),
        )
        return result

    def _load(self, objects: list[Path], dest_name: str, conn_runner: ConnRunner) -> tuple[list[tuple[Path, Dataset]], dict[Path, ObjectResult]]:
        """Read the files; unreadable ones are dead at once (a retry cannot fix them)."""
        loaded: list[tuple[Path, Dataset]] = []
        results: dict[Path, ObjectResult] = {}
        for path in objects:
            try:
                loaded.append((path, _read(path)))
            except DeliveryError as exc:
                log.error("delivery destination=%s unreadable file=%s error=%s", dest_name, path.name, exc)
                results[path] = ObjectResult(path, "", "dead", 0, str(exc))
        return loaded, results

    def _send(
        self, dest: Destination, todo: list[tuple[Path, Dataset]], conn_runner: ConnRunner, caller: Caller | None,
    ) -> dict[Path, ObjectResult]:
        paths = {str(ds.SOPInstanceUID): path for path, ds in todo}
        datasets = [ds for _p, ds in todo]
        results: dict[Path, ObjectResult] = {}

        def record(outcome: Outcome) -> None:
            path = paths[outcome.sop_instance_uid]
            results[path] = self._record(dest.name, path, outcome, conn_runner)

        try:
            if isinstance(dest, StowDestination):
                send_stow(dest, datasets, record)
            elif isinstance(dest, ObjectDestination):
                if self._objects is None:
                    raise DeliveryError(f"destination {dest.name}: object storage is not available here",
                                        retryable=False)
                send_objects(dest, self._objects, todo, record)
            else:
                target = resolve_reply(dest, self._known_peers, caller) if isinstance(dest, ReplyToCaller) else dest
                # Resolved and checked once; the association goes to that address (DNS pinning).
                send_dimse(_pinned(target), datasets, record)
        except DeliveryError as exc:
            verdict = Verdict.RETRY if exc.retryable else Verdict.DEAD
            log.warning("delivery destination=%s failed before sending verdict=%s error=%s", dest.name, verdict.value, exc)
            for uid, path in paths.items():
                if path not in results:
                    results[path] = self._record(dest.name, path, Outcome(uid, verdict, str(exc)), conn_runner)
        return results

    def _record(self, dest_name: str, path: Path, outcome: Outcome, conn_runner: ConnRunner) -> ObjectResult:
        """Commit one outcome to the ledger: sent, pending with the next attempt time, or dead."""
        uid, now = outcome.sop_instance_uid, self._clock()
        if outcome.verdict.delivered:
            warning = outcome.detail if outcome.verdict is Verdict.WARNING else None
            attempts = conn_runner(lambda c: ledger.mark_sent(c, uid, dest_name, now, warning))
            return ObjectResult(path, uid, "sent", attempts, outcome.detail)
        if outcome.verdict is Verdict.RETRY:
            state, attempts, when, detail = conn_runner(
                lambda c: self._retry_or_bury(c, dest_name, uid, str(path), outcome.detail, now, outcome.retry_after))
            if state == "pending":
                return ObjectResult(path, uid, "pending", attempts, detail, when)
        else:
            detail = outcome.detail
            attempts = conn_runner(lambda c: ledger.mark_dead(c, uid, dest_name, detail, str(path)))
        log.error("dead-lettered destination=%s sop_instance_uid=%s detail=%s", dest_name, uid, detail)
        return ObjectResult(path, uid, "dead", attempts, detail)

    def _retry_or_bury(
        self, conn: sqlite3.Connection, dest_name: str, uid: str, path: str, error: str, now: float,
        retry_after: float | None = None,
    ) -> tuple[str, int, float | None, str]:
        """In one transaction: schedule the next attempt, or dead-letter when the attempts are spent."""
        row = ledger.lookup(conn, [uid], dest_name).get(uid)
        attempts = (row.attempts if row else 0) + 1
        if not self._policy.exhausted(attempts):
            when = self._policy.next_attempt_at(attempts, now, retry_after)
            return "pending", ledger.record_attempt(conn, uid, dest_name, error, when, path), when, error
        detail = f"gave up after {attempts} attempts: {error}"
        return "dead", ledger.mark_dead(conn, uid, dest_name, detail, path), None, detail


def _pinned(target: DimseDestination) -> DimseDestination:
    """``target`` pinned to one checked address (:meth:`dicom_node.net.peers.DimsePeer.pinned`)."""
    try:
        return target.pinned()
    except OutboundError as exc:
        raise DeliveryError(str(exc), retryable=exc.retryable) from exc
