"""Deterministic UIDs for result objects (PS3.5 9.1, B.2).

A result's UIDs derive from what produced it: the source Series Instance UID,
the model's name and version, and the kind of object. Running the same model
version on the same series again therefore yields the same SEG and SR UIDs, so
a PACS replaces the earlier objects instead of storing duplicates; a new model
version yields new UIDs. The Study Instance UID of a result is always the
source study's (the writers copy it, it is not derived here).

Two kinds of root are supported:

- ``"2.25."`` (the default): the UUID-derived arc of PS3.5 B.2. The suffix is
  the decimal form of a name-based (RFC 4122 version 5) UUID, so the UID is a
  genuine UUID-derived UID of at most 44 characters.
- an organisation root such as ``"1.2.826.0.1.3680043.10.123."``: the suffix is
  the decimal form of a SHA-256 digest, cut to the digits that fit in 64
  characters (at most 39 digits, about 128 bits).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass

from dicom_node.errors import WriterError

__all__ = ["DEFAULT_UID_ROOT", "ResultUids", "check_uid_root", "derive_uid", "is_valid_uid", "result_uids"]

#: The UUID-derived arc (PS3.5 B.2).
DEFAULT_UID_ROOT = "2.25."
#: PS3.5 9.1: a UID is at most 64 characters.
MAX_UID_LENGTH = 64
#: Fewer suffix digits than this would make collisions between results plausible (about 53 bits).
MIN_SUFFIX_DIGITS = 16
#: A digest suffix never carries more than 128 bits (39 decimal digits), like a UUID.
MAX_SUFFIX_DIGITS = 39
#: Namespace of the name-based UUIDs (fixed forever: changing it changes every result UID).
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:dicom-node:results")
_ROOT_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.")
_UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


@dataclass(frozen=True)
class ResultUids:
    """The UIDs of the result objects of one (series, model, version).

    Attributes
    ----------
    seg_series_instance_uid, seg_sop_instance_uid : str
        Series and SOP Instance UID of the Segmentation (PS3.3 A.51).
    sr_series_instance_uid, sr_sop_instance_uid : str
        Series and SOP Instance UID of the Comprehensive 3D SR (PS3.3 A.35.13).
    """

    seg_series_instance_uid: str
    seg_sop_instance_uid: str
    sr_series_instance_uid: str
    sr_sop_instance_uid: str
    #: The root and the inputs they were derived from, to derive related UIDs (tracking UIDs).
    uid_root: str = DEFAULT_UID_ROOT
    basis: tuple[str, ...] = ()

    def derive(self, *parts: object) -> str:
        """Derive a further UID from the same basis (e.g. a segment's tracking UID).

        Parameters
        ----------
        *parts : object
            Values whose ``str()`` forms distinguish this UID from the others.

        Returns
        -------
        str
            A valid UID under the same root (PS3.5 9.1).
        """
        return derive_uid(self.uid_root, *self.basis, *parts)


def check_uid_root(root: str) -> str:
    """Normalise and validate a UID root (PS3.5 9.1).

    Parameters
    ----------
    root : str
        Digits and dots, e.g. ``"2.25."`` or ``"1.2.826.0.1.3680043.10.123"``;
        a missing final dot is added.

    Returns
    -------
    str
        The root, ending with a dot.

    Raises
    ------
    WriterError
        Not a valid UID prefix, or too long to leave 16 digits for the suffix.
    """
    root = root.strip()
    if root and not root.endswith("."):
        root += "."
    if not _ROOT_PATTERN.fullmatch(root):
        raise WriterError(f"results.uid_root {root!r}: not a UID prefix (digits and dots, no leading zeros, PS3.5 9.1)")
    if MAX_UID_LENGTH - len(root) < MIN_SUFFIX_DIGITS:
        raise WriterError(
            f"results.uid_root {root!r}: {len(root)} characters leave fewer than {MIN_SUFFIX_DIGITS} digits of a 64-character UID"
        )
    return root


def derive_uid(root: str, *parts: object) -> str:
    """Return the UID that ``parts`` derive under ``root``.

    Parameters
    ----------
    root : str
        A UID root (see :func:`check_uid_root`); ``"2.25."`` selects the UUID arc.
    *parts : object
        Values whose ``str()`` forms are hashed; the same parts give the same UID.

    Returns
    -------
    str
        A UID of at most 64 characters with no leading zeros in any component.

    Raises
    ------
    WriterError
        The root is invalid.
    """
    root = check_uid_root(root)
    # The unit separator cannot occur in a UID or a model name: ("a.b", "c") and ("a", "b.c") stay distinct.
    name = "\x1f".join(str(p) for p in parts)
    if root == DEFAULT_UID_ROOT:
        return root + str(uuid.uuid5(_NAMESPACE, name).int)
    digits = min(MAX_UID_LENGTH - len(root), MAX_SUFFIX_DIGITS)
    value = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest(), "big") % 10**digits
    return root + str(value)


def is_valid_uid(uid: str) -> bool:
    """True when ``uid`` is a syntactically valid UID (PS3.5 9.1)."""
    return len(uid) <= MAX_UID_LENGTH and _UID_PATTERN.fullmatch(uid) is not None


def result_uids(uid_root: str, source_series_uid: str, model_name: str, model_version: str) -> ResultUids:
    """Derive the SEG and SR UIDs of one model run on one series.

    Parameters
    ----------
    uid_root : str
        The configured root (``results.uid_root``); ``"2.25."`` by default.
    source_series_uid : str
        Series Instance UID of the analysed series.
    model_name, model_version : str
        The model spec's ``name`` and ``version``.

    Returns
    -------
    ResultUids
        Four distinct UIDs; identical inputs always give identical UIDs.

    Raises
    ------
    WriterError
        The root is invalid or the source series UID is empty.
    """
    if not source_series_uid:
        raise WriterError("cannot derive result UIDs: the source series has no Series Instance UID")
    root = check_uid_root(uid_root)
    basis = (source_series_uid, model_name, model_version)
    return ResultUids(
        seg_series_instance_uid=derive_uid(root, *basis, "seg-series"),
        seg_sop_instance_uid=derive_uid(root, *basis, "seg-instance"),
        sr_series_instance_uid=derive_uid(root, *basis, "sr-series"),
        sr_sop_instance_uid=derive_uid(root, *basis, "sr-instance"),
        uid_root=root,
        basis=basis,
    )
