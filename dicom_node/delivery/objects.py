"""Write result objects to a bucket prefix (GCS, Azure Blob, S3) through :class:`dicom_node.objects.ObjectStores`.

A ``kind = "object"`` destination (:class:`~dicom_node.config.delivery.ObjectDestination`)
stores each PS3.10 file unchanged at
``<prefix>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` with
``Content-Type: application/dicom`` (PS3.18 8.7.3). The key is built from the three
UIDs only after each is checked to be a valid UID (PS3.5 9.1): digits and dots, so no
value read from a file can add a ``/``, a ``..`` or anything else to the key.

Verdicts follow :mod:`dicom_node.delivery.classify`: a written object is a success (a
put of the same key replaces the object, so a retry after a lost answer is harmless);
a store error marked ``retryable`` (connection refused, timeouts, HTTP 5xx/429) is
retried on the ledger's schedule; a refusal (bucket not allowlisted, access denied, no
such bucket) is dead at once. A refusal or an unreachable store ends the batch: the
objects not yet tried get the same verdict as a :class:`~dicom_node.errors.DeliveryError`,
so a wrong credential costs one request, not one per object.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from dicom_node.config.delivery import ObjectDestination
from dicom_node.delivery.classify import Outcome, Verdict
from dicom_node.errors import DeliveryError
from dicom_node.objects import ObjectNotFound, ObjectRefused, ObjectStoreError, ObjectStores, ObjectUrl
from dicom_node.validators import is_uid

__all__ = ["object_url", "send_objects"]

log = logging.getLogger(__name__)

OnOutcome = Callable[[Outcome], None]
#: PS3.18 8.7.3: the media type of a PS3.10 file.
DICOM_MEDIA_TYPE = "application/dicom"


def object_url(prefix: ObjectUrl, dataset: Dataset) -> ObjectUrl:
    """Where ``dataset`` goes under ``prefix``: ``<prefix>/<Study>/<Series>/<SOP>.dcm``.

    Raises
    ------
    DeliveryError
        Not retryable: one of the three UIDs is missing or not a valid UID.
    """
    parts = []
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        value = str(dataset.get(keyword, "") or "")
        if not is_uid(value):
            raise DeliveryError(f"result object has no valid {keyword}; it cannot be named in a bucket",
                                retryable=False)
        parts.append(value)
    return prefix.child(f"{parts[0]}/{parts[1]}/{parts[2]}.dcm")


def send_objects(dest: ObjectDestination, stores: ObjectStores, items: Sequence[tuple[Path, Dataset]],
                 on_outcome: OnOutcome | None = None) -> list[Outcome]:
    """Write each file of ``items`` under ``dest``'s prefix; one :class:`Outcome` per object, in order.

    Parameters
    ----------
    dest : ObjectDestination
        The bucket prefix.
    stores : ObjectStores
        The node's object storage (allowlists, credentials, clients).
    items : sequence of (pathlib.Path, pydicom.dataset.Dataset)
        The PS3.10 file, written unchanged, and its dataset (for the UIDs of the key).
    on_outcome : callable, optional
        Called with each outcome as soon as its object is written.

    Raises
    ------
    DeliveryError
        The store refused (not retryable) or could not be reached (retryable); the
        objects written before it stay recorded through ``on_outcome``.
    """
    prefix = dest.prefix()
    try:
        stores.check(prefix)  # a bucket missing from the allowlist fails every object before any I/O
    except ObjectRefused as exc:
        raise DeliveryError(f"object destination {dest.name}: {exc}", retryable=False) from exc
    outcomes: list[Outcome] = []
    for path, dataset in items:
        uid = str(dataset.get("SOPInstanceUID", ""))
        try:
            url = object_url(prefix, dataset)
        except DeliveryError as exc:  # this object cannot be named; the others still can
            outcome = Outcome(uid, Verdict.DEAD, str(exc))
        else:
            outcome = _put(dest, stores, url, path, uid)
        log.info("object delivery destination=%s sop_instance_uid=%s verdict=%s", dest.name, uid,
                 outcome.verdict.value)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return outcomes


def _put(dest: ObjectDestination, stores: ObjectStores, url: ObjectUrl, path: Path, uid: str) -> Outcome:
    try:
        stores.put(url, path, content_type=DICOM_MEDIA_TYPE)
    except (ObjectRefused, ObjectNotFound) as exc:
        # Access denied, bucket refused or missing: the next object would fare the same.
        raise DeliveryError(f"object destination {dest.name}: {exc}", retryable=False) from exc
    except ObjectStoreError as exc:
        if exc.retryable:  # unreachable or overloaded: retry the whole rest later
            raise DeliveryError(f"object destination {dest.name}: {exc}", retryable=True) from exc
        return Outcome(uid, Verdict.DEAD, f"object destination {dest.name}: {exc}")
    return Outcome(uid, Verdict.SUCCESS, "written")
