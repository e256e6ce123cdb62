"""Association-level protection: allowlist, called AE, source host, association limit, PDU bounds."""

from __future__ import annotations

import socket
import struct

from dicom_node.node import Node
from tests.scu import associate


def _rejection(assoc) -> tuple[int, int, int]:
    rj = assoc.acceptor.primitive
    return int(rj.result), int(rj.result_source), int(rj.diagnostic)


def test_unknown_calling_ae_is_rejected(start_node) -> None:
    node: Node = start_node(scp={"allowed_peers": [{"ae_title": "PACS"}]})
    assoc = associate(node.scp.port, calling="INTRUDER")
    assert assoc.is_rejected
    # Rejected permanent, service user, calling AE title not recognised (PS3.8 Table 9-21).
    assert _rejection(assoc) == (1, 1, 3)
    ok = associate(node.scp.port, calling="PACS")
    assert ok.is_established
    ok.release()


def test_wrong_called_ae_is_rejected(start_node) -> None:
    node: Node = start_node()
    assoc = associate(node.scp.port, called="SOMEONE_ELSE")
    assert assoc.is_rejected and _rejection(assoc) == (1, 1, 7)


def test_allowlist_pins_source_host(start_node) -> None:
    node: Node = start_node(scp={"allowed_peers": [{"ae_title": "PACS", "hosts": ["10.1.2.3/32"]}]})
    assoc = associate(node.scp.port, calling="PACS")
    assert assoc.is_rejected and _rejection(assoc) == (1, 1, 3)
    node2: Node = start_node(root=node.spool.root.parent / "n2",
                             scp={"allowed_peers": [{"ae_title": "PACS", "hosts": ["127.0.0.0/8"]}]})
    assoc = associate(node2.scp.port, calling="PACS")
    assert assoc.is_established
    assoc.release()


def test_association_limit_rejects_transiently(start_node) -> None:
    node: Node = start_node(scp={"max_associations": 1})
    first = associate(node.scp.port)
    assert first.is_established
    second = associate(node.scp.port)
    assert second.is_rejected
    # Rejected transient, service provider (presentation), local limit exceeded.
    assert _rejection(second) == (2, 3, 2)
    first.release()
    third = associate(node.scp.port)
    assert third.is_established
    third.release()


def test_oversized_pdu_aborts_without_allocating(start_node) -> None:
    node: Node = start_node()
    with socket.create_connection(("127.0.0.1", node.scp.port), timeout=5) as sock:
        # An A-ASSOCIATE-RQ claiming 4 GB: refused by its header, nothing read or allocated.
        sock.sendall(struct.pack(">BxI", 0x01, 0xFFFFFFF0))
        data = sock.recv(10)
    assert data[:1] == b"\x07", "expected an A-ABORT PDU"
    # The node keeps serving.
    assoc = associate(node.scp.port)
    assert assoc.is_established
    assoc.release()


def test_garbage_is_answered_with_abort(start_node) -> None:
    node: Node = start_node()
    with socket.create_connection(("127.0.0.1", node.scp.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = sock.recv(10)
    assert data[:1] == b"\x07"


def test_idle_association_times_out_and_is_aborted(start_node) -> None:
    import time

    node: Node = start_node(scp={"network_timeout": 0.5})
    assoc = associate(node.scp.port)
    assert assoc.is_established
    time.sleep(1.5)
    assert assoc.is_aborted or not assoc.is_established
    rows = node.index.reader().execute("SELECT state FROM associations").fetchall()
    assert [r[0] for r in rows] == ["aborted"]
