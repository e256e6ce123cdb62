"""A deterministic PDU fuzzer against a real running node (issue 14): malformed bytes must never kill or hang it.

Cases are mutations (fixed seed) of valid PDUs a storage SCU sends: an
A-ASSOCIATE-RQ, then on an accepted association a P-DATA-TF carrying a C-ECHO-RQ
and an A-RELEASE-RQ. Mutations: bit flips, truncations, the PDU length off by
+-1 or huge, item and sub-item lengths set to 0, 2 or past their container,
random PDU types and random bytes. Each case opens its own TCP connection, sends
its bytes, half-closes (so a PDU that claims more bytes than it has ends at EOF
instead of waiting for the ACSE timeout), and waits for the node to answer with a
PDU or close; no answer within ``--timeout`` seconds is a hang.

``python bench/fuzz.py`` starts ``dicom-node serve`` on a free port with its
stderr in a file, runs 10,000 cases, then prints a Markdown table: cases tried,
answered with a PDU, closed without one, hangs, crashes (node no longer
accepting) and tracebacks on the node's stderr. ``tests/reliability/test_rel_pdu_fuzz.py``
uses the same cases against the same kind of node.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import free_port  # noqa: E402
from dicom_node.scp import pdu as P  # noqa: E402

VERIFICATION = "1.2.840.10008.1.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
APP_CONTEXT = "1.2.840.10008.3.1.1.1"
DEFAULT_SEED = 14

# Answers to a case (what the node did).
PDU, CLOSED, HANG, DEAD = "pdu", "closed", "hang", "dead"


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(value)) + value


def associate_rq(
    called: bytes = b"DICOM_NODE",
    calling: bytes = b"FUZZ_SCU",
    contexts: tuple[tuple[int, str, tuple[str, ...]], ...] = ((1, VERIFICATION, (IMPLICIT_LE,)),
                                                              (3, CT_STORAGE, (EXPLICIT_LE, IMPLICIT_LE))),
    roles: tuple[tuple[str, int, int], ...] = (),
    max_length: bytes = struct.pack(">I", 65536),
) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2), valid unless ``max_length`` (the sub-item's value) is not 4 bytes.

    ``roles`` adds SCP/SCU role selection sub-items (PS3.7 D.3.3.4).
    """
    body = struct.pack(">HH", 1, 0) + called.ljust(16) + calling.ljust(16) + b"\x00" * 32
    body += _item(0x10, APP_CONTEXT.encode())
    for context_id, abstract, syntaxes in contexts:
        sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, ts.encode()) for ts in syntaxes)
        body += _item(0x20, bytes([context_id, 0, 0, 0]) + sub)
    user = _item(0x51, max_length) + _item(0x52, b"1.2.826.0.1.3680043.10.1401.14")
    for uid, scu, scp in roles:
        user += _item(0x54, struct.pack(">H", len(uid)) + uid.encode() + bytes([scu, scp]))
    body += _item(0x50, user + _item(0x55, b"FUZZ_14"))
    return struct.pack(">BxI", P.ASSOCIATE_RQ, len(body)) + body


def echo_pdata(context_id: int = 1, message_id: int = 1) -> bytes:
    """A P-DATA-TF PDU with one C-ECHO-RQ command set (PS3.7 9.3.5)."""
    elements = {
        0x0002: struct.pack("<HHI", 0, 0x0002, 18) + VERIFICATION.encode() + b"\x00",
        0x0100: struct.pack("<HHIH", 0, 0x0100, 2, P.C_ECHO_RQ),
        0x0110: struct.pack("<HHIH", 0, 0x0110, 2, message_id),
        0x0800: struct.pack("<HHIH", 0, 0x0800, 2, P.NO_DATASET),
    }
    body = b"".join(elements[tag] for tag in sorted(elements))
    command = struct.pack("<HHII", 0, 0, 4, len(body)) + body
    return P.p_data_pdu(context_id, 0x03, command)


def _item_offsets(rq: bytes) -> list[int]:
    """Offsets of every item and sub-item header of an A-ASSOCIATE-RQ (where length mutations hit)."""
    out = []

    def walk(start: int, end: int, nested: bool) -> None:
        pos = start
        while pos + 4 <= end:
            kind = rq[pos]
            (length,) = struct.unpack_from(">H", rq, pos + 2)
            out.append(pos)
            if nested and kind == 0x20:
                walk(pos + 8, min(pos + 4 + length, end), False)
            elif nested and kind == 0x50:
                walk(pos + 4, min(pos + 4 + length, end), False)
            pos += 4 + length

    walk(74, len(rq), True)
    return out


def _mutate(rng: random.Random, base: bytes, offsets: list[int]) -> tuple[str, bytes]:
    data = bytearray(base)
    kind = rng.choice(("bitflip", "truncate", "pdu_length", "item_length", "pdu_type", "random_bytes", "append"))
    if kind == "bitflip":
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(data))
            data[pos] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        data = data[: rng.randrange(1, len(data))]
    elif kind == "pdu_length":
        (length,) = struct.unpack_from(">I", data, 2)
        new = rng.choice((length + 1, length - 1, 0, 0xFFFFFFFF, 0x7FFFFFFF, length * 2, rng.randrange(1 << 32)))
        struct.pack_into(">I", data, 2, max(0, min(new, 0xFFFFFFFF)))
    elif kind == "item_length" and offsets:
        pos = rng.choice(offsets)
        (length,) = struct.unpack_from(">H", data, pos + 2)
        new = rng.choice((0, 2, 1, length + 1, length - 1 if length else 0, 0xFFFF, length + rng.randint(2, 64)))
        struct.pack_into(">H", data, pos + 2, min(new, 0xFFFF))
    elif kind == "pdu_type":
        data[0] = rng.randrange(256)
    elif kind == "random_bytes":
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    else:
        data += rng.randbytes(rng.randint(1, 32))
    return kind, bytes(data)


@dataclass(frozen=True)
class Case:
    """One fuzz case: ``prefix`` (a valid A-ASSOCIATE-RQ, or empty) then the mutated ``payload``."""

    number: int
    target: str
    mutation: str
    payload: bytes
    after_association: bool


def cases(count: int, seed: int = DEFAULT_SEED) -> Iterator[Case]:
    """``count`` deterministic cases: half against the A-ASSOCIATE-RQ, the rest P-DATA and A-RELEASE-RQ."""
    rng = random.Random(seed)
    rq = associate_rq()
    offsets = _item_offsets(rq)
    pdata, release = echo_pdata(), struct.pack(">BxI", P.RELEASE_RQ, 4) + b"\x00" * 4
    pdv_offsets = [6]  # the PDV item's 4-byte length sits right after the PDU header
    for number in range(count):
        roll = rng.random()
        if roll < 0.5:
            mutation, payload = _mutate(rng, rq, offsets)
            yield Case(number, "associate-rq", mutation, payload, False)
        elif roll < 0.85:
            mutation, payload = _mutate(rng, pdata, [])
            if mutation == "item_length":
                edited = bytearray(pdata)
                struct.pack_into(">I", edited, pdv_offsets[0], rng.choice((0, 1, 2, 3, 0xFFFFFFFF, 96, 200)))
                payload = bytes(edited)
            yield Case(number, "p-data", mutation, payload, True)
        else:
            mutation, payload = _mutate(rng, release, [])
            yield Case(number, "release-rq", mutation, payload, True)


def read_pdu(sock: socket.socket) -> tuple[int, bytes] | None:
    """Read one whole PDU, or None at EOF."""
    header = _read_exactly(sock, 6)
    if header is None:
        return None
    pdu_type, length = struct.unpack(">BxI", header)
    body = _read_exactly(sock, length)
    return (pdu_type, body) if body is not None else None


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(min(n - len(data), 1 << 20))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def run_case(port: int, case: Case, timeout: float = 10.0, host: str = "127.0.0.1") -> str:
    """Send one case on a fresh connection; return PDU, CLOSED, HANG or DEAD (connection refused)."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return DEAD
    with sock:
        try:
            if case.after_association:
                sock.sendall(associate_rq())
                answer = read_pdu(sock)
                if answer is None or answer[0] != P.ASSOCIATE_AC:
                    return CLOSED if answer is None else PDU
            sock.sendall(case.payload)
            sock.shutdown(socket.SHUT_WR)
            got = sock.recv(1)
            # After the half-close the node must end the connection too: drain to EOF (or the timeout).
            while got and sock.recv(65536):
                pass
            return PDU if got else CLOSED
        except TimeoutError:
            return HANG
        except OSError:  # reset, broken pipe, or not connected any more: the node closed first
            return CLOSED


def start_node(root: Path, port: int, stderr_path: Path) -> subprocess.Popen[bytes]:
    """``dicom-node serve`` on ``port`` (loopback) with stderr into ``stderr_path``; waits until it accepts."""
    env = dict(
        os.environ,
        DICOM_NODE__STORAGE__ROOT=str(root),
        DICOM_NODE__SCP__PORT=str(port),
        DICOM_NODE__API__PORT="0",
        DICOM_NODE__STORAGE__MIN_FREE_BYTES="0",
        DICOM_NODE__SCP__ACSE_TIMEOUT="5",
    )
    exe = str(Path(sys.executable).with_name("dicom-node"))
    root.mkdir(parents=True, exist_ok=True)
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen([exe, "serve"], env=env, cwd=root.parent, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        if proc.poll() is not None:
            raise RuntimeError(f"dicom-node serve exited with {proc.returncode}: {stderr_path.read_text()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError("dicom-node serve did not listen within 30 s")


def tracebacks(stderr_text: str) -> int:
    """Lines on the node's stderr that show an exception escaped the log or was logged with a traceback."""
    return sum(1 for line in stderr_text.splitlines() if "Traceback" in line or "Exception in thread" in line)


def main() -> int:
    """Run the fuzzer against a fresh node and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds without an answer that count as a hang")
    parser.add_argument("--work", type=Path, default=None, help="folder for the node's storage root and stderr")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="fuzz-"))
    port = free_port()
    stderr_path = work / "node-stderr.log"
    proc = start_node(work / "node", port, stderr_path)
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    try:
        for case in cases(args.cases, args.seed):
            outcomes[run_case(port, case, args.timeout)] += 1
            if outcomes[DEAD]:
                break
    finally:
        alive = proc.poll() is None
        proc.terminate()
        proc.wait(timeout=30)
    seconds = time.monotonic() - started
    text = stderr_path.read_text(errors="replace")
    tried = sum(outcomes.values())
    print(f"PDU fuzzer: seed {args.seed}, {tried} cases in {seconds:.1f} s, node stderr in {stderr_path}\n")
    print("| cases tried | answered with a PDU | closed | hangs | crashes (node dead) | tracebacks on stderr |")
    print("|---:|---:|---:|---:|---:|---:|")
    crashes = outcomes[DEAD] + (0 if alive else 1)
    print(f"| {tried} | {outcomes[PDU]} | {outcomes[CLOSED]} | {outcomes[HANG]} | {crashes} | {tracebacks(text)} |")
    return 0 if not (outcomes[HANG] or crashes or tracebacks(text)) else 1


if __name__ == "__main__":
    sys.exit(main())
