"""Checks before an instance is acknowledged: element framing, declared geometry, hostile UIDs, a 1 GB instance.

Every case goes through the path a modality takes: a real pynetdicom SCU sends the
file's bytes as they are (``STORE_SEND_CHUNKED_DATASET``: pynetdicom reads only the
file meta and streams the rest, so broken datasets reach the node unchanged) to a
running node, and the answer must be 0xC000 with an Error Comment naming what is
wrong, nothing indexed and nothing left in the spool. Where DCMTK ``storescu`` can
parse the file (the geometry and UID cases) it sends it too; STOW-RS gets one case
to show the refusal reaches its FailureReason.
"""

from __future__ import annotations

import io
import logging
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom import AE, _config

from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import ServeProcess, free_port, require_tool, wait_for
from tests.receiver import multipart_related

SUCCESS = 0x0000
UNABLE = 0xC000
UNDEFINED = 0xFFFFFFFF
SEQ_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


@pytest.fixture(autouse=True)
def _send_bytes_as_they_are(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # pynetdicom otherwise decodes the file with pydicom and re-encodes it, repairing nothing
    # but refusing to send what pydicom cannot parse; the node must see the bytes a peer sends.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    yield


def ct(seed: str, size: int = 64) -> Dataset:
    ds = next(iter(ct_datasets(SeriesSpec(slices=1, rows=size, columns=size, seed=seed))))
    ds.SOPClassUID = CTImageStorage
    return ds


def encode(ds: Dataset, implicit: bool = False) -> bytes:
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, implicit
    write_dataset(body, ds)
    return body.getvalue()


def part10(path: Path, body: bytes, syntax: str, sop_instance: str, sop_class: str = CTImageStorage) -> Path:
    """A Part 10 file whose dataset is ``body`` exactly as given (however broken)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.9.7433.1.1"
    out = io.BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)  # type: ignore[arg-type]
    path.write_bytes(out.getvalue() + body)
    return path


def store(port: int, path: Path, syntax: str) -> tuple[int, str]:
    """C-STORE ``path`` with pynetdicom; returns (status, Error Comment)."""
    ae = AE(ae_title="TEST_SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(CTImageStorage, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(path)
    finally:
        assoc.release()
    return int(rsp.Status), str(rsp.get("ErrorComment", ""))


def storescu(port: int, path: Path) -> str:
    """Send ``path`` with DCMTK storescu; returns its verbose log (which carries the response status)."""
    exe = require_tool("storescu", "apt-get install dcmtk")
    out = subprocess.run([exe, "-v", "-aec", "DICOM_NODE", "127.0.0.1", str(port), str(path)],
                         capture_output=True, text=True, timeout=120)
    return out.stdout + out.stderr


def assert_refused(node: Node, status: int, comment: str, *reason: str) -> None:
    assert status == UNABLE, comment
    for words in reason:
        assert words in comment
    assert node.index.counts()["instances"] == 0
    assert wait_for(lambda: not list(node.spool.tmp.iterdir()))


# -- element framing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_truncated_dataset_with_garbage_is_refused(start_node, tmp_path: Path, syntax: str) -> None:
    """The issue's case: a dataset cut to a third, 0xFF garbage appended, used to be acknowledged."""
    node: Node = start_node()
    ds = ct("cut")
    body = encode(ds, implicit=syntax == ImplicitVRLittleEndian)
    path = part10(tmp_path / "cut.dcm", body[:len(body) // 3] + b"\xff" * 4096, syntax, ds.SOPInstanceUID)
    status, comment = store(node.scp.port, path, syntax)
    assert_refused(node, status, comment, "framing: ", " at byte ")
    # The intact dataset on the same node is stored: the refusal is about the bytes, not the instance.
    assert store(node.scp.port, part10(tmp_path / "ok.dcm", body, syntax, ds.SOPInstanceUID), syntax)[0] == SUCCESS


def _tail(group: int, elem: int, vr: bytes, length: int) -> bytes:
    return struct.pack("<HH2sHI", group, elem, vr, 0, length)


#: Broken framing after a valid image (tags after Pixel Data keep the order valid unless the case breaks it).
FRAMING = {
    "unknown VR": (struct.pack("<HH2sH", 0x7FE1, 0x0010, b"ZZ", 2) + b"AB", "unknown VR b'ZZ'"),
    "tags out of order": (struct.pack("<HH2sH", 0x0010, 0x0010, b"PN", 2) + b"AB", "tag out of order"),
    "length past the end": (_tail(0xFFFC, 0xFFFC, b"OB", 1000) + bytes(10), "length 1000 > 10 bytes left"),
    "sequence without delimiter": (_tail(0xFFFA, 0xFFFA, b"SQ", UNDEFINED) + struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED),
                                   "truncated"),
    "stray delimiter": (SEQ_END, "item or delimiter tag in a dataset"),
}


@pytest.mark.parametrize("case", sorted(FRAMING))
def test_each_kind_of_framing_error_is_refused(start_node, tmp_path: Path, case: str) -> None:
    node: Node = start_node()
    ds = ct("framing")
    tail, reason = FRAMING[case]
    path = part10(tmp_path / "f.dcm", encode(ds) + tail, ExplicitVRLittleEndian, ds.SOPInstanceUID)
    status, comment = store(node.scp.port, path, ExplicitVRLittleEndian)
    assert_refused(node, status, comment, "framing: ", reason)


def rle(frames: int, fragments: list[bytes], bot: bytes | None = None) -> Dataset:
    ds = ct("rle", size=8)
    ds.NumberOfFrames = frames
    value = encapsulate(fragments, has_bot=False)
    if bot is not None:  # replace the empty Basic Offset Table item by this one
        value = struct.pack("<HHI", 0xFFFE, 0xE000, len(bot)) + bot + value[8:]
    ds.PixelData = value
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def test_broken_encapsulated_pixel_data_is_refused(start_node, tmp_path: Path) -> None:
    node: Node = start_node()
    ds = rle(1, [b"\x00" * 16])
    body = encode(ds)
    path = part10(tmp_path / "e.dcm", body[:-8], RLELossless, ds.SOPInstanceUID)  # no Sequence Delimitation Item
    status, comment = store(node.scp.port, path, RLELossless)
    assert_refused(node, status, comment, "framing: truncated fragment item header")


# -- declared geometry -----------------------------------------------------------------------------------


def test_16_bit_data_labelled_8_bit_is_refused(start_node, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dicom_node")
    node: Node = start_node()
    ds = ct("bits")  # 64x64x16-bit: 8192 bytes
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    path = part10(tmp_path / "b.dcm", encode(ds), ExplicitVRLittleEndian, ds.SOPInstanceUID)
    status, comment = store(node.scp.port, path, ExplicitVRLittleEndian)
    assert_refused(node, status, comment, "PixelData is 8192 bytes; Rows 64 x Columns 64")
    assert "x 1 byte needs 4096" in caplog.text  # the Error Comment keeps 64 characters; the log has all of it


def test_65535_square_with_8_kib_is_refused(start_node, tmp_path: Path) -> None:
    node: Node = start_node()
    ds = ct("huge")
    ds.Rows = ds.Columns = 65535
    path = part10(tmp_path / "h.dcm", encode(ds), ExplicitVRLittleEndian, ds.SOPInstanceUID)
    status, comment = store(node.scp.port, path, ExplicitVRLittleEndian)
    assert_refused(node, status, comment, "PixelData is 8192 bytes; Rows 65535 x Columns 65535")
    log = storescu(node.scp.port, path)
    assert "Received Store Response (Error: CannotUnderstand)" in log, log[-2000:]
    assert node.index.counts()["instances"] == 0


def _deflated_zeros(head: bytes, zeros: int) -> bytes:
    """A raw DEFLATE stream of ``head`` then ``zeros`` zero bytes, built from one repeated 16 MiB segment.

    After a full flush the compressor keeps no history, so the compressed form of "16 MiB of zeros,
    full flush" is the same each time: the 1.5 GiB stream costs one 16 MiB compression to build.
    """
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    prefix = packer.compress(head) + packer.flush(zlib.Z_FULL_FLUSH)
    step = 16 * 1024 * 1024
    segment = packer.compress(bytes(step)) + packer.flush(zlib.Z_FULL_FLUSH)
    assert zeros % step == 0
    return prefix + segment * (zeros // step) + packer.flush()


def test_deflated_gigabytes_of_zeros_on_64x64_is_refused_before_inflating(start_node, tmp_path: Path) -> None:
    """The issue's memory blow-up: 1.5 GiB of OW zeros behind Rows = Columns = 64, deflated to about 1.6 MB.

    The node's inflate bound (2 GiB by default) lets it through; the Pixel Data header contradicts
    the geometry, and the walk refuses it there, before inflating the value.
    """
    node: Node = start_node()
    ds = ct("bomb")
    del ds.PixelData
    zeros = 1536 * 1024 * 1024
    head = encode(ds) + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, zeros)
    stream = _deflated_zeros(head, zeros)
    assert len(stream) < 4 * 1024 * 1024
    path = part10(tmp_path / "z.dcm", stream, DeflatedExplicitVRLittleEndian, ds.SOPInstanceUID)
    status, comment = store(node.scp.port, path, DeflatedExplicitVRLittleEndian)
    assert_refused(node, status, comment, f"PixelData is {zeros} bytes; Rows 64 x Columns 64")


def test_fewer_fragments_than_frames_is_refused_and_a_good_one_stored(start_node, tmp_path: Path) -> None:
    node: Node = start_node()
    few = rle(3, [b"\x00" * 16, b"\x00" * 16])
    path = part10(tmp_path / "few.dcm", encode(few), RLELossless, few.SOPInstanceUID)
    status, comment = store(node.scp.port, path, RLELossless)
    assert_refused(node, status, comment, "2 fragments for 3 frames")
    stray = rle(2, [b"\x00" * 16, b"\x00" * 16], bot=struct.pack("<2I", 0, 20))  # 2nd item starts at 24
    path = part10(tmp_path / "bot.dcm", encode(stray), RLELossless, stray.SOPInstanceUID)
    status, comment = store(node.scp.port, path, RLELossless)
    assert_refused(node, status, comment, "Basic Offset Table entry 20 is not at a fragment")
    good = rle(2, [b"\x00" * 16, b"\x00" * 16], bot=struct.pack("<2I", 0, 24))
    path = part10(tmp_path / "good.dcm", encode(good), RLELossless, good.SOPInstanceUID)
    assert store(node.scp.port, path, RLELossless)[0] == SUCCESS


def test_stow_rs_refusal_carries_the_failure_reason(start_node) -> None:
    node: Node = start_node()
    ds = ct("stow")
    ds.Rows = ds.Columns = 65535
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    body, ctype = multipart_related([buf.getvalue()], "b0undary")
    r = httpx.post(f"http://127.0.0.1:{node.api.port}/dicomweb/studies", content=body,
                   headers={"content-type": ctype}, timeout=60)
    assert r.status_code == 409, r.text
    failed = r.json()["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"] == [UNABLE]
    assert node.index.counts()["instances"] == 0


# -- hostile UIDs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_uid_component_with_a_leading_zero_is_refused(start_node, tmp_path: Path, keyword: str) -> None:
    node: Node = start_node()
    ds = ct(f"uid-{keyword}")
    setattr(ds, keyword, "1.2.826.0.1.02.3")
    path = part10(tmp_path / "u.dcm", encode(ds), ExplicitVRLittleEndian, ds.SOPInstanceUID)
    status, comment = store(node.scp.port, path, ExplicitVRLittleEndian)
    assert_refused(node, status, comment, "leading zero in a component")
    if keyword == "StudyInstanceUID":
        log = storescu(node.scp.port, path)
        assert "Received Store Response (Error: CannotUnderstand)" in log, log[-2000:]
        assert node.index.counts()["instances"] == 0


# -- a 1 GB instance -------------------------------------------------------------------------------------


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


@pytest.mark.slow
def test_one_gigabyte_instance_is_streamed_with_bounded_memory(tmp_path: Path) -> None:
    """A 1 GiB native instance into a ``dicom-node serve`` subprocess: stored, and its peak RSS stays bounded.

    The sender's file is sparse (its Pixel Data is a hole), so the test spends no disk on it;
    pynetdicom streams it from the file. The node writes each P-DATA fragment to its spool
    file as it arrives and walks the framing over a memory map without touching Pixel Data.
    """
    ds = ct("gigabyte", size=1024)
    ds.NumberOfFrames = 512
    del ds.PixelData
    length = 1024 * 1024 * 512 * 2
    head = encode(ds) + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length)
    path = part10(tmp_path / "big.dcm", head, ExplicitVRLittleEndian, ds.SOPInstanceUID)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size + length)
    port = free_port()
    node = ServeProcess(tmp_path / "node", port).start()
    try:
        assert node.proc is not None
        before = _vm_hwm_kib(node.proc.pid)
        status, comment = store(port, path, ExplicitVRLittleEndian)
        assert status == SUCCESS, comment
        peak_mib = _vm_hwm_kib(node.proc.pid) / 1024
        assert wait_for(lambda: node.status().get("instances") == 1, timeout=30), node.status()
    finally:
        node.stop()
    stored = list((tmp_path / "node" / "spool").rglob("*.dcm"))
    assert len(stored) == 1 and stored[0].stat().st_size > length
    print(f"node VmHWM before {before / 1024:.0f} MiB, after a 1 GiB instance {peak_mib:.0f} MiB")
    assert peak_mib < 600, f"peak RSS {peak_mib:.0f} MiB while ingesting a 1 GiB instance"
