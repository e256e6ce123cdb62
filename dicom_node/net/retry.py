"""The one retry policy: bounded exponential backoff with optional jitter, honouring Retry-After.

After the n-th failed attempt the next one waits::

    base  = min(cap, initial * factor ** (n - 1))
    delay = base * (1 + jitter * U),  U uniform in [0, 1)
    delay = max(delay, min(retry_after, cap))   when the server sent Retry-After

Jitter only ever *adds* to the schedule, so the configured numbers stay lower
bounds (a peer is never retried earlier than its operator configured) while
many nodes or rows that failed together spread out. ``jitter = 0`` gives the
exact schedule. A server's Retry-After (RFC 9110 10.2.3: delay-seconds or an
HTTP-date, :func:`parse_retry_after`) wins when it asks for longer, up to ``cap``,
so a misbehaving server cannot park work for days.

Used by result delivery (``[delivery.retry]``), webhooks and the source poller;
each keeps its own numbers.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import random
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RetryPolicy", "parse_retry_after"]


class RetryPolicy(BaseModel):
    """Bounded exponential backoff: ``initial * factor**(n-1)`` seconds after the n-th failure, at most ``cap``.

    Attributes
    ----------
    attempts : int
        Total attempts before giving up (see :meth:`exhausted`).
    initial : float
        Seconds before the second attempt.
    factor : float
        Growth per failure.
    cap : float
        Largest deterministic delay, and largest Retry-After honoured.
    jitter : float
        Up to this fraction of the delay is added at random (0 = exact schedule).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempts: int = Field(10, ge=1, le=1000)
    initial: float = Field(30.0, ge=0.0)
    factor: float = Field(2.0, ge=1.0, le=10.0)
    cap: float = Field(600.0, ge=0.0)
    jitter: float = Field(0.0, ge=0.0, le=1.0)

    def delay(self, failures: int, retry_after: float | None = None,
              uniform: Callable[[], float] = random.random) -> float:
        """Seconds to wait after ``failures`` failed attempts.

        Parameters
        ----------
        failures : int
            Failed attempts so far (1 after the first failure); 0 or less waits 0 s.
        retry_after : float, optional
            Seconds the server asked to wait (Retry-After), honoured up to ``cap``.
        uniform : callable, optional
            Source of uniform numbers in [0, 1) for the jitter (tests pass a fixed one).

        Returns
        -------
        float
            With the defaults: 30, 60, 120, 240, 480, 600, 600, ... seconds.
        """
        if failures < 1:
            base = 0.0
        else:
            # Bound the exponent so huge attempt counts cannot overflow a float.
            base = float(min(self.cap, self.initial * self.factor ** min(failures - 1, 64)))
        wait = base * (1.0 + self.jitter * uniform()) if self.jitter else base
        if retry_after is not None and retry_after > 0:
            wait = max(wait, min(float(retry_after), self.cap))
        return wait

    def next_attempt_at(self, failures: int, now: float | None = None, retry_after: float | None = None) -> float:
        """The wall-clock time (epoch seconds) of the next attempt after ``failures`` failures."""
        return (time.time() if now is None else now) + self.delay(failures, retry_after)

    def exhausted(self, attempts: int) -> bool:
        """True when ``attempts`` attempts were made and no further one is allowed."""
        return attempts >= self.attempts


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (RFC 9110 10.2.3: delay-seconds or an HTTP-date).

    Parameters
    ----------
    value : str or None
        The header value.
    now : float, optional
        The current time (epoch seconds) for an HTTP-date; default ``time.time()``.

    Returns
    -------
    float or None
        None when absent or unparseable; an HTTP-date in the past gives 0.
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses naive; RFC 9110 5.6.7 HTTP-dates are GMT all the same
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
