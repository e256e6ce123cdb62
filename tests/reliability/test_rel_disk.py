"""Disk full and index write failures against a real node on a small tmpfs.

Each case mounts its own tmpfs (we run as root in CI); where mounting is not
allowed the case skips with the reason. The node under test is the in-process
one of ``tests.conftest.start_node`` (real SCP, real uvicorn), driven by a real
pynetdicom peer and ``httpx``.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite

from dicom_node.node import Node
from dicom_node.synthetic import SeriesSpec, ct_datasets
from tests.conftest import wait_for
from tests.scu import associate

FILLER = "filler.bin"
ECHO_OK = 0x0000
OUT_OF_RESOURCES = 0xA700


def _mount(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {out.stderr.strip()}")


def _umount(where: Path) -> None:
    if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)  # a stuck fd must not leak the mount


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, unmounted at teardown (after the node of ``start_node`` stopped)."""
    where = tmp_path / "vol"
    _mount(where, "8m")
    try:
        yield where
    finally:
        _umount(where)


def fill(volume: Path, leave: int = 0) -> Path:
    """Write a filler file until ``volume`` has at most ``leave`` free bytes (0: until ENOSPC)."""
    path = volume / FILLER
    with open(path, "ab") as fh:
        chunk = b"\0" * 65536
        while True:
            free = os.statvfs(volume).f_bavail * os.statvfs(volume).f_frsize
            if free <= leave:
                break
            try:
                fh.write(chunk[: max(4096, min(len(chunk), free - leave))])
                fh.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return path


def _ready(node: Node) -> httpx.Response:
    assert node.api is not None
    return httpx.get(f"http://127.0.0.1:{node.api.port}/readyz", timeout=30)


def _datasets(seed: str, n: int = 3) -> list[Dataset]:
    return list(ct_datasets(SeriesSpec(slices=n, rows=32, columns=32, seed=seed)))


def _unreferenced(node: Node) -> list[Path]:
    """Spool files no index row references (must always be empty once a C-STORE was answered)."""
    conn = node.index.reader()
    try:
        referenced = {str(node.spool.path_for(r[0])) for r in conn.execute("SELECT path FROM instances")}
    finally:
        conn.close()
    return [p for p in node.spool.files.glob("*/*") if str(p) not in referenced]


def _store_one(port: int, ds: Dataset) -> tuple[int, str, int, bool]:
    """Echo, store ``ds``, echo again on one association: (echo, store status, echo after, still up)."""
    assoc = associate(port)
    assert assoc.is_established, "the association must be accepted even when the disk is full"
    try:
        echo = int(assoc.send_c_echo().Status)
        rsp = assoc.send_c_store(ds)
        status = int(rsp.Status) if "Status" in rsp else -1
        comment = str(rsp.get("ErrorComment", ""))
        after = int(assoc.send_c_echo().Status) if assoc.is_established else -1
        return echo, f"0x{status:04X} {comment}", after, assoc.is_established
    finally:
        if assoc.is_established:
            assoc.release()


def test_disk_below_reserve_is_not_ready_refuses_stores_and_recovers(tmpfs: Path, start_node) -> None:
    reserve = 2 * 1024 * 1024
    node: Node = start_node(root=tmpfs / "node", storage={"min_free_bytes": reserve})
    assert _ready(node).status_code == 200
    filler = fill(tmpfs, leave=reserve // 2)

    ready = _ready(node)
    assert ready.status_code == 503, ready.text
    body = ready.json()
    assert body["status"] == "not ready"
    assert "reserve" in body["checks"]["disk"] and "disk" in body["reason"]
    assert httpx.get(f"http://127.0.0.1:{node.api.port}/healthz").status_code == 200  # liveness is not readiness

    first, second = _datasets("reserve", 2)
    echo, store, after, up = _store_one(node.scp.port, first)
    assert (echo, after, up) == (ECHO_OK, ECHO_OK, True)
    assert store.startswith("0xA700") and "reserve" in store

    filler.unlink()
    assert wait_for(lambda: _ready(node).status_code == 200, timeout=20), _ready(node).text
    echo, store, after, up = _store_one(node.scp.port, second)
    assert store.startswith("0x0000") and node.index.counts()["instances"] == 1
    assert _unreferenced(node) == []


def test_reserve_zero_full_disk_answers_a700_keeps_echo_and_readiness_says_why(tmpfs: Path, start_node) -> None:
    """With no reserve the index itself fails to write: 0xA700 per instance, never an abort."""
    # The index on the full volume: SQLite's file (database None keeps it there on the PostgreSQL pass).
    node: Node = start_node(root=tmpfs / "node", storage={"min_free_bytes": 0, "database": None})
    datasets = _datasets("zero", 3)
    filler = fill(tmpfs)

    echo, store, after, up = _store_one(node.scp.port, datasets[0])
    assert (echo, after, up) == (ECHO_OK, ECHO_OK, True), store
    assert store.startswith("0xA700"), store
    assert _unreferenced(node) == []
    ready = _ready(node)
    assert ready.status_code == 503, ready.text
    assert ready.json()["checks"]["index_write"] != "ok"

    filler.unlink()
    assert wait_for(lambda: _ready(node).status_code == 200, timeout=20), _ready(node).text
    for ds in datasets[1:]:
        _echo, store, _after, _up = _store_one(node.scp.port, ds)
        assert store.startswith("0x0000"), store
    assert node.index.counts()["instances"] == 2
    assert _unreferenced(node) == []


def test_index_write_failure_answers_a700_and_deletes_the_just_written_file(tmp_path: Path, start_node) -> None:
    """The spool can write but the index cannot (its volume is full): no orphan file is left.

    The index file is a symlink onto a tmpfs of its own; SQLite resolves the
    link, so its WAL grows there and fails with SQLITE_FULL while the spool
    (on the test's ordinary disk) still accepts the dataset.
    """
    index_volume = tmp_path / "idx"
    _mount(index_volume, "2m")
    try:
        root = tmp_path / "node"
        root.mkdir()
        (root / "index.sqlite3").symlink_to(index_volume / "index.sqlite3")
        # SQLite's file on its own full volume: this fault is the embedded backend's (database None
        # keeps it there when the tests run on PostgreSQL, whose disk-full is the server's).
        node: Node = start_node(root=root, storage={"min_free_bytes": 0, "database": None})
        datasets = _datasets("index-full", 3)
        # One association across the fault, so the second instance reaches the spool and then the index.
        assoc = associate(node.scp.port)
        assert assoc.is_established
        try:
            assert assoc.send_c_store(datasets[0]).Status == 0
            filler = fill(index_volume)
            rsp = assoc.send_c_store(datasets[1])
            assert rsp.Status == OUT_OF_RESOURCES and "storage" in str(rsp.get("ErrorComment", ""))
            assert assoc.is_established and assoc.send_c_echo().Status == ECHO_OK
            assert _unreferenced(node) == [], "the file of an instance the index refused is deleted"
            assert _ready(node).status_code == 503

            filler.unlink()
            assert wait_for(lambda: _ready(node).status_code == 200, timeout=20), _ready(node).text
            assert assoc.send_c_store(datasets[2]).Status == 0
        finally:
            if assoc.is_established:
                assoc.release()
        assert node.index.counts()["instances"] == 2
        assert len(list(node.spool.files.glob("*/*"))) == 2
        node.stop()  # before the unmount; stopping twice (the fixture's teardown) is harmless
    finally:
        _umount(index_volume)


def test_stow_rs_index_failure_is_a_per_instance_a700_not_a_500(tmpfs: Path, start_node) -> None:
    node: Node = start_node(root=tmpfs / "node", storage={"min_free_bytes": 0})
    ds = _datasets("stow", 1)[0]
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    boundary = "rel-disk-boundary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").encode() + buf.getvalue() + \
        f"\r\n--{boundary}--\r\n".encode()
    fill(tmpfs)
    assert node.api is not None
    rsp = httpx.post(f"http://127.0.0.1:{node.api.port}/dicomweb/studies", content=body, timeout=30,
                     headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert rsp.status_code == 409, rsp.text
    failed = rsp.json()["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"] == [OUT_OF_RESOURCES]
    assert _unreferenced(node) == []


def test_orphan_spool_files_are_removed_at_start_with_one_summary_line(tmp_path: Path, start_node,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "node"
    # A lone node's scan (SQLite): on PostgreSQL the spool may be shared and files younger than
    # SHARED_SPOOL_GRACE are spared (tests/test_spool_scan.py), so database None pins the embedded backend.
    lone = {"database": None}
    node: Node = start_node(root=root, storage=lone)
    for ds in _datasets("orphans", 2):
        assert _store_one(node.scp.port, ds)[1].startswith("0x0000")
    node.stop()
    kept = sorted(p for p in node.spool.files.glob("*/*"))
    assert len(kept) == 2
    # What a crash between the rename and the index commit leaves, and a write cut short.
    orphan = node.spool.path_for(node.spool.relpath_for("1.2.3.999"))
    orphan.write_bytes(b"DICM" * 64)
    (root / "tmp" / "0123abcd.part").write_bytes(b"half")
    stray = orphan.parent / ".stray.dcm.tmp"
    stray.write_bytes(b"x")

    with caplog.at_level(logging.INFO, logger="dicom_node"):
        node = start_node(root=root, storage=lone)
    assert not orphan.exists() and not stray.exists()
    assert not list((root / "tmp").glob("*.part"))
    assert sorted(p for p in node.spool.files.glob("*/*")) == kept
    summary = [r.getMessage() for r in caplog.records if "spool scan" in r.getMessage()]
    assert len(summary) == 1, summary
    assert "orphans=2" in summary[0] and "temp=1" in summary[0] and "1.2.3.999" not in summary[0]
    assert node.index.counts()["instances"] == 2
