"""C-STORE outcomes through a real pynetdicom SCU: statuses, duplicates, bounds, aborts, disk reserve."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import wait_for
from tests.scu import associate, send_all


def series(n: int = 5, seed: str = "store", size: int = 32) -> list[Dataset]:
    return list(ct_datasets(SeriesSpec(slices=n, rows=size, columns=size, seed=seed)))


def spool_files(node: Node) -> list[Path]:
    return sorted(node.spool.files.rglob("*.dcm"))


def test_abort_mid_series_keeps_acknowledged_and_does_not_complete(start_node) -> None:
    node: Node = start_node()
    datasets = series(6, "abort")
    assoc = associate(node.scp.port)
    acked = []
    for ds in datasets[:4]:
        rsp = assoc.send_c_store(ds)
        if rsp.Status == 0:
            acked.append(ds.SOPInstanceUID)
    assoc.abort()
    assert len(acked) == 4
    assert wait_for(lambda: node.scp.active == 0)
    time.sleep(1.0)  # twice the quiet period of the test config
    assert node.index.instance_uids() == set(acked)
    assert node.index.counts()["complete"] == 0, "an abort must not trigger completion"
    assert not list(node.spool.tmp.iterdir()), "nothing half-written may remain"
    assert len(spool_files(node)) == 4


def test_abort_in_the_middle_of_a_dataset_leaves_nothing(start_node) -> None:
    """Cut the TCP connection while a large dataset is mid-transfer."""
    import socket
    import threading

    node: Node = start_node()
    big = series(1, "cut", size=1024)[0]
    assoc = associate(node.scp.port)
    # Kill the socket from another thread shortly after the transfer starts.
    timer = threading.Timer(0.01, lambda: assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR))
    timer.start()
    try:
        assoc.send_c_store(big)
    except (OSError, RuntimeError, AttributeError):
        pass
    timer.join()
    assoc.abort()
    assert wait_for(lambda: node.scp.active == 0)
    assert wait_for(lambda: not list(node.spool.tmp.iterdir()))
    assert node.index.counts()["instances"] in (0, 1)


def test_duplicates_are_stored_once_keep_first(start_node) -> None:
    node: Node = start_node()
    datasets = series(3, "dup")
    assert send_all(node.scp.port, datasets) == [0, 0, 0]
    first_bytes = node.spool.path_for(node.spool.relpath_for(datasets[0].SOPInstanceUID)).read_bytes()
    changed = series(3, "dup")
    changed[0].SeriesDescription = "changed"
    assert send_all(node.scp.port, changed) == [0, 0, 0]
    assert node.index.counts()["instances"] == 3
    assert node.index.series()[0]["instance_count"] == 3
    assert node.spool.path_for(node.spool.relpath_for(datasets[0].SOPInstanceUID)).read_bytes() == first_bytes
    assert node.scp.ctx.metrics.duplicates == 3


def test_duplicates_replace_policy(start_node) -> None:
    node: Node = start_node(storage={"duplicate_policy": "replace"})
    datasets = series(2, "rep")
    assert send_all(node.scp.port, datasets) == [0, 0]
    changed = series(2, "rep")
    changed[0].SeriesDescription = "changed"
    assert send_all(node.scp.port, changed[:1]) == [0]
    assert node.index.counts()["instances"] == 2
    stored = pydicom.dcmread(node.spool.path_for(node.spool.relpath_for(datasets[0].SOPInstanceUID)))
    assert stored.SeriesDescription == "changed"


def test_path_traversal_uid_is_refused_and_writes_nothing_outside(start_node, tmp_path: Path) -> None:
    node: Node = start_node()
    ds = series(1, "trav")[0]
    ds.SOPInstanceUID = "../../x"
    ds.file_meta.MediaStorageSOPInstanceUID = "../../x"
    assoc = associate(node.scp.port)
    rsp = assoc.send_c_store(ds)
    assoc.release()
    assert rsp.Status == 0xC000
    assert node.index.counts()["instances"] == 0
    assert not (node.spool.root.parent / "x").exists() and not (node.spool.files.parent / "x").exists()
    assert not list(node.spool.tmp.iterdir()) and not spool_files(node)


def test_sop_instance_mismatch_is_0xA900(start_node) -> None:
    node: Node = start_node()
    ds = series(1, "mismatch")[0]
    assoc = associate(node.scp.port)
    # pynetdicom takes the request's Affected SOP Instance UID from the dataset; change the dataset after.
    from pynetdicom.dimse_primitives import C_STORE

    req = C_STORE()
    req.MessageID = 1
    req.AffectedSOPClassUID = ds.SOPClassUID
    req.AffectedSOPInstanceUID = "1.2.3.4.5"
    req.Priority = 2
    import io

    from pynetdicom.dsutils import encode

    req.DataSet = io.BytesIO(encode(ds, False, True))
    cx = [c for c in assoc.accepted_contexts if c.abstract_syntax == ds.SOPClassUID and c.transfer_syntax[0] == ExplicitVRLittleEndian][0]
    assoc._reactor_checkpoint.clear()
    try:
        assoc.dimse.send_msg(req, cx.context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assoc.release()
    assert rsp.Status == 0xA900
    assert node.index.counts()["instances"] == 0


def test_deflated_dataset_is_stored(start_node) -> None:
    node: Node = start_node()
    ds = series(1, "deflate")[0]
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    assert send_all(node.scp.port, [ds]) == [0]
    row = node.index.reader().execute("SELECT transfer_syntax_uid FROM instances").fetchone()
    assert row[0] == DeflatedExplicitVRLittleEndian
    stored = pydicom.dcmread(node.spool.path_for(node.spool.relpath_for(ds.SOPInstanceUID)))
    assert np.array_equal(stored.pixel_array, ds.pixel_array)


def test_deflate_bomb_is_refused(start_node) -> None:
    """A dataset that inflates past storage bounds is refused with 0xC000, never fully inflated."""
    node: Node = start_node(scp={"max_inflated_bytes": 1024 * 1024})
    ds = series(1, "bomb", size=1024)[0]  # 2 MiB of pixels, compresses to a few KiB
    ds.PixelData = bytes(len(ds.PixelData))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    assert send_all(node.scp.port, [ds]) == [0xC000]
    assert node.index.counts()["instances"] == 0
    assert not list(node.spool.tmp.iterdir())


def test_disk_reserve_refuses_then_resumes(start_node, tmp_path: Path) -> None:
    probe = Node.__new__(Node)  # only to read free space on the same volume as the node root
    import shutil

    free = shutil.disk_usage(tmp_path).free
    # Reserve: 64 MiB less than free now; a 128 MiB ballast file then crosses it.
    node: Node = start_node(storage={"min_free_bytes": free - 64 * 1024 * 1024})
    ds = series(2, "disk")
    assert send_all(node.scp.port, ds[:1]) == [0]
    ballast = tmp_path / "ballast.bin"
    with open(ballast, "wb") as f:
        f.truncate(0)
        chunk = b"\x00" * (1 << 20)
        for _ in range(128):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    try:
        assert send_all(node.scp.port, ds[1:]) == [0xA700]
        assert node.scp.ctx.metrics.refused_disk == 1
    finally:
        ballast.unlink()
    assert send_all(node.scp.port, ds[1:]) == [0], "the node resumes by itself when space returns"
    assert node.index.counts()["instances"] == 2
    del probe


def test_no_patient_identifiers_in_logs(start_node, caplog: pytest.LogCaptureFixture) -> None:
    from dicom_node.logs import PhiFilter

    node: Node = start_node()
    ds = series(1, "phi")[0]
    ds.PatientName = "DOE^SECRETNAME"
    ds.PatientID = "MRN-SECRET-42"
    caplog.set_level(logging.DEBUG)
    for handler in logging.getLogger().handlers:
        handler.addFilter(PhiFilter())
    assert send_all(node.scp.port, [ds]) == [0]
    ds.SeriesInstanceUID = "not a uid"  # provoke a refusal path too
    assert send_all(node.scp.port, [ds]) == [0xC000]
    text = caplog.text
    assert "SECRETNAME" not in text and "MRN-SECRET-42" not in text
    assert "association accepted" in text


def test_phi_filter_redacts_third_party_messages() -> None:
    from dicom_node.logs import PhiFilter

    record = logging.LogRecord("pynetdicom", logging.DEBUG, __file__, 1, "(0010,0010) PN [DOE^JOHN]", None, None)
    PhiFilter().filter(record)
    assert "DOE" not in record.getMessage()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "stored sop_instance_uid=%s", ("1.2.3",), None)
    PhiFilter().filter(record)
    assert record.getMessage() == "stored sop_instance_uid=1.2.3"


def test_uid_with_a_trailing_newline_is_refused() -> None:
    from dicom_node.errors import UnreadableDatasetError
    from dicom_node.ingest import clean_uid

    assert clean_uid("1.2.3\x00", "x") == "1.2.3"
    with pytest.raises(UnreadableDatasetError):
        clean_uid("1.2.3\n", "x")


DUPLICATE_HINT = "association stored only duplicates"


def _duplicate_hints(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "dicom_node.scp.association" and DUPLICATE_HINT in r.getMessage()]


def test_resent_series_logs_one_duplicate_only_line_at_info(start_node, caplog: pytest.LogCaptureFixture) -> None:
    """A complete series sent again starts nothing; the node says so once, at INFO, without PHI."""
    node: Node = start_node()
    caplog.set_level(logging.INFO, logger="dicom_node.scp.association")
    datasets = series(3, "resend")
    datasets[0].PatientName = "DOE^RESENDSECRET"
    assert send_all(node.scp.port, datasets, calling="RESENDER") == [0, 0, 0]
    assert wait_for(lambda: node.index.counts()["complete"] == 1)
    assert wait_for(lambda: node.scp.active == 0)
    assert _duplicate_hints(caplog) == [], "a first send stores new instances"

    assert send_all(node.scp.port, series(3, "resend"), calling="RESENDER") == [0, 0, 0]
    assert wait_for(lambda: node.scp.active == 0)
    assert wait_for(lambda: len(_duplicate_hints(caplog)) == 1)
    record = _duplicate_hints(caplog)[0]
    message = record.getMessage()
    assert record.levelno == logging.INFO
    assert "calling_ae=RESENDER" in message and "instances=3" in message and "duplicates=3" in message
    assert "storage.duplicate_policy=replace" in message
    assert "RESENDSECRET" not in caplog.text
    assert node.index.counts()["series"] == 1 and node.scp.ctx.metrics.duplicates == 3


def test_partly_new_or_completing_association_logs_no_duplicate_hint(start_node, caplog: pytest.LogCaptureFixture) -> None:
    """One new instance among duplicates, or duplicates completing a series still being received, are no trap."""
    node: Node = start_node(assembly={"quiet_period": 30.0})
    caplog.set_level(logging.INFO, logger="dicom_node.scp.association")
    datasets = series(4, "mixed")
    assert send_all(node.scp.port, datasets[:2]) == [0, 0]
    # The series is still receiving: a retry of the same instances joins it (it would complete it).
    assert send_all(node.scp.port, datasets[:2]) == [0, 0]
    # Two duplicates and two new instances.
    assert send_all(node.scp.port, datasets) == [0, 0, 0, 0]
    assert wait_for(lambda: node.scp.active == 0)
    assert node.index.counts()["instances"] == 4
    assert _duplicate_hints(caplog) == []


def test_replace_policy_completes_a_resent_series_again(start_node, caplog: pytest.LogCaptureFixture) -> None:
    """The hint's remedy holds: under duplicate_policy=replace a re-sent series completes again (a new event)."""
    node: Node = start_node(storage={"duplicate_policy": "replace"})
    caplog.set_level(logging.INFO, logger="dicom_node.scp.association")

    def completions() -> int:
        return sum(1 for e in node.index.events() if e["kind"] == "series_complete")

    assert send_all(node.scp.port, series(2, "rerun")) == [0, 0]
    assert wait_for(lambda: completions() == 1)
    assert send_all(node.scp.port, series(2, "rerun")) == [0, 0]
    assert wait_for(lambda: completions() == 2)
    assert _duplicate_hints(caplog) == [] and node.index.counts()["instances"] == 2
