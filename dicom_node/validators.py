"""Small value checks shared by config sections, the SCP, delivery and the REST API.

One place each for what an AE title, a received UID and a loopback host are, so
the SCP, the config and the API cannot drift apart.
"""

from __future__ import annotations

import ipaddress
import re

#: AE titles: 1-16 characters of the default character repertoire, no backslash (PS3.5 6.2).
AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")

#: UIDs (PS3.5 9.1): dot-separated numeric components, none with a leading zero ("1.02.3" is not a
#: UID: two peers could spell one component two ways), at most 64 characters (checked apart).
UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$"
_UID_RE = re.compile(UID_PATTERN)


def check_ae_title(value: str, what: str) -> str:
    """Return the AE title without padding, or raise ``ValueError`` naming ``what``."""
    if not AE_TITLE_RE.fullmatch(value) or not value.strip():
        raise ValueError(f"{what} {value!r} is not a valid AE title (1-16 characters, no backslash)")
    return value.strip()


def is_uid(value: str) -> bool:
    """True when ``value`` is a syntactically valid UID of at most 64 characters."""
    return len(value) <= 64 and _UID_RE.fullmatch(value) is not None


def uid_problem(value: str) -> str | None:
    """Why ``value`` is not a UID (PS3.5 9.1), for a refusal's reason; ``None`` when it is one."""
    if not value:
        return "missing"
    if len(value) > 64:
        return f"longer than 64 characters ({len(value)})"
    components = value.split(".")
    if any(not c.isascii() or not c.isdigit() for c in components):
        return "not digits separated by dots"
    if any(len(c) > 1 and c[0] == "0" for c in components):
        return "leading zero in a component"
    return None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
