"""The endpoint pool of a Triton farm: least-outstanding choice, health state, re-probing.

A model served by several Triton servers (issue 18, "Triton farm") keeps one
:class:`Endpoint` per server in an :class:`EndpointPool`. The pool knows
nothing of tritonclient: the backend (:mod:`inference.backends.triton`) hands
it a *probe* and the clients, so the balancing and health rules are plain,
testable code.

- **Least outstanding.** :meth:`EndpointPool.acquire` picks, among healthy
  endpoints, the one with the fewest requests in flight (counted under one
  lock); ties go round-robin, so a sequential caller still spreads its requests
  and every server stays warm. This is the rule Envoy calls ``LEAST_REQUEST``
  and NGINX ``least_conn``.
- **Health.** A background thread, started by the first request and stopped by
  :meth:`EndpointPool.close`, probes every endpoint each ``interval_s``: a
  healthy one with KServe v2 server and model readiness
  (``/v2/health/ready``, ``/v2/models/{m}/ready``), an endpoint that is out
  with the full load-time check on a fresh client (a restarted server must
  still serve the model the spec describes; a fresh gRPC channel also skips
  gRPC's reconnect back-off of up to 120 s). A failed probe or a failed request
  takes the endpoint out; a passed probe takes it back in.
- **Last resort.** When every endpoint is out, :meth:`~EndpointPool.acquire`
  still hands one out (least outstanding among those out): there is nothing
  to lose by trying, and a single-server model keeps the behaviour it had
  before the farm existed (each request tries the server once).

The failover itself (retry a request once elsewhere on a connection or
unavailable error, never on a model error) is the backend's, which knows the
error codes. :class:`TritonTable` is a model spec's ``[triton]`` table, kept
here with the endpoint syntax it validates.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

log = logging.getLogger(__name__)

C = TypeVar("C")

#: ``host:port`` after an optional ``grpc://`` or ``http://``: no user info (credentials do not
#: belong in URLs that reach logs and metrics labels), no path, query or fragment.
_ENDPOINT = re.compile(r"^(?:(grpc|http)://)?([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):([0-9]{1,5})/?$")


def parse_endpoint(url: str) -> tuple[str, str]:
    """Split a Triton endpoint into ``(protocol, "host:port")``; gRPC when no scheme is given.

    Raises
    ------
    ValueError
        The URL is not ``[grpc://|http://]host:port`` with a port in 1..65535; the message names it.
    """
    match = _ENDPOINT.fullmatch(url.strip())
    if match is None or not 0 < int(match.group(3)) < 65536:
        raise ValueError(f"Triton endpoint {url!r} must be host:port, grpc://host:port or http://host:port")
    return match.group(1) or "grpc", f"{match.group(2)}:{int(match.group(3))}"


def canonical(url: str) -> str:
    """``protocol://host:port`` of ``url``, so two spellings of one endpoint compare equal."""
    protocol, address = parse_endpoint(url)
    return f"{protocol}://{address}"


class TritonTable(BaseModel):
    """Which Triton servers serve a model: its spec's ``[triton]`` table.

    ``endpoints`` (``host:port``, ``grpc://host:port`` or ``http://host:port``) must each be
    among the node's ``[inference] triton_url`` / ``triton_urls`` (checked when the model is
    opened); empty means all of those.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoints: list[str] = Field(default_factory=list, max_length=64)

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        names = [canonical(u) for u in v]  # its ValueError names the bad one
        if len(set(names)) != len(names):
            raise ValueError("endpoints must be distinct")
        return v


@dataclass(frozen=True)
class EndpointState:
    """One endpoint as metrics and logs see it."""

    url: str
    healthy: bool
    in_flight: int
    requests: int
    failures: int
    reason: str


class Endpoint(Generic[C]):
    """One Triton server of a farm and the client that talks to it; mutated only under the pool's lock."""

    def __init__(self, url: str, client: C | None, healthy: bool, reason: str = "") -> None:
        self.url = canonical(url)
        self.protocol, self.address = parse_endpoint(url)
        self.client = client
        self.healthy = healthy and client is not None
        self.reason = reason
        self.in_flight = 0
        self.requests = 0
        self.failures = 0

    def state(self) -> EndpointState:
        """A snapshot (read under the pool's lock)."""
        return EndpointState(self.url, self.healthy, self.in_flight, self.requests, self.failures, self.reason)


#: ``probe(endpoint, full)``: with ``full`` (the endpoint is out), build and check a fresh client and
#: return it; else check the endpoint's own client and return it. Raises on any failure.
Probe = Callable[[Endpoint[C], bool], C]
#: Closes a client the pool no longer uses; must not raise.
CloseClient = Callable[[C], None]


class EndpointPool(Generic[C]):
    """Least-outstanding choice and health state over the endpoints of one model.

    Parameters
    ----------
    endpoints : iterable of Endpoint
        Each with its client from the load-time check, or ``None`` and ``healthy=False`` when it failed.
    probe : callable
        See :data:`Probe`.
    close_client : callable
        See :data:`CloseClient`.
    interval_s : float
        Seconds between health-check rounds.
    name : str
        The model's name, for the thread name and log lines.
    """

    def __init__(self, endpoints: Iterable[Endpoint[C]], probe: Probe[C], close_client: CloseClient[C],
                 interval_s: float, name: str) -> None:
        self._endpoints = list(endpoints)
        if not self._endpoints:
            raise ValueError("a Triton endpoint pool needs at least one endpoint")
        self._probe = probe
        self._close_client = close_client
        self._interval = interval_s
        self._name = name
        self._lock = threading.Lock()
        self._next = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def endpoints(self) -> list[Endpoint[C]]:
        """The endpoints, in configured order."""
        return list(self._endpoints)

    def acquire(self, exclude: frozenset[str] = frozenset()) -> Endpoint[C] | None:
        """The endpoint the next request goes to, counted in flight; ``None`` when only ``exclude`` is left.

        Healthy endpoints first, least outstanding, ties round-robin; when none is
        healthy, one that is out (see the module docstring). Pair with :meth:`release`.
        """
        self._start()
        with self._lock:
            n = len(self._endpoints)
            usable = [(i, e) for i, e in enumerate(self._endpoints) if e.url not in exclude and e.client is not None]
            healthy = [(i, e) for i, e in usable if e.healthy]
            candidates = healthy or usable
            if not candidates:
                return None
            index, chosen = min(candidates, key=lambda ie: (ie[1].in_flight, (ie[0] - self._next) % n))
            self._next = (index + 1) % n
            chosen.in_flight += 1
            chosen.requests += 1
            return chosen

    def release(self, endpoint: Endpoint[C], ok: bool) -> None:
        """The request on ``endpoint`` finished; a success takes an endpoint that was out back in."""
        with self._lock:
            endpoint.in_flight -= 1
            if ok and not endpoint.healthy:
                endpoint.healthy, endpoint.reason = True, ""
                log.info("Triton endpoint back in model=%s endpoint=%s (a request succeeded)", self._name, endpoint.url)

    def take_out(self, endpoint: Endpoint[C], reason: str) -> None:
        """Stop sending requests to ``endpoint`` until a probe (or a last-resort request) succeeds."""
        with self._lock:
            endpoint.failures += 1
            was = endpoint.healthy
            endpoint.healthy, endpoint.reason = False, reason
        if was:
            log.warning("Triton endpoint taken out model=%s endpoint=%s reason=%s", self._name, endpoint.url, reason)

    def states(self) -> list[EndpointState]:
        """Every endpoint's state, in configured order."""
        with self._lock:
            return [e.state() for e in self._endpoints]

    def check(self) -> None:
        """One health-check round over every endpoint (the thread's loop body; tests call it directly)."""
        for endpoint in self._endpoints:
            if self._stop.is_set():
                return
            with self._lock:
                full = not endpoint.healthy
            try:
                client = self._probe(endpoint, full)
            except Exception as exc:  # noqa: BLE001 - any probe failure (client, socket, check) means "out"
                if not full:
                    self.take_out(endpoint, f"health check: {exc}")
                else:
                    with self._lock:
                        endpoint.reason = f"health check: {exc}"
                continue
            if full:
                self._admit(endpoint, client)

    def _admit(self, endpoint: Endpoint[C], client: C) -> None:
        with self._lock:
            old = endpoint.client if endpoint.client is not client else None
            # A client with requests still in flight is left to them (closing it would cancel them).
            retire = old if old is not None and endpoint.in_flight == 0 else None
            endpoint.client, endpoint.healthy, endpoint.reason = client, True, ""
        if retire is not None:
            self._close_client(retire)
        log.info("Triton endpoint back in model=%s endpoint=%s (health check passed)", self._name, endpoint.url)

    def _start(self) -> None:
        if self._thread is not None or self._stop.is_set():
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"triton-health-{self._name}", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check()
            except Exception:  # the health thread must outlive one bad round; the error is logged
                log.exception("Triton health check round failed model=%s", self._name)

    def close(self, join_timeout_s: float = 10.0) -> None:
        """Stop the health thread (waiting for a probe under way, bounded) and close every client."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(join_timeout_s)
        with self._lock:
            clients = [e.client for e in self._endpoints if e.client is not None]
            for e in self._endpoints:
                e.client, e.healthy = None, False
        for client in clients:
            self._close_client(client)
