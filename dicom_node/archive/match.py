"""The one attribute matcher of QIDO-RS and C-FIND (PS3.4 C.2.2.2, PS3.18 8.3.4).

A key value becomes a :class:`Condition`: the :class:`~dicom_node.index.qido.Filter` list the index
answers in SQL (indexed: UIDs, single values, lists, DA ranges, wildcards as ``LIKE``) and, where SQL
is only a superset (case-sensitive wildcards, TM/DT ranges, lists of wildcards), a Python check of the
returned value (:func:`value_matches`). Forms: universal (empty or ``*``), single value, list (``\\``),
wildcard (``*``, ``?``; not for UI, DA, TM, DT or numbers), range ``low-high`` / ``low-`` / ``-high``
(DA, TM, DT), UID list. Person names match regardless of case. Malformed values raise
:class:`~dicom_node.errors.IdentifierError` naming the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dicom_node.archive.keys import Key
from dicom_node.errors import IdentifierError
from dicom_node.index.qido import Filter, Value

_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_DATETIME = re.compile(r"\d{4,14}(\.\d{1,6})?([+-]\d{4})?")
_NUMERIC = {"IS", "US", "DS"}
_NO_WILDCARD = {"UI", "DA", "TM", "DT"} | _NUMERIC


@dataclass(frozen=True)
class Condition:
    """A key with a value: what SQL filters and what Python still checks (``residual``)."""

    key: Key
    value: str
    filters: tuple[Filter, ...]
    residual: bool


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _check_format(key: Key, value: str) -> None:
    regex = {"DA": _DATE, "TM": _TIME, "DT": _DATETIME}.get(key.vr)
    if regex is None:
        return
    for bound in value.split("-", 1):
        if bound and not regex.fullmatch(bound.replace(":", "")):
            raise IdentifierError(f"{key.keyword}: {bound[:32]!r} is not a valid {key.vr} value or range")


def condition(key: Key, value: str) -> Condition | None:
    """The condition for ``key`` = ``value``; None when the value matches everything.

    Raises
    ------
    IdentifierError
        The value is not valid for the key's VR (a bad date, an unparsable number, a reversed range).
    """
    value = value.strip()
    if value in ("", "*"):
        return None
    items = [v for v in value.split("\\") if v]
    if key.vr in _NO_WILDCARD and ("*" in value or "?" in value) and key.vr != "UI":
        raise IdentifierError(f"{key.keyword}: wildcards are not allowed for {key.vr} values")
    if key.vr in _NUMERIC:
        try:
            items = [str(int(float(v))) for v in items]
        except ValueError as exc:
            raise IdentifierError(f"{key.keyword}: {value[:32]!r} is not a number") from exc
    column = key.column
    if key.keyword == "ModalitiesInStudy":
        if any("*" in v or "?" in v for v in items):
            return Condition(key, value, (), True)
        return Condition(key, value, (Filter("st.study_uid", "modality", tuple(items)),), False)
    if column is None:
        raise IdentifierError(f"{key.keyword} is returned but cannot be matched")
    if key.vr in ("DA", "TM", "DT"):
        _check_format(key, value)
        if "-" in value:
            low, _, high = value.partition("-")
            if low and high and low > high and key.vr == "DA":
                raise IdentifierError(f"{key.keyword}: range {value[:40]!r} ends before it starts")
            if key.vr != "DA":  # TM and DT compare as times, not text: Python checks the values
                return Condition(key, value, (), True)
            bounds = [Filter(column, "ge", (low,))] if low else []
            bounds += [Filter(column, "le", (high,))] if high else []
            return Condition(key, value, tuple(bounds), False)
    wild = [v for v in items if "*" in v or "?" in v]
    if key.vr == "PN" and not value.isascii():
        return Condition(key, value, (), True)  # SQLite folds ASCII case only: Python folds the rest
    if wild and len(items) > 1:
        return Condition(key, value, (), True)
    if wild:
        # LIKE ignores ASCII case: exact for person names, a superset otherwise (Python rechecks).
        return Condition(key, value, (Filter(column, "like", (_like(items[0]),)),), key.vr != "PN")
    if len(items) == 1:
        return Condition(key, value, (Filter(column, "eq", (items[0],)),), False)
    return Condition(key, value, (Filter(column, "in", tuple(items)),), False)


def _seconds(tm: str) -> float:
    whole, _, frac = tm.replace(":", "").partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise ValueError(tm)
    hours, minutes, secs = int(whole[0:2]), int(whole[2:4] or 0), int(whole[4:6] or 0)
    return hours * 3600 + minutes * 60 + secs + (float("0." + frac) if frac else 0.0)


def _wildcard(pattern: str, value: str, fold: bool) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, (re.IGNORECASE if fold else 0) | re.DOTALL) is not None


def _in_range(vr: str, key: str, value: str) -> bool:
    low, _, high = key.partition("-")
    if vr == "TM":
        try:
            seconds = _seconds(value)
            upper = _seconds(high) if high else 0.0
            if high and len(high.replace(":", "").partition(".")[0]) < 6:  # 10 means up to 10:59:59.999999
                upper += {2: 3600, 4: 60}.get(len(high.replace(":", "").partition(".")[0]), 1) - 1e-6
            return (not low or seconds >= _seconds(low)) and (not high or seconds <= upper)
        except ValueError:
            return False
    # DA and DT compare as text; a shorter DT bound covers everything it is a prefix of.
    return (not low or value >= low) and (not high or value[: len(high)] <= high)


def value_matches(key: Key, pattern: str, value: Value) -> bool:
    """Whether an entity's stored value matches the key value ``pattern`` (PS3.4 C.2.2.2).

    ``value`` may be multi-valued (``\\``-joined): one matching value is enough. A key with a value
    never matches an entity without one.
    """
    pattern = pattern.strip()
    if pattern in ("", "*"):
        return True
    if value is None or value == "":
        return False
    values = [v.strip() for v in str(value).split("\\") if v.strip()]
    keys = [k for k in pattern.split("\\") if k]
    if key.vr in _NUMERIC:
        try:
            return any(float(k) == float(v) for k in keys for v in values)
        except ValueError:
            return False
    if key.vr == "UI":
        return any(v in keys for v in values)
    if key.vr in ("DA", "TM", "DT") and "-" in pattern:
        return any(_in_range(key.vr, pattern, v) for v in values)
    fold = key.vr == "PN"
    for k in keys:
        for v in values:
            if ("*" in k or "?" in k) and key.vr not in ("DA", "TM", "DT"):
                if _wildcard(k, v, fold):
                    return True
            elif (k.lower() == v.lower()) if fold else k == v:
                return True
    return False
