"""Send result objects to a C-STORE SCP (PS3.4 Annex B) with pynetdicom.

For every SOP class among the objects the association proposes one
presentation context per non-native transfer syntax the objects carry
(alone, so the peer can accept it without giving up the fallback) and one with
Explicit VR Little Endian and Implicit VR Little Endian (PS3.5 A.2, A.1). Each
object goes in its own syntax when accepted, else it is transcoded losslessly
with :func:`dicom_node.pixels.transcode.transcode` to a syntax the peer
accepted for its SOP class. Each C-STORE response status is classified at once
(:mod:`dicom_node.delivery.classify`) and reported through ``on_outcome`` so
the caller can record the success before the next object is sent.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Sequence

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context

from dicom_node.config.delivery import DimseDestination
from dicom_node.delivery.classify import Outcome, Verdict, classify_dimse_status, classify_rejection, describe_status
from dicom_node.errors import DeliveryError, PixelError
from dicom_node.net.peers import AssociationProbe
from dicom_node.pixels.transcode import transcode

__all__ = ["plan_contexts", "send_dimse"]

log = logging.getLogger(__name__)

#: PS3.8 9.3.3.2: at most 128 presentation contexts (odd IDs 1-255) per association.
MAX_CONTEXTS = 128
_NATIVE_LE = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))

OnOutcome = Callable[[Outcome], None]


def _syntax(ds: Dataset) -> str:
    return str(ds.file_meta.TransferSyntaxUID)


def plan_contexts(datasets: Sequence[Dataset]) -> list[PresentationContext]:
    """Presentation contexts proposing each object's SOP class in its own syntax plus the native ones.

    Parameters
    ----------
    datasets : sequence of pydicom.dataset.Dataset
        Objects with file meta.

    Returns
    -------
    list of pynetdicom.presentation.PresentationContext
        Without context IDs (pynetdicom assigns them).
    """
    by_class: dict[str, list[str]] = {}
    for ds in datasets:
        syntaxes = by_class.setdefault(str(ds.SOPClassUID), [])
        if _syntax(ds) not in syntaxes:
            syntaxes.append(_syntax(ds))
    contexts: list[PresentationContext] = []
    for sop_class, syntaxes in by_class.items():
        contexts.extend(build_context(sop_class, [ts]) for ts in syntaxes if ts not in _NATIVE_LE)
        contexts.append(build_context(sop_class, list(_NATIVE_LE)))
    return contexts


def _batches(datasets: Sequence[Dataset]) -> list[list[Dataset]]:
    """Split objects by SOP class so no association proposes more than 128 contexts."""
    groups: dict[str, list[Dataset]] = {}
    for ds in datasets:
        groups.setdefault(str(ds.SOPClassUID), []).append(ds)
    batches: list[list[Dataset]] = [[]]
    for group in groups.values():
        if batches[-1] and len(plan_contexts(batches[-1] + group)) > MAX_CONTEXTS:
            batches.append([])
        batches[-1].extend(group)
    return [b for b in batches if b]


def _tls_args(dest: DimseDestination) -> tuple[ssl.SSLContext, str] | None:
    try:
        return dest.tls_args()
    except (OSError, ssl.SSLError) as exc:
        raise DeliveryError(f"destination {dest.name}: cannot load TLS files: {exc}", retryable=False) from exc


def _association_failure(dest: DimseDestination, probe: AssociationProbe, assoc: Association) -> tuple[Verdict, str]:
    """Why an association did not come up, and whether a retry can help."""
    where = f"{dest.ae_title}@{dest.host}:{dest.port}"
    rsp = probe.response
    if assoc.is_rejected and rsp is not None and rsp.result is not None:
        verdict = classify_rejection(int(rsp.result))
        return verdict, f"association rejected by {where}: {rsp.result_str}, source {rsp.source_str}, reason {rsp.reason_str}"
    if rsp is not None and rsp.result == 0:
        # A-ASSOCIATE-AC with every context refused: the peer does not take these SOP classes.
        return Verdict.DEAD, f"{where} accepted no presentation context (SOP class not supported)"
    if not probe.connected:
        return Verdict.RETRY, f"cannot connect to {where} (refused, unreachable or TLS handshake failed)"
    return Verdict.RETRY, f"association with {where} aborted or timed out"


def _associate(dest: DimseDestination, contexts: list[PresentationContext], probe: AssociationProbe) -> Association:
    ae = AE(ae_title=dest.calling_ae)
    ae.acse_timeout = dest.acse_timeout
    ae.dimse_timeout = dest.dimse_timeout
    ae.network_timeout = dest.network_timeout
    ae.maximum_pdu_size = dest.max_pdu
    return ae.associate(
        dest.connect_host, dest.port, contexts=contexts, ae_title=dest.ae_title, max_pdu=dest.max_pdu,
        tls_args=_tls_args(dest),
        evt_handlers=[(evt.EVT_CONN_OPEN, probe.on_open), (evt.EVT_ACSE_RECV, probe.on_acse)],
    )


def _accepted_syntaxes(assoc: Association, sop_class: str) -> list[str]:
    return [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class]


def _store_one(assoc: Association, dest: DimseDestination, ds: Dataset) -> Outcome:
    """Transcode when needed, C-STORE, and classify the response (PS3.4 B.2.3)."""
    uid = str(ds.SOPInstanceUID)
    accepted = _accepted_syntaxes(assoc, str(ds.SOPClassUID))
    if not accepted:
        return Outcome(uid, Verdict.DEAD, f"{dest.ae_title} did not accept SOP class {ds.SOPClassUID}")
    try:
        out = transcode(ds, accepted)
    except PixelError as exc:
        return Outcome(uid, Verdict.DEAD, f"cannot transcode to a syntax {dest.ae_title} accepted: {exc}")
    try:
        status = assoc.send_c_store(out)
    except (ValueError, AttributeError) as exc:
        return Outcome(uid, Verdict.DEAD, f"cannot encode or send: {exc}")
    except RuntimeError as exc:
        return Outcome(uid, Verdict.RETRY, f"association lost: {exc}")
    if "Status" not in status:
        return Outcome(uid, Verdict.RETRY, f"no C-STORE response from {dest.ae_title} (DIMSE timeout or abort)")
    code = int(status.Status)
    verdict = classify_dimse_status(code)
    return Outcome(uid, verdict, f"C-STORE status {describe_status(code)} from {dest.ae_title}", status=code)


def _send_batch(dest: DimseDestination, datasets: list[Dataset], on_outcome: OnOutcome) -> list[Outcome]:
    probe = AssociationProbe()
    assoc = _associate(dest, plan_contexts(datasets), probe)
    if not assoc.is_established:
        verdict, detail = _association_failure(dest, probe, assoc)
        log.warning("delivery association failed destination=%s verdict=%s detail=%s", dest.name, verdict.value, detail)
        failed = [Outcome(str(ds.SOPInstanceUID), verdict, detail) for ds in datasets]
        for outcome in failed:
            on_outcome(outcome)
        return failed
    outcomes: list[Outcome] = []
    try:
        for ds in datasets:
            if assoc.is_established:
                outcome = _store_one(assoc, dest, ds)
            else:
                outcome = Outcome(str(ds.SOPInstanceUID), Verdict.RETRY, f"association with {dest.ae_title} ended early")
            log.info(
                "c-store destination=%s sop_instance_uid=%s verdict=%s detail=%s",
                dest.name, outcome.sop_instance_uid, outcome.verdict.value, outcome.detail,
            )
            outcomes.append(outcome)
            on_outcome(outcome)
    finally:
        if assoc.is_established:
            assoc.release()
    return outcomes


def send_dimse(dest: DimseDestination, datasets: Sequence[Dataset], on_outcome: OnOutcome | None = None) -> list[Outcome]:
    """C-STORE ``datasets`` to ``dest``; one :class:`Outcome` per object, in order.

    Parameters
    ----------
    dest : DimseDestination
        The Storage SCP.
    datasets : sequence of pydicom.dataset.Dataset
        Objects with file meta (SEG, SR or any storage SOP class).
    on_outcome : callable, optional
        Called with each outcome as soon as it is known (before the next
        C-STORE), so a success can be recorded before anything else happens.

    Returns
    -------
    list of Outcome
        In the order of ``datasets``.

    Raises
    ------
    DeliveryError
        Only for a broken destination setup (unreadable TLS files); peer
        failures are outcomes, not exceptions.
    """
    callback: OnOutcome = on_outcome if on_outcome is not None else (lambda _o: None)
    by_uid: dict[str, Outcome] = {}
    for batch in _batches(datasets):
        for outcome in _send_batch(dest, batch, callback):
            by_uid[outcome.sop_instance_uid] = outcome
    return [by_uid[str(ds.SOPInstanceUID)] for ds in datasets]
