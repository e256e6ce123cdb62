"""The start-up spool scan: crash leftovers go, and on a shared spool another node's files in flight stay."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dicom_node.spool import Spool


def _leftovers(spool: Spool, age: float) -> tuple[Path, Path]:
    """An unreferenced spool file and a half-written temp, both last modified ``age`` seconds ago."""
    orphan = spool.path_for(spool.relpath_for(f"1.2.3.{int(age)}"))
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"DICM")
    temp = spool.tmp / f"{int(age)}.part"
    temp.write_bytes(b"half")
    then = time.time() - age
    for path in (orphan, temp):
        os.utime(path, (then, then))
    return orphan, temp


def test_one_node_removes_every_leftover(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    kept = spool.path_for(spool.relpath_for("1.2.3.1"))
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_bytes(b"DICM")
    fresh = _leftovers(spool, 0)
    assert spool.scan([spool.relpath_for("1.2.3.1")]) == (1, 1)
    assert kept.exists() and not any(p.exists() for p in fresh)


def test_a_shared_spool_spares_files_younger_than_the_grace(tmp_path: Path) -> None:
    # Another node renamed this file into the spool a moment ago and is about to commit and
    # acknowledge it; removing it would lose an acknowledged instance.
    spool = Spool(tmp_path)
    fresh = _leftovers(spool, 5)
    stale = _leftovers(spool, 7200)
    assert spool.scan([], min_age=3600) == (1, 1)
    assert all(p.exists() for p in fresh) and not any(p.exists() for p in stale)
