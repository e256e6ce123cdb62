"""Request body limit as pure ASGI middleware: declared lengths and chunked bodies alike.

A declared ``Content-Length`` over the limit is answered 413 before the body is
read. A body without one (chunked transfer) is counted as it is received and
cut off at the limit, so no handler ever buffers more than ``limit`` bytes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from dicom_node.api.errors import ApiError, error_body

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(ApiError):
    """The request body passed the configured limit (answered 413 by the error handlers)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, "too_large", f"request body over the limit of {limit} bytes")


class BodyLimitMiddleware:
    """Refuse or cut off request bodies over ``limit`` bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def _reject(self, send: Send) -> None:
        body = json.dumps(error_body("too_large", f"request body over the limit of {self.limit} bytes")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._reject(send)
            return
        received = 0
        over = False
        started = False

        async def counted() -> Message:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # Stop reading; the app sees the client gone and whatever it answers is replaced by 413.
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            if over and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracking)
        except BodyTooLarge:
            over = True
        except Exception as exc:
            # Cutting the body off makes handlers fail on a "disconnected" client; that failure
            # is ours and is answered 413. Any other failure goes on to the error middleware.
            if not over:
                raise
            log.info("request body cut off at the limit bytes=%d handler_error=%s", self.limit, type(exc).__name__)
        if over and not started:
            await self._reject(send)
