"""Small value checks shared by config sections, the SCP, delivery and the REST API.

One place each for what an AE title, a received UID and a loopback host are, so
the SCP, the config and the API cannot drift apart.
"""

from __future__ import annotations

import ipaddress
import re

#: AE titles: 1-16 characters of the default character repertoire, no backslash (PS3.5 6.2).
AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")

#: UIDs as peers send them: digits and dots, at most 64 characters (PS3.5 9.1). Leading
#: zeros are tolerated, since real modalities send them; anything that could name a path is not.
UID_PATTERN = r"^[0-9]{1,64}(\.[0-9]{1,64}){0,63}$"
_UID_RE = re.compile(UID_PATTERN)


def check_ae_title(value: str, what: str) -> str:
    """Return the AE title without padding, or raise ``ValueError`` naming ``what``."""
    if not AE_TITLE_RE.fullmatch(value) or not value.strip():
        raise ValueError(f"{what} {value!r} is not a valid AE title (1-16 characters, no backslash)")
    return value.strip()


def is_uid(value: str) -> bool:
    """True when ``value`` is a syntactically valid UID of at most 64 characters."""
    return len(value) <= 64 and _UID_RE.fullmatch(value) is not None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
