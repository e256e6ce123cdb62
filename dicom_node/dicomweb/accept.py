"""Content negotiation for DICOMweb: the ``Accept`` header by the rules of PS3.18 8.7 (and RFC 9110 12.5.1).

A resource lists what the node can produce for it as :class:`Offer` values, most
preferred first (the stored representation first, so ``transfer-syntax=*`` and
``*/*`` answer the instance as stored). :func:`choose` gives each offer the
quality value of the most specific media range that matches it; the offer with
the highest quality wins, ties going to the node's order. A range with ``q=0``
excludes what it matches. Only when no offer has a quality above 0 is the answer
406, and :class:`NotAcceptable` names what was asked and what is available.

Rules taken from PS3.18 8.7.3 and 8.7.4:

- ``multipart/related; type="<part type>"`` matches multipart offers of that part type;
  without ``type`` it matches any multipart offer (``multipart/*`` likewise).
- ``transfer-syntax=<uid>`` matches that syntax; ``transfer-syntax=*`` matches any
  (the node's first, i.e. as stored); a range of a media type with a default syntax
  (Table 8.7.3-2, e.g. Explicit VR Little Endian for ``application/dicom`` and
  ``application/octet-stream``) but no ``transfer-syntax`` asks for that default.
- ``*/*`` and ``type/*`` match anything of the type, in any syntax.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from dicom_node.errors import DicomNodeError

__all__ = ["DEFAULT_SYNTAX", "MediaRange", "NotAcceptable", "Offer", "choose", "parse_accept"]

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"

#: Default transfer syntax of each media type when a range names none (PS3.18 Table 8.7.3-2 to 8.7.3-4).
DEFAULT_SYNTAX: dict[str, str] = {
    "application/dicom": EXPLICIT_VR_LE,
    "application/octet-stream": EXPLICIT_VR_LE,
    "image/jpeg": "1.2.840.10008.1.2.4.50",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jphc": "1.2.840.10008.1.2.4.201",
}

#: Splits a header at commas outside quoted strings, and parameters at semicolons outside them.
_COMMAS = re.compile(r",(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)")
_SEMIS = re.compile(r";(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)")
_TOKEN = re.compile(r"^[A-Za-z0-9!#$&^_.+\-*]+/[A-Za-z0-9!#$&^_.+\-*]+$")


class NotAcceptable(DicomNodeError):
    """Nothing the resource can produce is acceptable to the request (HTTP 406).

    Attributes
    ----------
    reason : str
        What was asked and what is available, for the response body.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class MediaRange:
    """One media range of an ``Accept`` header.

    Attributes
    ----------
    media_type : str
        Lower-case ``type/subtype``; either part may be ``*``.
    part_type : str or None
        The ``type`` parameter of a ``multipart/related`` range, lower case.
    transfer_syntax : str or None
        The ``transfer-syntax`` parameter (``*`` = any), or None when absent.
    q : float
        The quality value, 0 to 1.
    params : dict
        Every other parameter (e.g. ``charset``), names lower case.
    """

    media_type: str
    part_type: str | None = None
    transfer_syntax: str | None = None
    q: float = 1.0
    params: dict[str, str] = field(default_factory=dict, compare=False)

    def __str__(self) -> str:
        text = self.media_type
        if self.part_type:
            text += f'; type="{self.part_type}"'
        if self.transfer_syntax:
            text += f"; transfer-syntax={self.transfer_syntax}"
        if self.q != 1.0:
            text += f"; q={self.q:g}"
        return text


@dataclass(frozen=True)
class Offer:
    """One representation the node can produce.

    Attributes
    ----------
    media_type : str
        The media type of the body, or of each part when ``multipart``.
    transfer_syntax : str or None
        The transfer syntax of the bytes (None for media types without one: JSON, PNG).
    multipart : bool
        True when the answer is ``multipart/related; type=<media_type>``.
    """

    media_type: str
    transfer_syntax: str | None = None
    multipart: bool = False

    @property
    def part_content_type(self) -> str:
        """The ``Content-Type`` of one part (or of the body when not multipart)."""
        if self.transfer_syntax:
            return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"
        return self.media_type

    def __str__(self) -> str:
        if self.multipart:
            ts = f"; transfer-syntax={self.transfer_syntax}" if self.transfer_syntax else ""
            return f'multipart/related; type="{self.media_type}"{ts}'
        return self.part_content_type


def _quality(text: str) -> float:
    try:
        q = float(text)
    except ValueError:
        return 1.0  # a malformed q is ignored rather than refused (RFC 9110 is lenient on reading)
    return min(max(q, 0.0), 1.0)


def parse_accept(header: str | None) -> list[MediaRange]:
    """Parse an ``Accept`` header into media ranges; an absent or empty header is ``*/*``.

    Malformed ranges (no ``/``) are skipped, as RFC 9110 lets a server do.
    """
    if header is None or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[MediaRange] = []
    for item in _COMMAS.split(header):
        main, *raw = _SEMIS.split(item)
        main = main.strip().lower()
        if main == "*":
            main = "*/*"  # some clients (old Java ones) send a bare "*"
        if not _TOKEN.match(main):
            continue
        params: dict[str, str] = {}
        for p in raw:
            name, _, value = p.partition("=")
            if name.strip():
                params[name.strip().lower()] = value.strip().strip('"')
        q = _quality(params.pop("q", "1"))
        part_type = params.pop("type", None)
        syntax = params.pop("transfer-syntax", None)
        ranges.append(MediaRange(main, part_type.lower() if part_type else None, syntax or None, q, params))
    return ranges


def _type_matches(pattern: str, media_type: str) -> bool:
    if pattern == "*/*":
        return True
    main, _, sub = pattern.partition("/")
    if sub == "*":
        return media_type.split("/", 1)[0] == main
    return pattern == media_type


def _syntax_matches(wanted: str | None, part_type: str, offered: str | None) -> bool:
    if wanted == "*":
        return True
    if wanted is None:
        default = DEFAULT_SYNTAX.get(part_type)
        return default is None or offered is None or offered == default
    return offered == wanted


def _specificity(rng: MediaRange, offer: Offer) -> int | None:
    """How specifically ``rng`` matches ``offer`` (higher wins), or None when it does not match."""
    if rng.media_type == "*/*":
        return 0
    if offer.multipart:
        if not _type_matches(rng.media_type, "multipart/related"):
            return None
        if rng.part_type is None:
            # ``multipart/related`` alone: any part type, syntax as the range says (default: any).
            return 1 if rng.transfer_syntax in (None, "*") or rng.transfer_syntax == offer.transfer_syntax else None
        if not _type_matches(rng.part_type, offer.media_type):
            return None
        if not _syntax_matches(rng.transfer_syntax, offer.media_type, offer.transfer_syntax):
            return None
        return 2 + (rng.part_type == offer.media_type) + 2 * (rng.transfer_syntax not in (None, "*"))
    if not _type_matches(rng.media_type, offer.media_type):
        return None
    if rng.media_type != offer.media_type:
        return 1
    if not _syntax_matches(rng.transfer_syntax, offer.media_type, offer.transfer_syntax):
        return None
    return 3 + 2 * (rng.transfer_syntax not in (None, "*"))


def quality(ranges: Sequence[MediaRange], offer: Offer) -> float:
    """The quality the request gives ``offer``: that of the most specific matching range (0 if none)."""
    best: tuple[int, float] | None = None
    for rng in ranges:
        s = _specificity(rng, offer)
        if s is not None and (best is None or s > best[0] or (s == best[0] and rng.q > best[1])):
            best = (s, rng.q)
    return best[1] if best else 0.0


def choose(accept: str | None | Sequence[MediaRange], offers: Sequence[Offer]) -> Offer:
    """Choose the offer to answer with.

    Parameters
    ----------
    accept : str, None or sequence of MediaRange
        The request's ``Accept`` header (None or empty: anything) or its parsed ranges.
    offers : sequence of Offer
        What the node can produce, most preferred first.

    Returns
    -------
    Offer
        The acceptable offer with the highest quality; ties go to the earlier offer.

    Raises
    ------
    NotAcceptable
        When no offer is acceptable; the reason names the ranges asked for and the offers.
    """
    ranges = parse_accept(accept) if accept is None or isinstance(accept, str) else list(accept)
    best: Offer | None = None
    best_q = 0.0
    for offer in offers:
        q = quality(ranges, offer)
        if q > best_q:
            best, best_q = offer, q
    if best is None:
        asked = ", ".join(str(r) for r in ranges) or "nothing"
        available = "; ".join(str(o) for o in offers[:8]) + ("; ..." if len(offers) > 8 else "")
        raise NotAcceptable(f"Accept asks for {asked}; this resource is available as: {available or 'nothing'}")
    return best
