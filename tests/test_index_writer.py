"""The index writer thread outlives a bug in one operation (it used to die, and every later write then hung)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dicom_node.errors import StorageError
from dicom_node.index import Index, IndexWriter


def _bug(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO meta(key, value) VALUES ('half-done', 'x')")
    raise TypeError("a bug in an operation's bookkeeping")


def _put(conn: sqlite3.Connection) -> str:
    conn.execute("INSERT INTO meta(key, value) VALUES ('after', 'ok')")
    return "ok"


def _meta(index: Index, key: str) -> str | None:
    conn = index.reader()
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])
    finally:
        conn.close()


def test_an_operation_raising_an_unexpected_error_fails_alone_and_the_writer_lives_on(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite3")
    writer = IndexWriter(tmp_path / "index.sqlite3")
    writer.start()
    try:
        with pytest.raises(StorageError, match="TypeError"):
            writer.run(_bug, timeout=10)
        assert writer.run(_put, timeout=10) == "ok", "the next write commits within its timeout"
        assert writer.probe() is None
    finally:
        writer.stop()
    assert _meta(index, "half-done") is None, "the failed operation was rolled back to its savepoint"
    assert _meta(index, "after") == "ok"
    index.close()
