"""Malformed PDUs against a real ``dicom-node serve``: always a PDU or a close, never a hang or a raw traceback.

The node runs as a subprocess with its stderr in a file, so a thread that dies
with ``Exception in thread ...`` (printed by Python, outside the structured log
and its PHI filter) is seen exactly as an operator would see it. The fuzzer is
``bench/fuzz.py``'s, with its fixed seed; each explicit case below is one the
issue 14 adversarial run found, or a class it came from.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench import fuzz
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import free_port, wait_for
from tests.scu import make_ae, send_all

CI_CASES = 2500


@dataclass
class FuzzNode:
    """A ``dicom-node serve`` subprocess and where its stderr goes."""

    proc: subprocess.Popen[bytes]
    port: int
    root: Path
    stderr_path: Path
    mark: int = 0

    def new_stderr(self) -> str:
        """The node's stderr written since the last call."""
        data = self.stderr_path.read_bytes()
        text, self.mark = data[self.mark :].decode(errors="replace"), len(data)
        return text

    def instances(self) -> int:
        """Indexed instances, through ``dicom-node status --json`` on the same root."""
        env = dict(os.environ, DICOM_NODE__STORAGE__ROOT=str(self.root))
        out = subprocess.run([str(Path(sys.executable).with_name("dicom-node")), "status", "--json"], env=env,
                             cwd=self.root.parent, capture_output=True, text=True, check=True)
        import json

        return int(json.loads(out.stdout)["instances"])


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzNode]:
    work = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    stderr_path = work / "node-stderr.log"
    proc = fuzz.start_node(work / "node", port, stderr_path)
    running = FuzzNode(proc, port, work / "node", stderr_path)
    running.new_stderr()  # start-up lines are not any case's
    yield running
    proc.terminate()
    proc.wait(timeout=30)


def exchange(port: int, *pdus: bytes, associate: bool = False) -> tuple[int, bytes] | None:
    """Send ``pdus`` on a new connection (after an accepted association when asked); return the answer PDU."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if associate:
            sock.sendall(fuzz.associate_rq())
            answer = fuzz.read_pdu(sock)
            assert answer is not None and answer[0] == 0x02, answer
        for pdu in pdus:
            sock.sendall(pdu)
        return fuzz.read_pdu(sock)


def assert_one_warning(node: FuzzNode, needle: str) -> None:
    """The case left exactly one WARNING line naming it, nothing at ERROR, and no traceback."""
    assert wait_for(lambda: needle in node.stderr_path.read_text(errors="replace")[node.mark :], 5)
    text = node.new_stderr()
    assert "Traceback" not in text and "Exception in thread" not in text, text
    assert "level=ERROR" not in text and "level=CRITICAL" not in text, text
    warnings = [line for line in text.splitlines() if "level=WARNING" in line]
    assert len(warnings) == 1 and needle in warnings[0], text


def _rj(answer: tuple[int, bytes] | None) -> tuple[int, int, int]:
    assert answer is not None and answer[0] == 0x03, f"expected A-ASSOCIATE-RJ, got {answer!r}"
    return answer[1][1], answer[1][2], answer[1][3]  # result, source, reason (PS3.8 Table 9-21)


def _abort(answer: tuple[int, bytes] | None) -> tuple[int, int]:
    assert answer is not None and answer[0] == 0x07, f"expected A-ABORT, got {answer!r}"
    return answer[1][2], answer[1][3]  # source, reason (PS3.8 Table 9-26)


def _set_item_length(pdu: bytes, kind: int, length: int) -> bytes:
    """Rewrite the 2-byte length of the first item or sub-item of type ``kind`` after the fixed header."""
    data = bytearray(pdu)
    for pos in fuzz._item_offsets(pdu):
        if data[pos] == kind:
            struct.pack_into(">H", data, pos + 2, length)
            return bytes(data)
    raise AssertionError(f"no item 0x{kind:02X}")


def test_maximum_length_subitem_of_length_2_is_rejected(node: FuzzNode) -> None:
    """Issue 14: pynetdicom raised struct.error in decode_request and the thread died without a PDU."""
    bad = fuzz.associate_rq(max_length=b"\x40\x00")
    assert _rj(exchange(node.port, bad)) == (1, 1, 1)  # permanent, service user, no-reason-given
    assert_one_warning(node, "sub-item 0x51 has length 2")


def test_presentation_context_longer_than_the_pdu_is_rejected(node: FuzzNode) -> None:
    """Issue 14: a context item whose length exceeds the bytes present failed an assert inside pynetdicom."""
    bad = _set_item_length(fuzz.associate_rq(), 0x20, 0x0400)
    assert _rj(exchange(node.port, bad)) == (1, 1, 1)
    assert_one_warning(node, "runs past its container")


@pytest.mark.parametrize(("field", "reason"), [("calling", 3), ("called", 7)])
def test_non_ascii_ae_title_is_one_warning_and_a_rejection(node: FuzzNode, field: str, reason: int) -> None:
    """Issue 14: pynetdicom logged the decode failure at ERROR with a traceback."""
    title = "TÉST_SCU".encode("latin-1")
    rq = fuzz.associate_rq(calling=title) if field == "calling" else fuzz.associate_rq(called=title)
    assert _rj(exchange(node.port, rq)) == (1, 1, reason)  # calling/called AE title not recognized
    assert_one_warning(node, f"{field} AE title is not a valid AE title")


def test_protocol_version_without_bit_0_is_rejected_by_acse(node: FuzzNode) -> None:
    rq = bytearray(fuzz.associate_rq())
    rq[6:8] = b"\x00\x02"
    assert _rj(exchange(node.port, bytes(rq))) == (1, 2, 2)  # ACSE, protocol-version-not-supported
    assert_one_warning(node, "protocol version")


def test_truncated_associate_rq_header_is_aborted(node: FuzzNode) -> None:
    rq = fuzz.associate_rq()[:40]
    rq = rq[:2] + struct.pack(">I", len(rq) - 6) + rq[6:]
    assert _abort(exchange(node.port, rq)) == (2, 6)  # service provider, invalid-PDU-parameter value
    assert_one_warning(node, "shorter than its header")


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set of ``pid`` (VmHWM, KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("claimed", [131072 + 1, 0x7FFFFFFF, 0xFFFFFFFF])
def test_oversized_p_data_is_aborted_without_allocating_it(node: FuzzNode, claimed: int) -> None:
    """A P-DATA-TF over our Maximum Length (131072 by default) is aborted from its header alone."""
    before = vm_hwm_kib(node.proc.pid)
    header = struct.pack(">BxI", 0x04, claimed) + b"\x00" * 64
    assert _abort(exchange(node.port, header, associate=True)) == (2, 6)
    assert_one_warning(node, "exceeds the limit")
    assert vm_hwm_kib(node.proc.pid) - before < 64 * 1024, "the claimed length was allocated"


def test_oversized_associate_rq_is_aborted(node: FuzzNode) -> None:
    assert _abort(exchange(node.port, struct.pack(">BxI", 0x01, 0xFFFFFFFF) + b"\x00" * 74)) == (2, 6)
    assert_one_warning(node, "exceeds the limit")


@pytest.mark.parametrize(
    ("pdu", "reason", "needle", "associate"),
    [
        (struct.pack(">BxI", 0x42, 4) + b"\x00" * 4, 1, "unrecognised PDU type 0x42", False),
        (struct.pack(">BxI", 0x42, 4) + b"\x00" * 4, 1, "unrecognised PDU type 0x42", True),
        (struct.pack(">BxI", 0x06, 4) + b"\x00" * 4, 2, "unexpected PDU type 0x06", True),
        (struct.pack(">BxI", 0x05, 4) + b"\x00" * 4, 2, "expected A-ASSOCIATE-RQ", False),
        (struct.pack(">BxI", 0x01, len(fuzz.associate_rq()) - 6) + fuzz.associate_rq()[6:], 2, "unexpected PDU", True),
        (struct.pack(">BxIIBB", 0x04, 8, 0xFFFF, 1, 3) + b"\x00\x00", 6, "value item length is invalid", True),
        (struct.pack(">BxIIBB", 0x04, 6, 1, 1, 3), 6, "value item length is invalid", True),
        (fuzz.echo_pdata(context_id=9), 6, "context 9 was not accepted", True),
    ],
    ids=["unknown-type", "unknown-type-established", "release-rp-unasked", "release-rq-first",
         "second-associate-rq", "pdv-over", "pdv-under", "pdv-unknown-context"],
)
def test_bad_pdu_is_one_abort_with_its_reason(node: FuzzNode, pdu: bytes, reason: int, needle: str,
                                              associate: bool) -> None:
    """PS3.8 Table 9-26: service-provider source, the reason that names what was wrong."""
    assert _abort(exchange(node.port, pdu, associate=associate)) == (2, reason)
    assert_one_warning(node, needle)


def test_release_in_the_middle_of_a_message_is_aborted(node: FuzzNode) -> None:
    """A-RELEASE-RQ while a command set is half received: unexpected PDU (PS3.8 Table 9-26, reason 2)."""
    half_command = fuzz.echo_pdata()
    half_command = half_command[:11] + b"\x01" + half_command[12:]  # control header: command, not last
    release = struct.pack(">BxI", 0x05, 4) + b"\x00" * 4
    assert _abort(exchange(node.port, half_command, release, associate=True)) == (2, 2)
    assert_one_warning(node, "A-RELEASE-RQ in the middle of a message")


def test_fuzz_ci_run_never_hangs_crashes_or_prints_a_traceback(node: FuzzNode, tmp_path: Path) -> None:
    outcomes: Counter[str] = Counter(fuzz.run_case(node.port, case, timeout=10) for case in fuzz.cases(CI_CASES))
    assert outcomes[fuzz.HANG] == 0 and outcomes[fuzz.DEAD] == 0, outcomes
    assert outcomes[fuzz.PDU] + outcomes[fuzz.CLOSED] == CI_CASES
    assert node.proc.poll() is None, "the node died"
    text = node.new_stderr()
    assert fuzz.tracebacks(text) == 0, [line for line in text.splitlines() if "Traceback" in line][:5]
    assert "level=ERROR" not in text, [line for line in text.splitlines() if "level=ERROR" in line][:5]

    # Afterwards the node still serves: C-ECHO from pynetdicom (and DCMTK when installed), then a C-STORE.
    assoc = make_ae().associate("127.0.0.1", node.port, ae_title="DICOM_NODE")
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0
    assoc.release()
    echoscu = shutil.which("echoscu")
    if echoscu:
        subprocess.run([echoscu, "-aec", "DICOM_NODE", "127.0.0.1", str(node.port)], check=True, timeout=30)
    before = node.instances()
    dataset = next(iter(ct_datasets(SeriesSpec(slices=1, rows=16, columns=16, seed="after-fuzz"))))
    assert send_all(node.port, [dataset]) == [0]
    assert node.instances() == before + 1
