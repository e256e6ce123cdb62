"""Associations with a remote Query/Retrieve SCP, for :class:`~dicom_node.sources.dimse.DimseSource`.

One place opens the association (pynetdicom as SCU, TLS optional), says why
one did not come up (A-ASSOCIATE-RJ with its result, source and reason; TCP
refused; TLS failure; timeout) as a :class:`~dicom_node.errors.SourceError`
whose ``retryable`` tells a poller whether to back off and try again, and
proposes the storage presentation contexts with SCP/SCU role selection that
C-GET needs (PS3.4 C.4.3.1, PS3.7 D.3.3.4): the remote's C-STORE
sub-operations travel back on the same association.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt, sop_class
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import PresentationContext, build_context

from dicom_node.config.sources import RemoteNode
from dicom_node.delivery.classify import classify_rejection, describe_status
from dicom_node.errors import SourceError
from dicom_node.net.peers import AssociationProbe
from dicom_node.net.policy import OutboundError

__all__ = [
    "FIND_MODEL", "GET_MODEL", "GET_STORAGE_CLASSES", "MOVE_MODEL", "associate", "describe", "get_contexts",
    "responses",
]

log = logging.getLogger(__name__)

#: Study Root Query/Retrieve Information Model (PS3.4 C.6.2): FIND, MOVE, GET.
FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"
MOVE_MODEL = "1.2.840.10008.5.1.4.1.2.2.2"
GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"

#: PS3.8 9.3.3.2: at most 128 presentation contexts per association; C-GET and C-FIND take two.
MAX_CONTEXTS = 128

#: Storage SOP classes C-GET accepts back (PS3.4 B.5): images, segmentations, SRs,
#: presentation states, RT and encapsulated documents a model or a viewer meets.
GET_STORAGE_CLASSES: tuple[str, ...] = tuple(str(getattr(sop_class, name)) for name in (
    "CTImageStorage", "EnhancedCTImageStorage", "LegacyConvertedEnhancedCTImageStorage",
    "MRImageStorage", "EnhancedMRImageStorage", "EnhancedMRColorImageStorage", "LegacyConvertedEnhancedMRImageStorage",
    "MRSpectroscopyStorage",
    "PositronEmissionTomographyImageStorage", "EnhancedPETImageStorage", "LegacyConvertedEnhancedPETImageStorage",
    "NuclearMedicineImageStorage",
    "ComputedRadiographyImageStorage", "DigitalXRayImageStorageForPresentation",
    "DigitalXRayImageStorageForProcessing", "DigitalMammographyXRayImageStorageForPresentation",
    "DigitalMammographyXRayImageStorageForProcessing", "BreastTomosynthesisImageStorage",
    "XRayAngiographicImageStorage", "EnhancedXAImageStorage", "XRayRadiofluoroscopicImageStorage",
    "XRay3DAngiographicImageStorage",
    "UltrasoundImageStorage", "UltrasoundMultiFrameImageStorage", "EnhancedUSVolumeStorage",
    "SecondaryCaptureImageStorage", "MultiFrameGrayscaleByteSecondaryCaptureImageStorage",
    "MultiFrameGrayscaleWordSecondaryCaptureImageStorage", "MultiFrameTrueColorSecondaryCaptureImageStorage",
    "VLPhotographicImageStorage", "VLWholeSlideMicroscopyImageStorage",
    "SegmentationStorage", "SurfaceSegmentationStorage", "ParametricMapStorage", "SpatialRegistrationStorage",
    "DeformableSpatialRegistrationStorage", "RealWorldValueMappingStorage",
    "BasicTextSRStorage", "EnhancedSRStorage", "ComprehensiveSRStorage", "Comprehensive3DSRStorage",
    "ExtensibleSRStorage", "KeyObjectSelectionDocumentStorage", "XRayRadiationDoseSRStorage",
    "GrayscaleSoftcopyPresentationStateStorage", "ColorSoftcopyPresentationStateStorage",
    "RTStructureSetStorage", "RTDoseStorage", "RTPlanStorage", "RTImageStorage",
    "EncapsulatedPDFStorage", "RawDataStorage",
))


@dataclass
class Exchange:
    """Handlers to bind to one association (C-STORE sub-operations of a C-GET)."""

    handlers: list[tuple[Any, Callable[..., Any]]] = field(default_factory=list)
    roles: list[SCP_SCU_RoleSelectionNegotiation] = field(default_factory=list)


def where(remote: RemoteNode) -> str:
    """``AE@host:port`` of a remote, for messages (no PHI)."""
    return f"{remote.ae_title}@{remote.host}:{remote.port}"


def describe(status: int) -> str:
    """PS3.4 C.4 status as text: ``0xA801 (move destination unknown)`` and the like."""
    named = {0xA801: "move destination unknown", 0xA701: "out of resources: cannot calculate the matches",
             0xA702: "out of resources: cannot perform sub-operations", 0xFE00: "cancelled",
             0xB000: "sub-operations completed with one or more failures or warnings",
             0x0122: "SOP class not supported", 0x0124: "not authorized"}
    return f"0x{status:04X} ({named[status]})" if status in named else describe_status(status)


def _tls_args(remote: RemoteNode) -> tuple[ssl.SSLContext, str] | None:
    try:
        return remote.tls_args()
    except (OSError, ssl.SSLError) as exc:
        raise SourceError(f"remote {remote.name}: cannot load TLS files: {exc}", retryable=False) from exc


def _failure(remote: RemoteNode, probe: AssociationProbe, assoc: Association) -> SourceError:
    """Why the association did not come up, and whether a retry can help."""
    rsp = probe.response
    if assoc.is_rejected and rsp is not None and rsp.result is not None:
        retry = classify_rejection(int(rsp.result)).value == "retry"
        return SourceError(f"association rejected by {where(remote)}: {rsp.result_str}, source {rsp.source_str}, "
                           f"reason {rsp.reason_str}", retryable=retry)
    if not probe.connected:
        return SourceError(f"cannot connect to {where(remote)} (refused, unreachable or TLS handshake failed)",
                           retryable=True)
    return SourceError(f"association with {where(remote)} aborted or timed out", retryable=True)


def get_contexts(transfer_syntaxes: Sequence[str]) -> tuple[list[PresentationContext], Exchange]:
    """Contexts and role selections for a C-GET: the GET model plus storage classes as SCP.

    Parameters
    ----------
    transfer_syntaxes : sequence of str
        Syntaxes we take the instances in (the SCP's accepted ones), in preference order.

    Returns
    -------
    tuple
        The presentation contexts (at most 128: C-GET, C-FIND, storage) and an :class:`Exchange` holding the
        SCP/SCU role selection items (PS3.7 D.3.3.4): we are the SCP of C-STORE.
    """
    storage = list(GET_STORAGE_CLASSES[:MAX_CONTEXTS - 2])
    # C-FIND rides along to tell "unknown study" from other failures (see DimseSource.explain_unknown).
    contexts = [build_context(GET_MODEL), build_context(FIND_MODEL)] + [
        build_context(uid, list(transfer_syntaxes)) for uid in storage]
    return contexts, Exchange(roles=[build_role(uid, scp_role=True) for uid in storage])


@contextmanager
def associate(remote: RemoteNode, calling_ae: str, contexts: list[PresentationContext],
              exchange: Exchange | None = None) -> Iterator[Association]:
    """An established association with ``remote``; released on exit, aborted on an exception.

    Raises
    ------
    SourceError
        When the host is refused (SSRF rules), TLS files cannot be loaded, or the
        association is rejected, refused, aborted or times out.
    """
    try:
        # Resolved and checked once; the association goes to that address (DNS pinning), TLS verifies the name.
        pinned = remote.pinned()
    except OutboundError as exc:
        raise SourceError(f"remote {remote.name}: {exc}", retryable=exc.retryable) from exc
    exchange = exchange or Exchange()
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = remote.acse_timeout
    ae.dimse_timeout = remote.dimse_timeout
    ae.network_timeout = remote.network_timeout
    ae.maximum_pdu_size = remote.max_pdu
    probe = AssociationProbe()
    assoc = ae.associate(
        pinned.connect_host, remote.port, contexts=contexts, ae_title=remote.ae_title, max_pdu=remote.max_pdu,
        ext_neg=list(exchange.roles) or None, tls_args=_tls_args(remote),
        evt_handlers=[(evt.EVT_CONN_OPEN, probe.on_open), (evt.EVT_ACSE_RECV, probe.on_acse), *exchange.handlers],
    )
    if not assoc.is_established:
        error = _failure(remote, probe, assoc)
        log.warning("q/r association failed remote=%s detail=%s", remote.name, error)
        raise error
    try:
        yield assoc
    except BaseException:
        if assoc.is_established:
            assoc.abort()
        raise
    if assoc.is_established:
        assoc.release()


def require_context(assoc: Association, remote: RemoteNode, model: str, what: str) -> None:
    """Raise unless ``remote`` accepted ``model`` (it does not support that service)."""
    if not any(cx.abstract_syntax == model for cx in assoc.accepted_contexts):
        raise SourceError(f"{where(remote)} does not accept {what} (Study Root, {model})", retryable=False)


def responses(assoc: Association, iterator: Iterator[tuple[Dataset, Dataset | None]], remote: RemoteNode, op: str,
              on_pending: Callable[[Dataset | None], None] | None = None) -> tuple[int, Dataset, Dataset | None]:
    """Walk the responses of a C-FIND/C-GET/C-MOVE; return (final status, status dataset, identifier).

    Pending responses (0xFF00, 0xFF01) go to ``on_pending`` with their identifier.

    Raises
    ------
    SourceError
        When a response is missing (DIMSE timeout, abort, association lost).
    """
    for status, identifier in iterator:
        if "Status" not in status:
            if assoc.acse.is_aborted("a-abort") or assoc.acse.is_aborted("a-p-abort"):
                # Orthanc, for one, drops the connection when the calling AE may not use the service.
                raise SourceError(f"{where(remote)} aborted the association during {op} (is calling AE "
                                  f"{assoc.requestor.ae_title!r} allowed to use {op} there?)", retryable=True)
            raise SourceError(f"no {op} response from {where(remote)} within {remote.dimse_timeout:g} s "
                              "(DIMSE timeout or connection lost)", retryable=True)
        code = int(status.Status)
        if code in (0xFF00, 0xFF01):
            if on_pending is not None:
                on_pending(identifier)
            continue
        return code, status, identifier
    raise SourceError(f"{op} to {where(remote)} ended without a final response", retryable=True)
