"""C-STORE delivery against real Storage SCPs: a pynetdicom SCP started here and DCMTK's storescp.

The pynetdicom SCP records every C-STORE it receives (SOP Instance UID,
transfer syntax of the presentation context, calling AE) and answers a
configured status, so the tests see exactly what went over the wire:
statuses 0xA700/0xA900/0xB000 (PS3.4 Annex B), an Implicit-only SCP for the
transfer-syntax fallback, rejected associations (PS3.8 9.3.4), and the
idempotence of the ledger across a restart.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom import AE

from dicom_node.config.delivery import (
    DimseDestination,
    KnownPeer,
    ReplyToCaller,
)
from dicom_node.delivery.deliverer import Caller, Deliverer
from dicom_node.delivery.dimse import plan_contexts
from dicom_node.index import deliveries as ledger
from dicom_node.index.writer import IndexWriter
from dicom_node.net.retry import RetryPolicy
from dicom_node.synthetic import SeriesSpec, ct_datasets, synthetic_uid
from tests.conftest import free_port, require_tool, wait_for, wait_port
from tests.receiver import SCP_AE, SEG, SR3D, RecordingSCP

# --- helpers -------------------------------------------------------------------------------------


def _derived(ct: Dataset, sop_class: str, modality: str, seed: str) -> Dataset:
    """A small result-like object (SEG or SR class) in the CT's study; headers only, enough for delivery."""
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    uid = synthetic_uid(seed, modality, "instance")
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID"):
        setattr(ds, keyword, getattr(ct, keyword))
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
    ds.SeriesInstanceUID = synthetic_uid(seed, modality, "series")
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 99, 1
    return ds


def write_results(folder: Path, seed: str, *, compress_ct: bool = False) -> list[Path]:
    """Write a SEG-like, an SR-like (Comprehensive 3D SR class) and a CT object; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    ct = next(ct_datasets(SeriesSpec(slices=1, rows=16, columns=16, seed=seed)))
    objects = [_derived(ct, SEG, "SEG", seed), _derived(ct, SR3D, "SR", seed), ct]
    if compress_ct:
        ct.compress(RLELossless)
    paths = []
    for n, ds in enumerate(objects):
        path = folder / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


class Clock:
    """A settable wall clock so backoff times are exact."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def scp() -> Iterator[Callable[..., RecordingSCP]]:
    started: list[RecordingSCP] = []

    def _start(**kwargs: Any) -> RecordingSCP:
        server = RecordingSCP(**kwargs).start()
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[IndexWriter]:
    w = IndexWriter(tmp_path / "index.sqlite")
    w.start()
    yield w
    w.stop()


# --- pynetdicom SCP --------------------------------------------------------------------------------


def test_contexts_propose_own_syntax_and_native_fallbacks(tmp_path: Path) -> None:
    paths = write_results(tmp_path / "r", "ctx", compress_ct=True)
    contexts = plan_contexts([pydicom.dcmread(p) for p in paths])
    proposed = {(cx.abstract_syntax, tuple(cx.transfer_syntax)) for cx in contexts}
    native = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
    assert proposed == {(SEG, native), (SR3D, native), (str(CTImageStorage), (str(RLELossless),)), (str(CTImageStorage), native)}


def test_seg_sr_ct_are_stored_once_and_recorded(scp: Callable[..., RecordingSCP], writer: IndexWriter, tmp_path: Path) -> None:
    server = scp()
    paths = write_results(tmp_path / "r", "plain")
    result = Deliverer([server.destination()], RetryPolicy()).deliver(paths, "pacs", writer.run)
    assert [o.state for o in result.objects] == ["sent", "sent", "sent"] and result.complete
    assert [r.sop_instance_uid for r in server.received] == [pydicom.dcmread(p).SOPInstanceUID for p in paths]
    assert {r.transfer_syntax for r in server.received} == {str(ExplicitVRLittleEndian)}
    assert {r.calling_ae for r in server.received} == {"DICOM_NODE"}
    assert all(writer.run(lambda c, u=o.sop_instance_uid: ledger.was_sent(c, u, "pacs")) for o in result.objects)


def test_implicit_only_scp_gets_a_lossless_transcode(scp: Callable[..., RecordingSCP], writer: IndexWriter, tmp_path: Path) -> None:
    server = scp(syntaxes=(str(ImplicitVRLittleEndian),))
    paths = write_results(tmp_path / "r", "implicit", compress_ct=True)
    result = Deliverer([server.destination()], RetryPolicy()).deliver(paths, "pacs", writer.run)
    assert result.count("sent") == 3
    assert {r.transfer_syntax for r in server.received} == {str(ImplicitVRLittleEndian)}
    original = pydicom.dcmread(paths[2])
    assert original.file_meta.TransferSyntaxUID == RLELossless
    got = next(r.dataset for r in server.received if r.sop_instance_uid == original.SOPInstanceUID)
    assert np.array_equal(got.pixel_array, original.pixel_array)


def test_compressed_object_keeps_its_syntax_when_accepted(scp: Callable[..., RecordingSCP], writer: IndexWriter, tmp_path: Path) -> None:
    server = scp(syntaxes=(str(RLELossless), str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)))
    paths = write_results(tmp_path / "r", "rle", compress_ct=True)
    Deliverer([server.destination()], RetryPolicy()).deliver(paths, "pacs", writer.run)
    by_uid = {r.sop_instance_uid: r.transfer_syntax for r in server.received}
    assert by_uid[pydicom.dcmread(paths[2]).SOPInstanceUID] == str(RLELossless)


def test_a700_is_retried_with_backoff_then_dead_lettered(scp: Callable[..., RecordingSCP], writer: IndexWriter, tmp_path: Path) -> None:
    server = scp(status=0xA700)
    paths = write_results(tmp_path / "r", "a700")[:1]
    clock = Clock()
    deliverer = Deliverer([server.destination()], RetryPolicy(attempts=3, initial=30, cap=600), clock=clock)
    first = deliverer.deliver(paths, "pacs", writer.run).objects[0]
    assert (first.state, first.attempts, first.next_attempt_at) == ("pending", 1, clock.now + 30)
    assert "0xA700" in first.detail
    assert writer.run(lambda c: ledger.due(c, clock.now + 29)) == []
    assert [d.sop_instance_uid for d in writer.run(lambda c: ledger.due(c, clock.now + 30))] == [first.sop_instance_uid]
    clock.now += 30
    second = deliverer.deliver(paths, "pacs", writer.run).objects[0]
    assert (second.state, second.attempts, second.next_attempt_at) == ("pending", 2, clock.now + 60)
    clock.now += 60
    third = deliverer.deliver(paths, "pacs", writer.run).objects[0]
    assert third.state == "dead" and third.attempts == 3 and "gave up after 3 attempts" in third.detail
    assert len(server.received) == 3


def test_a900_is_dead_lettered_at_once_and_not_resent(scp: Callable[..., RecordingSCP], writer: IndexWriter, tmp_path: Path) -> None:
    server = scp(status=0xA900)
    paths = write_results(tmp_path / "r", "a900")[:1]
    deliverer = Deliverer([server.destination()], RetryPolicy())
    assert deliverer.deliver(paths, "pacs", writer.run).objects[0].state == "dead"
    again = deliverer.deliver(paths, "pacs", writer.run).objects[0]
    assert again.state == "already_dead" and "0xA900" in again.detail
    assert len(server.received) == 1


def test_warning_b000_counts_as_sent(scp: Callable[..., RecordingSCP], writer: IndexWriter, tmp_path: Path) -> None:
    server = scp(status=0xB000)
    paths = write_results(tmp_path / "r", "b000")[:1]
    result = Deliverer([server.destination()], RetryPolicy()).deliver(paths, "pacs", writer.run).objects[0]
    assert result.state == "sent" and "0xB000" in result.detail
    row = writer.run(lambda c: ledger.lookup(c, [result.sop_instance_uid], "pacs"))[result.sop_instance_uid]
    assert row.state == "sent" and "0xB000" in (row.last_error or "")


def test_permanent_rejection_is_dead(scp: Callable[..., RecordingSCP], writer: IndexWriter, tmp_path: Path) -> None:
    server = scp(require_calling=("SOMEONE_ELSE",))
    paths = write_results(tmp_path / "r", "rej")[:1]
    result = Deliverer([server.destination()], RetryPolicy()).deliver(paths, "pacs", writer.run).objects[0]
    assert result.state == "dead" and "rejected" in result.detail and "Permanent" in result.detail
    assert server.received == []


def test_transient_rejection_is_retried(scp: Callable[..., RecordingSCP], writer: IndexWriter, tmp_path: Path) -> None:
    server = scp(max_associations=1)
    holder = AE(ae_title="HOLDER")
    holder.add_requested_context(CTImageStorage)
    held = holder.associate("127.0.0.1", server.port, ae_title=SCP_AE)
    assert held.is_established
    try:
        paths = write_results(tmp_path / "r", "busy")[:1]
        result = Deliverer([server.destination()], RetryPolicy()).deliver(paths, "pacs", writer.run).objects[0]
    finally:
        held.release()
    assert result.state == "pending" and "Transient" in result.detail, result.detail


def test_connection_refused_is_retried(writer: IndexWriter, tmp_path: Path) -> None:
    dest = DimseDestination(name="pacs", ae_title=SCP_AE, host="127.0.0.1", port=free_port(), acse_timeout=5)
    paths = write_results(tmp_path / "r", "refused")[:1]
    result = Deliverer([dest], RetryPolicy()).deliver(paths, "pacs", writer.run).objects[0]
    assert result.state == "pending" and "cannot connect" in result.detail and result.attempts == 1


def test_unsupported_sop_class_is_dead_others_sent(scp: Callable[..., RecordingSCP], writer: IndexWriter, tmp_path: Path) -> None:
    server = scp(sop_classes=(str(CTImageStorage),))
    paths = write_results(tmp_path / "r", "ctonly")
    states = [o.state for o in Deliverer([server.destination()], RetryPolicy()).deliver(paths, "pacs", writer.run).objects]
    assert states == ["dead", "dead", "sent"]
    only_seg = Deliverer([server.destination()], RetryPolicy()).deliver(write_results(tmp_path / "s", "segonly")[:1], "pacs", writer.run)
    assert only_seg.objects[0].state == "dead" and "no presentation context" in only_seg.objects[0].detail


def test_same_results_are_sent_once_even_after_restart(scp: Callable[..., RecordingSCP], tmp_path: Path) -> None:
    server = scp()
    paths = write_results(tmp_path / "r", "idem")
    db = tmp_path / "index.sqlite"
    for run in range(3):
        writer = IndexWriter(db)  # a new writer and a new Deliverer each time: a node restart
        writer.start()
        try:
            result = Deliverer([server.destination()], RetryPolicy()).deliver(paths, "pacs", writer.run)
            result_twice = Deliverer([server.destination()], RetryPolicy()).deliver(paths, "pacs", writer.run)
        finally:
            writer.stop()
        expected = "sent" if run == 0 else "already_sent"
        assert [o.state for o in result.objects] == [expected] * 3
        assert [o.state for o in result_twice.objects] == ["already_sent"] * 3
    assert len(server.received) == 3


# --- reply to caller -------------------------------------------------------------------------------


def test_reply_to_caller_via_known_peers(scp: Callable[..., RecordingSCP], writer: IndexWriter, tmp_path: Path) -> None:
    server = scp()
    reply = ReplyToCaller(name="caller", ae_titles={"MODALITY": SCP_AE}, acse_timeout=5)
    known = [KnownPeer(ae_title="MODALITY", host="127.0.0.1", port=server.port)]
    deliverer = Deliverer([reply], RetryPolicy(), known_peers=known)
    paths = write_results(tmp_path / "r", "reply")
    result = deliverer.deliver(paths, "caller", writer.run, caller=Caller("MODALITY", "192.0.2.1"))
    assert result.count("sent") == 3 and len(server.received) == 3
    unknown = deliverer.deliver(write_results(tmp_path / "u", "stranger")[:1], "caller", writer.run, caller=Caller("STRANGER", "127.0.0.1"))
    assert unknown.objects[0].state == "dead" and "known_peers" in unknown.objects[0].detail


def test_reply_to_unlisted_caller_uses_source_host_and_port(scp: Callable[..., RecordingSCP], writer: IndexWriter, tmp_path: Path) -> None:
    server = scp()
    reply = ReplyToCaller(name="caller", port=server.port, acse_timeout=5)
    paths = write_results(tmp_path / "r", "reply-port")[:1]
    result = Deliverer([reply], RetryPolicy()).deliver(paths, "caller", writer.run, caller=Caller(SCP_AE, "127.0.0.1"))
    assert result.objects[0].state == "sent" and len(server.received) == 1


# --- DCMTK storescp --------------------------------------------------------------------------------


def test_dcmtk_storescp_receives_results_with_fallback(writer: IndexWriter, tmp_path: Path) -> None:
    storescp = require_tool("storescp", "apt-get install dcmtk")
    out, port = tmp_path / "received", free_port()
    out.mkdir()
    # Default storescp accepts only uncompressed syntaxes, so the RLE CT exercises the transcode fallback.
    proc = subprocess.Popen(
        [storescp, "-aet", "DCMTK_SCP", "-od", str(out), "--sort-on-study-uid", "st", str(port)],
        env=dict(os.environ, TCP_NODELAY="1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_port(port)
        dest = DimseDestination(name="dcmtk", ae_title="DCMTK_SCP", host="127.0.0.1", port=port, acse_timeout=5)
        paths = write_results(tmp_path / "r", "dcmtk", compress_ct=True)
        result = Deliverer([dest], RetryPolicy()).deliver(paths, "dcmtk", writer.run)
        assert result.count("sent") == 3, [o.detail for o in result.objects]
        assert wait_for(lambda: len(list(out.rglob("*.*"))) >= 3, timeout=10)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    stored = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in out.rglob("*") if p.is_file())}
    for path in paths:
        original = pydicom.dcmread(path)
        got = stored[str(original.SOPInstanceUID)]
        assert got.SOPClassUID == original.SOPClassUID
        if "PixelData" in original:
            assert got.file_meta.TransferSyntaxUID != RLELossless
            assert np.array_equal(got.pixel_array, original.pixel_array)


def test_dcmtk_storescp_over_tls(writer: IndexWriter, tmp_path: Path) -> None:
    storescp = require_tool("storescp", "apt-get install dcmtk")
    openssl = require_tool("openssl", "apt-get install openssl")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    out, port = tmp_path / "received", free_port()
    out.mkdir()
    # One self-signed pair serves both sides: storescp trusts it (+cf) for the client certificate (PS3.15 B.1).
    proc = subprocess.Popen(
        [storescp, "+tls", str(key), str(cert), "+cf", str(cert), "-aet", "TLS_SCP", "-od", str(out), str(port)],
        env=dict(os.environ, TCP_NODELAY="1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_port(port)
        dest = DimseDestination(name="tls", ae_title="TLS_SCP", host="127.0.0.1", port=port, acse_timeout=5,
                                ca_file=cert, cert_file=cert, key_file=key)
        paths = write_results(tmp_path / "r", "tls")[:1]
        result = Deliverer([dest], RetryPolicy()).deliver(paths, "tls", writer.run)
        assert result.objects[0].state == "sent", result.objects[0].detail
        assert wait_for(lambda: any(p.is_file() for p in out.iterdir()), timeout=10)
        untrusted = DimseDestination(name="tls", ae_title="TLS_SCP", host="127.0.0.1", port=port, acse_timeout=5, tls=True)
        failed = Deliverer([untrusted], RetryPolicy()).deliver(write_results(tmp_path / "u", "tls-untrusted")[:1], "tls", writer.run)
        assert failed.objects[0].state == "pending" and "cannot connect" in failed.objects[0].detail
    finally:
        proc.terminate()
        proc.wait(timeout=10)
