"""C-STORE under hostile or unlucky peers: wrong SCP/SCU role, aborts mid-instance and mid-series, duplicates at once.

Raw PDUs (``bench/fuzz.py``'s builders) where pynetdicom would refuse to send
what a broken peer sends; pynetdicom associations where a real SCU suffices.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from bench import fuzz
from dicom_node.node import Node
from dicom_node.scp import pdu as P
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import wait_for
from tests.scu import send_all

CT_CONTEXT = 3  # fuzz.associate_rq(): context 3 is CT Image Storage, context 1 Verification


def series(n: int, seed: str) -> list[Dataset]:
    return list(ct_datasets(SeriesSpec(slices=n, rows=16, columns=16, seed=seed)))


def implicit_le(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    return bytes(fp.getvalue())


def open_raw(port: int, roles: tuple[tuple[str, int, int], ...] = ()) -> socket.socket:
    """An accepted association proposing CT Image Storage in Implicit VR Little Endian only."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    contexts = ((1, fuzz.VERIFICATION, (fuzz.IMPLICIT_LE,)), (CT_CONTEXT, fuzz.CT_STORAGE, (fuzz.IMPLICIT_LE,)))
    sock.sendall(fuzz.associate_rq(contexts=contexts, roles=roles))
    answer = fuzz.read_pdu(sock)
    assert answer is not None and answer[0] == P.ASSOCIATE_AC, answer
    return sock


def store_pdus(ds: Dataset, message_id: int = 1) -> tuple[bytes, bytes]:
    """The command PDU and the dataset PDU of one C-STORE-RQ on the CT context."""
    command = P.encode_store_rq(message_id, ds.SOPClassUID, ds.SOPInstanceUID)
    return P.p_data_pdu(CT_CONTEXT, 0x03, command), P.p_data_pdu(CT_CONTEXT, 0x02, implicit_le(ds))


def store_status(sock: socket.socket, ds: Dataset, message_id: int = 1) -> int:
    """Send one C-STORE-RQ and return the response's Status (0000,0900)."""
    command, data = store_pdus(ds, message_id)
    sock.sendall(command + data)
    answer = fuzz.read_pdu(sock)
    assert answer is not None and answer[0] == P.P_DATA_TF, answer
    response = P.decode_command(answer[1][6:])  # one PDV: 4-byte length, context ID, control header
    status = response.uint16(P.TAG_STATUS)
    assert status is not None
    return status


def release(sock: socket.socket) -> None:
    sock.sendall(struct.pack(">BxI", P.RELEASE_RQ, 4) + b"\x00" * 4)
    answer = fuzz.read_pdu(sock)
    assert answer is not None and answer[0] == P.RELEASE_RP
    sock.close()


def test_c_store_on_a_context_where_the_peer_is_only_scp_is_refused(start_node: Callable[..., Node]) -> None:
    """Issue 14 (earlier notes): roles were not enforced on an incoming C-STORE.

    A C-GET requestor proposes CT storage with SCU role 0 and SCP role 1 (PS3.7
    D.3.3.4): on that context only the acceptor may send C-STORE-RQ. A C-STORE-RQ
    from the requestor is answered 0124H Refused: Not Authorized (PS3.7 Annex C),
    its dataset drained, nothing stored, and the association goes on.
    """
    node: Node = start_node()
    scp_only, normal = series(2, "roles")
    sock = open_raw(node.scp.port, roles=((fuzz.CT_STORAGE, 0, 1),))
    assert store_status(sock, scp_only) == 0x0124
    release(sock)
    sock = open_raw(node.scp.port)  # no role selection: the requestor is the SCU (PS3.7 D.3.3.4 default)
    assert store_status(sock, normal) == 0x0000
    release(sock)
    assert node.index.instance_uids() == {normal.SOPInstanceUID}


def test_abort_mid_instance_keeps_the_acknowledged_rest_of_the_series(start_node: Callable[..., Node]) -> None:
    """The partial instance is not indexed and leaves no file; the acknowledged ones and a later resend are."""
    node: Node = start_node()
    datasets = series(5, "abort-mid")
    sock = open_raw(node.scp.port)
    for number, ds in enumerate(datasets[:3], start=1):
        assert store_status(sock, ds, number) == 0
    command, data = store_pdus(datasets[3], 4)
    half = P.p_data_pdu(CT_CONTEXT, 0x00, implicit_le(datasets[3])[: len(data) // 2])  # dataset, not last
    sock.sendall(command + half + P.abort_pdu(0, 0))
    sock.close()
    assert wait_for(lambda: node.scp.active == 0)
    assert node.index.instance_uids() == {ds.SOPInstanceUID for ds in datasets[:3]}
    assert wait_for(lambda: not list(node.spool.tmp.iterdir())), "the partial instance left a temporary file"
    # The sender resends what was not acknowledged; the series is then whole.
    assert send_all(node.scp.port, datasets[3:]) == [0, 0]
    assert node.index.instance_uids() == {ds.SOPInstanceUID for ds in datasets}


def test_concurrent_duplicate_senders_store_one_copy(start_node: Callable[..., Node]) -> None:
    """The same SOP instance from 6 associations at once: all acknowledged (keep_first, PS3.4 B.2.3), one indexed."""
    node: Node = start_node()
    ds = series(1, "dup-race")[0]
    statuses: list[list[int]] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def send() -> None:
        start.wait()
        result = send_all(node.scp.port, [ds])
        with lock:
            statuses.append(result)

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(statuses) == [[0]] * 6
    assert node.index.counts()["instances"] == 1
    assert len(list(node.spool.files.rglob("*.dcm"))) == 1
