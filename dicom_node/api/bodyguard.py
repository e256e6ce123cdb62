"""Slow clients: request-body idle and minimum-rate timeouts, a cap on uploads in flight, a header timeout.

A request body trickled a byte at a time costs the node an open connection, a
task and (for multipart) a parser for as long as the client likes. Three bounds,
all from ``[api]``:

- ``body_idle_timeout``: no body bytes for this many seconds -> 408;
- ``body_min_rate``: after ``body_rate_grace`` seconds, a body arriving slower
  than this many bytes per second on average -> 408;
- ``max_concurrent_uploads``: requests whose body is still being received. One
  over the cap is answered 503 with ``Retry-After`` at once rather than queued:
  a queued upload would keep its connection (and its peer's send buffer) held
  while it waits, which is the very cost the cap bounds, and every HTTP client
  the node talks to (STOW-RS senders, scripts) already retries a 503.

Slow *headers* (slowloris) never reach ASGI: :class:`HeaderTimeoutH11` closes a
connection whose request line and headers take longer than ``header_timeout``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from dicom_node.api.errors import error_body

__all__ = ["HeaderTimeoutH11", "SlowBodyMiddleware"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Seconds a client over the upload cap is asked to wait.
RETRY_AFTER = 5


def _has_body(scope: Scope) -> bool:
    headers = dict(scope.get("headers") or [])
    length = headers.get(b"content-length")
    if length is not None:
        return length.strip() not in (b"", b"0")
    return b"transfer-encoding" in headers


async def _answer(send: Send, status: int, code: str, message: str, extra: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps(error_body(code, message)).encode()
    # "connection: close": the rest of the body is never read, so the connection cannot be reused.
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SlowBodyMiddleware:
    """Answer 408 to bodies that stall or trickle, 503 to uploads over the cap.

    Parameters
    ----------
    app : ASGI application
        The wrapped application.
    idle_timeout : float
        Seconds without a body byte before the request is answered 408.
    min_rate : int
        Bytes per second a body must average once ``grace`` seconds have passed (0 = no minimum).
    grace : float
        Seconds before the minimum rate applies (slow starts, TCP slow start).
    max_uploads : int
        Requests with a body being received at once.
    """

    def __init__(self, app: ASGIApp, idle_timeout: float, min_rate: int, grace: float, max_uploads: int) -> None:
        self.app = app
        self.idle_timeout = idle_timeout
        self.min_rate = min_rate
        self.grace = grace
        self.max_uploads = max_uploads
        self.uploads = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        if self.uploads >= self.max_uploads:
            log.warning("upload refused: %d uploads in flight (api.max_concurrent_uploads)", self.uploads)
            await _answer(send, 503, "busy", f"too many uploads in flight (api.max_concurrent_uploads = "
                          f"{self.max_uploads}); retry later", [(b"retry-after", str(RETRY_AFTER).encode())])
            return
        self.uploads += 1
        counting = True
        started_at = time.monotonic()
        received = 0
        done = False
        timed_out: str | None = None
        started = False

        def release() -> None:
            nonlocal counting
            if counting:
                counting = False
                self.uploads -= 1

        async def guarded() -> Message:
            nonlocal received, done, timed_out
            if timed_out is not None:
                return {"type": "http.disconnect"}
            if done:
                # The body is complete; later receives wait for a disconnect and are not timed.
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_timeout)
            except TimeoutError:
                timed_out = f"no request body bytes for {self.idle_timeout:g} s (api.body_idle_timeout)"
                release()
                return {"type": "http.disconnect"}
            if message["type"] != "http.request":
                done = True
                release()
                return message
            received += len(message.get("body", b""))
            if not message.get("more_body", False):
                done = True
                release()
                return message
            elapsed = time.monotonic() - started_at
            if self.min_rate and elapsed > self.grace and received < self.min_rate * elapsed:
                timed_out = (f"request body too slow: {received} bytes in {elapsed:.0f} s, under "
                             f"{self.min_rate} bytes/s (api.body_min_rate)")
                release()
                return {"type": "http.disconnect"}
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            if timed_out is not None and not started:
                return  # the handler's answer to a "disconnected" client is replaced by the 408
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded, tracking)
        except Exception as exc:
            # Handlers fail on the "disconnected" client they were given; that failure is the timeout's.
            if timed_out is None:
                raise
            log.debug("handler ended after a body timeout error=%s", type(exc).__name__)
        finally:
            release()
        if timed_out is not None:
            client = scope.get("client") or ("?", 0)
            log.warning("slow request body refused client=%s path=%s reason=%s", client[0], scope.get("path"), timed_out)
            if not started:
                await _answer(send, 408, "request_timeout", timed_out, [])


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's line and headers (slowloris).

    uvicorn bounds the header *size* (``h11_max_incomplete_event_size``) and the idle
    time *between* requests (``timeout_keep_alive``), but not how long one request's
    headers may take to arrive. The deadline starts when a connection opens or a
    response completes and ends when h11 has parsed the headers.
    """

    #: Seconds allowed for a request's headers; set by :func:`header_timeout_protocol`.
    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Open the connection and start the header deadline."""
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm_header_deadline()

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _disarm_header_deadline(self) -> None:
        deadline = getattr(self, "_header_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._header_deadline = None

    def _header_timed_out(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            log.warning("closing a connection whose request headers took over %g s (api.header_timeout)",
                        self.header_timeout)
            self.transport.close()

    def handle_events(self) -> None:
        """Parse as uvicorn does; a new request cycle means its headers arrived in time."""
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:
            self._disarm_header_deadline()

    def on_response_complete(self) -> None:
        """The next request's headers get their own deadline (unless a pipelined one already arrived)."""
        cycle = self.cycle
        super().on_response_complete()
        if self.cycle is cycle and not self.transport.is_closing():
            self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the deadline with the connection."""
        self._disarm_header_deadline()
        super().connection_lost(exc)


def header_timeout_protocol(seconds: float) -> type[HeaderTimeoutH11]:
    """A :class:`HeaderTimeoutH11` subclass with ``seconds`` as its header deadline (uvicorn takes a class)."""
    return type("HeaderTimeoutH11Bound", (HeaderTimeoutH11,), {"header_timeout": float(seconds)})
