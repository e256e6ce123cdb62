"""A-ASSOCIATE negotiation as acceptor (PS3.8 7.1, PS3.7 Annex D), on pynetdicom's PDU codec.

Access control decides before any presentation context is looked at; every
refusal uses the standard A-ASSOCIATE-RJ result/source/reason (PS3.8 Table 9-21).

Besides Verification and the storage SOP classes, the Study Root Query/Retrieve
FIND, MOVE and GET SOP classes are accepted (PS3.4 C.6.2). A C-GET requestor
proposes its storage contexts with the SCP role (SCP/SCU Role Selection, PS3.7
D.3.3.4); the role is granted and answered in the A-ASSOCIATE-AC, and such
contexts are listed in :attr:`Negotiated.scu_contexts`: those on which this node
may send C-STORE-RQ sub-operations.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, StoragePresentationContexts, negotiate_as_acceptor
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import time

from dicom_node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicom_node.config import ScpConfig
from dicom_node.config.tls import Subject, subject_allows
from dicom_node.pixels.syntaxes import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from dicom_node.scp.rq_check import (  # noqa: F401  # the A-ASSOCIATE-RJ table, re-exported for the SCP
    REASON_APP_CONTEXT,
    REASON_CALLED_AE,
    REASON_CALLING_AE,
    REASON_LOCAL_LIMIT,
    REASON_NO_REASON,
    RJ_PERMANENT,
    RJ_TRANSIENT,
    SRC_ACSE,
    SRC_PRESENTATION,
    SRC_USER,
    MalformedRequest,
    check_request,
)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


# Study Root Query/Retrieve Information Model (PS3.4 C.6.2.1).
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
QUERY_RETRIEVE_CLASSES = (STUDY_ROOT_FIND, STUDY_ROOT_MOVE, STUDY_ROOT_GET)
#: Identifiers are small: the native little endian syntaxes are enough (PS3.5 A.1, A.2).
_NATIVE_LE = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)


@dataclass(frozen=True)
class Rejection:
    """Why an association request is refused, as A-ASSOCIATE-RJ fields."""

    result: int
    source: int
    reason: int
    why: str


@dataclass
class Negotiated:
    """An accepted association: who called and which contexts were accepted."""

    calling_ae: str
    called_ae: str
    #: context id -> (abstract syntax UID, transfer syntax UID)
    contexts: dict[int, tuple[str, str]]
    peer_max_pdu: int
    ac_pdu: bytes
    #: Accepted contexts on which the requestor took the SCP role (PS3.7 D.3.3.4):
    #: this node may send C-STORE-RQ on them (C-GET sub-operations).
    scu_contexts: dict[int, tuple[str, str]] = field(default_factory=dict)
    #: Accepted contexts on which this node is the SCP, so the requestor may
    #: send C-STORE-RQ (PS3.7 D.3.3.4): not those where it took the SCP role only.
    scp_contexts: frozenset[int] = frozenset()


def supported_contexts(config: ScpConfig) -> list[PresentationContext]:
    """Verification, Study Root Q/R and every storage SOP class with the configured transfer syntaxes.

    Storage contexts accept a proposed SCU/SCP role selection (PS3.7 D.3.3.4),
    so a C-GET requestor acting as Storage SCP gets its role.
    """
    contexts = []
    for abstract in (Verification, *QUERY_RETRIEVE_CLASSES):
        cx = PresentationContext()
        cx.abstract_syntax = UID(abstract)
        cx.transfer_syntax = [UID(ts) for ts in _NATIVE_LE]
        contexts.append(cx)
    for storage in StoragePresentationContexts:
        cx = PresentationContext()
        assert storage.abstract_syntax is not None  # pynetdicom's contexts all name one
        cx.abstract_syntax = UID(storage.abstract_syntax)
        cx.transfer_syntax = [UID(ts) for ts in config.transfer_syntaxes]
        cx.scu_role = True
        cx.scp_role = True
        contexts.append(cx)
    return contexts


def check_access(
    config: ScpConfig, calling_ae: str, called_ae: str, peer_host: str, peer_subject: Subject | None = None
) -> Rejection | None:
    """Apply the called-AE check and the calling-AE allowlist.

    Parameters
    ----------
    peer_subject : Subject, optional
        Subject of the peer's verified TLS client certificate (:func:`dicom_node.scp.tls.peer_subject`);
        an allowlist entry with a ``certificate_subject`` admits only a peer presenting that subject.

    Returns
    -------
    Rejection or None
        None when the peer may associate.
    """
    if config.require_called_ae and called_ae != config.ae_title:
        return Rejection(RJ_PERMANENT, SRC_USER, REASON_CALLED_AE, "called AE title not recognised")
    if not config.allowed_peers:
        return None
    try:
        address = ipaddress.ip_address(peer_host)
    except ValueError:
        address = None
    wrong_certificate = False
    for peer in config.allowed_peers:
        if peer.ae_title != calling_ae:
            continue
        if peer.hosts and not (
            address is not None and any(address in ipaddress.ip_network(h, strict=False) for h in peer.hosts)
        ):
            continue
        if subject_allows(peer.certificate_subject, peer_subject):
            return None
        wrong_certificate = True
    # Same A-ASSOCIATE-RJ either way (PS3.8 Table 9-21 has no certificate reason); the log says which.
    why = "client certificate subject not the one of the calling AE title" if wrong_certificate else \
        "calling AE title not recognised"
    return Rejection(RJ_PERMANENT, SRC_USER, REASON_CALLING_AE, why)


def reject_pdu(rejection: Rejection) -> bytes:
    """Encode an A-ASSOCIATE-RJ PDU for ``rejection``."""
    primitive = A_ASSOCIATE()
    primitive.result = rejection.result
    primitive.result_source = rejection.source
    primitive.diagnostic = rejection.reason
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def decode_request(data: bytes) -> A_ASSOCIATE:
    """Check, then decode an A-ASSOCIATE-RQ PDU into pynetdicom's primitive.

    :func:`~dicom_node.scp.rq_check.check_request` walks every length and text
    field first: pynetdicom's decoder trusts them (``struct.error``, a failed
    ``assert``, an ERROR log with a traceback for a non-ASCII AE title).

    Raises
    ------
    PduError
        The fixed header cannot be read: answer A-ABORT.
    MalformedRequest
        Anything else is wrong: answer A-ASSOCIATE-RJ with its source and reason.
    """
    check_request(data)
    try:
        pdu = A_ASSOCIATE_RQ()
        pdu.decode(data)
        return pdu.to_primitive()
    # A checked PDU should decode; should pynetdicom still object, the peer gets a refusal, not a dead thread.
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, AssertionError, struct.error) as exc:
        raise MalformedRequest(f"A-ASSOCIATE-RQ not decodable error={type(exc).__name__}") from exc


def negotiate(config: ScpConfig, request: A_ASSOCIATE, supported: list[PresentationContext]) -> Negotiated:
    """Negotiate presentation contexts and build the A-ASSOCIATE-AC PDU.

    Parameters
    ----------
    config : ScpConfig
        Our AE title and maximum PDU length.
    request : A_ASSOCIATE
        The requestor's primitive.
    supported : list of PresentationContext
        What we accept, from :func:`supported_contexts`.
    """
    proposed_roles = {
        UID(item.sop_class_uid): (item.scu_role, item.scp_role)
        for item in request.user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid
    }
    results, roles = negotiate_as_acceptor(
        request.presentation_context_definition_list, supported, proposed_roles or None
    )
    accepted = {
        int(cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
        for cx in results
        if cx.result == 0x00 and cx.context_id is not None
    }
    # pynetdicom's as_scu is the acceptor's role: True where the requestor will be the Storage SCP.
    scu_contexts = {
        int(cx.context_id): accepted[int(cx.context_id)]
        for cx in results
        if cx.result == 0x00 and cx.context_id is not None and cx.as_scu
    }
    scp_contexts = frozenset(
        int(cx.context_id) for cx in results if cx.result == 0x00 and cx.context_id is not None and cx.as_scp
    )
    peer_max = 0
    for item in request.user_information:
        if isinstance(item, MaximumLengthNotification):
            peer_max = int(item.maximum_length_received or 0)
    primitive = A_ASSOCIATE()
    primitive.application_context_name = UID(APPLICATION_CONTEXT)
    primitive.calling_ae_title = request.calling_ae_title
    primitive.called_ae_title = request.called_ae_title
    primitive.result = 0x00
    primitive.result_source = 0x01
    primitive.presentation_context_definition_results_list = results
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = config.max_pdu
    impl_uid = ImplementationClassUIDNotification()
    impl_uid.implementation_class_uid = UID(IMPLEMENTATION_CLASS_UID)
    impl_name = ImplementationVersionNameNotification()
    impl_name.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    primitive.user_information = [max_length, impl_uid, impl_name, *roles]
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(primitive)
    return Negotiated(
        calling_ae=str(request.calling_ae_title).strip(),
        called_ae=str(request.called_ae_title).strip(),
        contexts=accepted,
        peer_max_pdu=peer_max,
        ac_pdu=bytes(pdu.encode()),
        scu_contexts=scu_contexts,
        scp_contexts=scp_contexts,
    )
