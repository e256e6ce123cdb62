"""Corrupt pixel data reaching a job fails it with the instance and what is wrong, never ``internal error``.

Ingest now refuses most of these files, so each test puts them where an older
release would have left them: the file in the spool at its SOP Instance UID's
path and the row in the index through the index's own write operations
(``ops.store_instance`` inside a released association), as a node restarted
after the upgrade finds them. The job then runs through the real path: the
assembler completes the series, the router queues the job, the pipeline
validates and decodes.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEGBaseline8Bit

from dicom_node.index import ops
from dicom_node.index.store import InstanceRecord
from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import wait_for

ENGINES = str(Path(__file__).resolve().parents[2] / "engines")
RULE = {"name": "ct", "models": ["ct-body"], "match": {"modality": "CT"}}
SECTIONS: dict[str, dict[str, Any]] = {
    "routing": {"rules": [RULE]}, "inference": {"models_dir": ENGINES}, "assembly": {"quiet_period": 0.0},
}


def part10(ds: Dataset, syntax: str) -> bytes:
    """``ds`` as a Part 10 file in ``syntax`` without pydicom re-encoding the pixel data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.9.7433.1.1")
    out = io.BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)  # type: ignore[arg-type]
    body = _body()
    write_dataset(body, ds)
    out.write(body.getvalue() if syntax != DeflatedExplicitVRLittleEndian else _deflate(body.getvalue()))
    return out.getvalue()


def _body() -> DicomBytesIO:
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    return body


def _deflate(data: bytes, zeros_after: int = 0) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [packer.compress(data)]
    chunk = bytes(1 << 24)
    left = zeros_after
    while left:
        n = min(left, len(chunk))
        parts.append(packer.compress(chunk[:n]))
        left -= n
    parts.append(packer.flush())
    out = b"".join(parts)
    return out + b"\x00" * (len(out) % 2)


def deflate_bomb(ds: Dataset, zeros: int) -> bytes:
    """A Deflated file whose Pixel Data (OW, explicit length) is ``zeros`` zero bytes: the issue's upload."""
    del ds.PixelData
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.9.7433.1.1")
    out = io.BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)  # type: ignore[arg-type]
    body = _body()
    write_dataset(body, ds)
    header = body.getvalue() + b"\xe0\x7f\x10\x00OW\x00\x00" + zeros.to_bytes(4, "little")
    out.write(_deflate(header, zeros))
    return out.getvalue()


def inject(node: Node, files: list[tuple[Dataset, bytes, str]]) -> str:
    """Put ``(header, file bytes, transfer syntax)`` in the spool and index as a released association left them."""
    assoc, now = f"legacy-{uuid.uuid4().hex}", time.time()
    node.writer.run(lambda c: ops.begin_association(c, assoc, "LEGACY", "DICOM_NODE", "127.0.0.1", now))
    for ds, data, syntax in files:
        relpath = node.spool.relpath_for(str(ds.SOPInstanceUID))
        path = node.spool.path_for(relpath)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        rec = InstanceRecord(
            sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
            series_instance_uid=str(ds.SeriesInstanceUID), study_instance_uid=str(ds.StudyInstanceUID),
            transfer_syntax_uid=syntax, modality="CT", instance_number=int(ds.InstanceNumber), calling_ae="LEGACY",
            called_ae="DICOM_NODE", association_id=assoc, path=relpath, size=len(data), received_at=now,
        )
        node.writer.run(lambda c, rec=rec: ops.store_instance(c, rec, False))  # type: ignore[misc]
    node.writer.run(lambda c: ops.end_association(c, assoc, "released", time.time(), len(files)))
    return str(files[0][0].SeriesInstanceUID)


def job_of(node: Node, series: str) -> dict[str, Any] | None:
    conn = node.index.reader()
    try:
        row = conn.execute("SELECT state, reason FROM jobs WHERE series_instance_uid = ?", (series,)).fetchone()
        return dict(row) if row else None
    finally:
        conn.close()


def failed_reason(node: Node, series: str) -> str:
    assert wait_for(lambda: (job_of(node, series) or {}).get("state") in ("failed", "delivering", "done"),
                    timeout=120), job_of(node, series)
    job = job_of(node, series)
    assert job is not None and job["state"] == "failed", job
    return str(job["reason"])


def series(seed: str, slices: int = 4) -> list[Dataset]:
    return list(ct_datasets(SeriesSpec(slices=slices, rows=64, columns=64, seed=seed)))


def corrupt(seed: str, damage: Callable[[Dataset], tuple[bytes, str]],
            every: bool) -> tuple[list[tuple[Dataset, bytes, str]], set[str]]:
    """A 4-slice CT series with its second slice (``every``: all slices, so the header contract still holds)
    damaged by ``damage`` (returns the file bytes and syntax); returns the files and the damaged UIDs."""
    datasets = series(seed)
    files = [(ds, part10(ds, ExplicitVRLittleEndian), str(ExplicitVRLittleEndian)) for ds in datasets]
    bad = set()
    for k, ds in enumerate(datasets):
        if every or k == 1:
            data, syntax = damage(ds)
            files[k] = (ds, data, syntax)
            bad.add(str(ds.SOPInstanceUID))
    return files, bad


def _bits8(ds: Dataset) -> tuple[bytes, str]:
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7  # the data stay 64x64x2 bytes
    return part10(ds, ExplicitVRLittleEndian), str(ExplicitVRLittleEndian)


def _huge(ds: Dataset) -> tuple[bytes, str]:
    ds.Rows = ds.Columns = 65535
    ds.PixelData = bytes(8192)
    return part10(ds, ExplicitVRLittleEndian), str(ExplicitVRLittleEndian)


def _truncated(ds: Dataset) -> tuple[bytes, str]:
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    return part10(ds, ExplicitVRLittleEndian), str(ExplicitVRLittleEndian)


def _not_jpeg(ds: Dataset) -> tuple[bytes, str]:
    ds.PixelData = encapsulate([b"\xff\xd8 this is not a JPEG codestream " * 4])
    ds["PixelData"].VR = "OB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    return part10(ds, JPEGBaseline8Bit), str(JPEGBaseline8Bit)


def _few_fragments(ds: Dataset) -> tuple[bytes, str]:
    ds.NumberOfFrames = 3
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    return part10(ds, JPEGBaseline8Bit), str(JPEGBaseline8Bit)


CASES = {
    "16-bit data labelled BitsAllocated 8": (_bits8, False, "PixelData is 8192 bytes; Rows 64 x Columns 64 x 1 frame x 1 sample x 1 byte needs 4096"),
    "65535x65535 over 8 KiB": (_huge, True, "PixelData is 8192 bytes; Rows 65535 x Columns 65535 x 1 frame x 1 sample x 2 bytes needs 8589672450"),
    "truncated native": (_truncated, False, "PixelData is 2730 bytes; Rows 64 x Columns 64 x 1 frame x 1 sample x 2 bytes needs 8192"),
    "fragment that is no JPEG": (_not_jpeg, True, "JPEG Baseline"),
    "fewer fragments than frames": (_few_fragments, True, "has 1 fragment for 3 frames"),
}


@pytest.fixture
def node(start_node: Callable[..., Node]) -> Iterator[Node]:
    yield start_node(**SECTIONS)


@pytest.mark.parametrize("case", list(CASES))
def test_corrupt_pixels_fail_the_job_naming_the_instance(node: Node, case: str) -> None:
    damage, every, what = CASES[case]
    files, bad = corrupt(case, damage, every)
    reason = failed_reason(node, inject(node, files))
    assert any(f"instance {uid}: " in reason for uid in bad), reason
    assert what in reason, reason
    assert "internal error" not in reason


def test_volume_over_the_pixel_budget_fails_with_the_sizes(start_node: Callable[..., Node]) -> None:
    node = start_node(**SECTIONS, pixels={"max_volume_bytes": 1024 * 1024})
    datasets = list(ct_datasets(SeriesSpec(slices=80, rows=64, columns=64, seed="budget")))
    files = [(ds, part10(ds, ExplicitVRLittleEndian), str(ExplicitVRLittleEndian)) for ds in datasets]
    reason = failed_reason(node, inject(node, files))
    assert "volume of 80 slices 64x64 float32 is 1.2 MiB, over pixels.max_volume_bytes 1.0 MiB" in reason, reason


def _deflate_bomb_child(root: str) -> None:
    """Run in a fresh interpreter: a node whose only work is the deflate bomb; prints the outcome and VmHWM."""
    from dicom_node.api.server import ApiFrontend
    from tests.conftest import node_config

    node = Node(node_config(Path(root), **SECTIONS), frontend=ApiFrontend)
    node.start()
    try:
        datasets = series("bomb")
        files = [(ds, part10(ds, ExplicitVRLittleEndian), str(ExplicitVRLittleEndian)) for ds in datasets]
        bad = datasets[1]
        files[1] = (bad, deflate_bomb(bad, 1536 * 1024**2), str(DeflatedExplicitVRLittleEndian))
        sid = inject(node, files)
        assert wait_for(lambda: (job_of(node, sid) or {}).get("state") in ("failed", "delivering", "done"), 300)
        status = Path("/proc/self/status").read_text()
        hwm = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
        print(json.dumps({"job": job_of(node, sid), "vm_hwm": hwm, "bad": str(bad.SOPInstanceUID),
                          "file_bytes": len(files[1][1])}))
    finally:
        node.stop()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc (Linux only)")
def test_deflate_bomb_fails_named_and_peak_rss_stays_under_1_gib(tmp_path: Path) -> None:
    """The issue's upload: 1.5 GiB of zeros as Pixel Data of a 64x64 slice, deflated to about 1.6 MB."""
    repo = Path(__file__).resolve().parents[2]
    code = ("import sys; from tests.reliability.test_rel_corrupt_pixels import _deflate_bomb_child; "
            "_deflate_bomb_child(sys.argv[1])")
    env = {**os.environ, "PYTHONPATH": str(repo)}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "node")], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["file_bytes"] < 4 * 1024**2
    job = result["job"]
    assert job["state"] == "failed", job
    assert f"instance {result['bad']}: PixelData is 1610612736 bytes; Rows 64 x Columns 64" in job["reason"], job
    assert result["vm_hwm"] < 1024**3, f"peak RSS {result['vm_hwm'] / 1024**2:.0f} MiB"


def _decode_peak_child(folder: str) -> None:
    """Run in a fresh interpreter: decode a written series, print the volume size and the peak RSS it added."""
    from dicom_node.pixels.volume import load_series

    def kib(key: str) -> int:
        return next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith(key))

    before = kib("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    volume = load_series(sorted(Path(folder).glob("*.dcm")), workers=0)
    print(json.dumps({"volume": volume.array.nbytes, "added": kib("VmHWM:") - before}))


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS is read from /proc (Linux only)")
def test_decode_peak_memory_stays_near_the_decoded_volume(tmp_path: Path) -> None:
    """The volume is allocated once and filled slice by slice: peak RSS grows by about one volume, not several."""
    for i, ds in enumerate(ct_datasets(SeriesSpec(slices=120, rows=512, columns=512, seed="peak"))):
        ds.save_as(tmp_path / f"{i:04d}.dcm", enforce_file_format=True)
    repo = Path(__file__).resolve().parents[2]
    code = ("import sys; from tests.reliability.test_rel_corrupt_pixels import _decode_peak_child; "
            "_decode_peak_child(sys.argv[1])")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=repo, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(repo)}, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["volume"] == 120 * 512 * 512 * 4
    assert result["added"] < 2 * result["volume"] + 64 * 1024**2, result
