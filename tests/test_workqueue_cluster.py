"""Several work-queue consumers, each its own process, on one PostgreSQL database (issue 18).

Claims take their row ``FOR UPDATE SKIP LOCKED`` (dicom_node.index.work), so N items enqueued by
every consumer run exactly once between them; a consumer killed mid-item leaves a lease that the
others respect while it is renewed and take over once it expires.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from dicom_node.index import Index
from dicom_node.index import work as ops
from dicom_node.index.work import WorkRow
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


def _child(dsn: str, mode: str, marker: Path, n: int | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "tests.workqueue_child", dsn, mode, str(marker)] + ([str(n)] if n else [])
    return subprocess.Popen(args, cwd=ROOT, env=env)


def _rows(dsn: str, refs: list[str]) -> list[WorkRow | None]:
    index = Index(dsn)
    conn = index.reader()
    try:
        return [ops.get(conn, "slow", ref) for ref in refs]
    finally:
        conn.close()
        index.close()


def test_two_consumers_run_every_item_exactly_once(tmp_path: Path, postgres_dsn: str) -> None:
    n = 60
    marker = tmp_path / "runs"
    procs = [_child(postgres_dsn, "drain", marker, n) for _ in range(2)]
    try:
        assert [p.wait(120) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    runs = [line.split() for line in marker.read_text().splitlines()]
    per_ref = Counter(ref for ref, _pid, _attempt in runs)
    assert per_ref == Counter({f"item-{i}": 1 for i in range(n)}), "each item ran exactly once"
    assert all(attempt == "1" for _ref, _pid, attempt in runs)
    rows = _rows(postgres_dsn, [f"item-{i}" for i in range(n)])
    assert all(r is not None and (r.state, r.attempts) == ("done", 1) for r in rows)


def test_a_killed_consumers_item_is_finished_by_the_other_once_its_lease_expires(
        tmp_path: Path, postgres_dsn: str) -> None:
    hang, finish = tmp_path / "hang", tmp_path / "finish"
    first = _child(postgres_dsn, "hang", hang)
    second: subprocess.Popen[bytes] | None = None
    try:
        assert wait_for(hang.exists, timeout=30), "the item never started"
        second = _child(postgres_dsn, "finish", finish)
        # The first consumer is alive and renews its lease (2 s, renewed every third): the second
        # must leave the item alone, however long it looks.
        time.sleep(5.0)
        row = _rows(postgres_dsn, ["item-1"])[0]
        assert row is not None and (row.state, row.attempts) == ("running", 1)
        assert not finish.exists(), "a live consumer's item was taken"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert second.wait(60) == 0
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
    row = _rows(postgres_dsn, ["item-1"])[0]
    assert row is not None and (row.state, row.attempts) == ("done", 2), "the interrupted run counts an attempt"
    assert finish.read_text() == "2\n"
    assert hang.read_text() == "1\n"
