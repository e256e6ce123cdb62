"""pynetdicom SCU helpers for the negative-path tests (a real DICOM peer, not a fake)."""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


def make_ae(calling: str = "TEST_SCU") -> AE:
    """An SCU proposing CT Image Storage in the uncompressed and deflated syntaxes."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = 30  # an A-ASSOCIATE-RJ under two parallel test passes on 2 cores came after 10 s once
    ae.dimse_timeout = 30
    ae.network_timeout = 30
    ae.add_requested_context(CTImageStorage, SYNTAXES)
    # A context of its own, so a deflated dataset is sent deflated rather than converted.
    ae.add_requested_context(CTImageStorage, [DeflatedExplicitVRLittleEndian])
    ae.add_requested_context("1.2.840.10008.1.1")
    return ae


def associate(port: int, calling: str = "TEST_SCU", called: str = "DICOM_NODE") -> Association:
    """Open an association to the node on loopback."""
    return make_ae(calling).associate("127.0.0.1", port, ae_title=called)


def send_all(port: int, datasets: Iterable[Dataset], calling: str = "TEST_SCU", called: str = "DICOM_NODE") -> list[int]:
    """Send datasets on one association and return each C-STORE status."""
    assoc = associate(port, calling, called)
    assert assoc.is_established, "association was not accepted"
    statuses = []
    try:
        for ds in datasets:
            rsp = assoc.send_c_store(ds)
            statuses.append(int(rsp.Status) if "Status" in rsp else -1)
    finally:
        assoc.release()
    return statuses
