"""Classify delivery failures as retry or dead-letter.

=================================================  ==========
Failure                                            Verdict
=================================================  ==========
0x0000 Success                                     SUCCESS
0xB000, 0xB006, 0xB007 and other 0xBxxx/0x0001     WARNING (stored; counted as sent)
0xA7xx Out of resources (PS3.4 B.2.3)              RETRY
0x0110 Processing failure, unknown failures        RETRY (bounded by the policy)
0xA9xx Dataset does not match SOP class            DEAD
0xCxxx Cannot understand                           DEAD
0x0122 SOP class not supported, 0x0124 refused     DEAD
A-ASSOCIATE-RJ result 2 (rejected-transient)       RETRY
A-ASSOCIATE-RJ result 1 (rejected-permanent)       DEAD
connection refused/reset, timeouts, A-ABORT        RETRY
HTTP 408, 429, 5xx (PS3.18 8.6 / RFC 9110)         RETRY
HTTP other 4xx (401, 403, 404, 409, 413, 415 ...)  DEAD
TLS certificate errors, redirects, bad URLs        DEAD
=================================================  ==========

DEAD outcomes are dead-lettered straight away; RETRY outcomes are retried on the
schedule of :class:`dicom_node.net.retry.RetryPolicy` until its attempts run out,
then dead-lettered.
"""

from __future__ import annotations

import enum
import socket
import ssl
from dataclasses import dataclass

__all__ = [
    "Outcome", "Verdict", "classify_dimse_status", "classify_exception", "classify_http_status",
    "classify_rejection",
]

_WARNINGS_NAMED = {0xB000: "coercion of data elements", 0xB006: "elements discarded", 0xB007: "dataset does not match SOP class"}
_DEAD_GENERAL = {0x0122, 0x0124, 0x0211, 0x0212, 0x0117, 0x0106, 0x0105}


class Verdict(str, enum.Enum):
    """What a delivery attempt of one object amounts to."""

    SUCCESS = "success"
    WARNING = "warning"
    RETRY = "retry"
    DEAD = "dead"

    @property
    def delivered(self) -> bool:
        """True when the destination stored the object (success or warning)."""
        return self in (Verdict.SUCCESS, Verdict.WARNING)


@dataclass(frozen=True)
class Outcome:
    """The result of sending one object to one destination.

    Attributes
    ----------
    sop_instance_uid : str
        The object (empty when the file could not be read).
    verdict : Verdict
        Success, warning, retry or dead.
    detail : str
        Human-readable reason, free of PHI (statuses, UIDs, AE titles, hosts).
    status : int or None
        The DIMSE status (PS3.7 C) or STOW-RS failure/warning reason, when there was one.
    http_status : int or None
        The HTTP status of the STOW-RS response, when there was one.
    retry_after : float or None
        Seconds the server's Retry-After asked to wait (RFC 9110 10.2.3), honoured by the retry policy.
    """

    sop_instance_uid: str
    verdict: Verdict
    detail: str = ""
    status: int | None = None
    http_status: int | None = None
    retry_after: float | None = None


def classify_dimse_status(status: int) -> Verdict:
    """Classify a C-STORE response status (PS3.4 Table B.2-1, PS3.7 Annex C).

    Parameters
    ----------
    status : int
        The (0000,0900) Status value.

    Returns
    -------
    Verdict
        SUCCESS, WARNING, RETRY or DEAD as in the module table.
    """
    if status == 0x0000:
        return Verdict.SUCCESS
    if status == 0x0001 or status & 0xF000 == 0xB000:
        return Verdict.WARNING
    if status & 0xFF00 == 0xA700:
        return Verdict.RETRY
    if status & 0xFF00 == 0xA900 or status & 0xF000 == 0xC000 or status in _DEAD_GENERAL:
        return Verdict.DEAD
    return Verdict.RETRY


def describe_status(status: int) -> str:
    """Return ``0xA700`` style text plus a short meaning where known."""
    name = _WARNINGS_NAMED.get(status)
    if name is None:
        if status & 0xFF00 == 0xA700:
            name = "out of resources"
        elif status & 0xFF00 == 0xA900:
            name = "dataset does not match SOP class"
        elif status & 0xF000 == 0xC000:
            name = "cannot understand"
        elif status == 0x0122:
            name = "SOP class not supported"
    return f"0x{status:04X}" + (f" ({name})" if name else "")


def classify_http_status(code: int) -> Verdict:
    """Classify the HTTP status of a STOW-RS response (PS3.18 10.5.3, RFC 9110).

    Parameters
    ----------
    code : int
        HTTP status code.

    Returns
    -------
    Verdict
        SUCCESS for 2xx (per-instance results still apply), RETRY for 408,
        429 and 5xx, DEAD for other 4xx and anything else unexpected (3xx:
        redirects are not followed, see the STOW-RS sender).
    """
    if 200 <= code < 300:
        return Verdict.SUCCESS
    if code in (408, 429) or 500 <= code < 600:
        return Verdict.RETRY
    return Verdict.DEAD


def classify_rejection(result: int) -> Verdict:
    """Classify an A-ASSOCIATE-RJ (PS3.8 9.3.4): result 2 is transient, 1 permanent."""
    return Verdict.RETRY if result == 2 else Verdict.DEAD


def classify_exception(exc: BaseException) -> Verdict:
    """Classify a transport-level exception.

    Certificate verification failures are DEAD (a retry cannot fix them);
    connection refused/reset, timeouts, DNS failures and other OS-level
    socket errors are RETRY. ``requests`` exceptions are classified by the
    STOW-RS sender, which knows their types.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Verdict.DEAD
    if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout, socket.gaierror, OSError)):
        return Verdict.RETRY
    return Verdict.DEAD

