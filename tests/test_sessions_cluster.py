"""Retrieval sessions on a PostgreSQL index several nodes share: a retrieval runs where it was queued.

The plan of a retrieval (a patient-level request's Patient ID is never written to the index) lives
in the memory of the node that queued it. Any node may claim the work row; another node hands it
back while the queuing node's heartbeat is alive, and fails the session as interrupted once it is not.
"""

from __future__ import annotations

import time
from typing import Any

from dicom_node.index import IndexWriter, nodes, sessions
from dicom_node.index import work as work_queries
from dicom_node.index.nodes import NodeIdentity
from dicom_node.node import Node
from dicom_node.sources.sessions import RETRIEVAL
from tests.conftest import wait_for


def _state(node: Node, sid: str) -> tuple[str | None, str | None, str | None]:
    conn = node.index.reader()
    try:
        row = work_queries.get(conn, RETRIEVAL, sid)
        session = sessions.get(conn, sid)
    finally:
        conn.close()
    return (row.state if row else None, row.reason if row else None, session["status"] if session else None)


def test_a_retrieval_queued_by_a_live_node_is_handed_back_then_failed_once_that_node_is_dead(
        start_node: Any, postgres_dsn: str) -> None:
    node: Node = start_node(storage={"database": postgres_dsn}, assembly={"node_lease": 3.0, "poll_interval": 0.5})
    other = NodeIdentity(id="f" * 32, host="other-host", pid=1, started_at=time.time())
    writer = IndexWriter(postgres_dsn)  # the other node's writer: its heartbeat row and its session
    writer.start()
    try:
        writer.run(lambda c: nodes.register(c, other, time.time()))
        sid, now = "e" * 32, time.time()
        row = {"id": sid, "kind": "dicom", "source": "pacs", "request": "{}", "status": "retrieving",
               "reason": None, "created_at": now, "updated_at": now, "expires_at": now + 3600}
        writer.run(lambda c: sessions.insert(c, row))
        assert node.queue.enqueue(RETRIEVAL, sid)

        def beat() -> None:
            writer.run(lambda c: nodes.heartbeat(c, other, time.time()))

        # While the other node lives, this node takes the row and hands it back: the session keeps retrieving.
        handed_back = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not handed_back:
            beat()
            state, reason, status = _state(node, sid)
            handed_back = state == "retry" and reason is not None and "another live node" in reason
            assert status == "retrieving", (state, reason, status)
            time.sleep(0.2)
        assert handed_back, _state(node, sid)
        for _ in range(10):  # handed back again and again, never failed, while the heartbeat goes on
            beat()
            time.sleep(0.3)
            assert _state(node, sid)[2] == "retrieving"
        # The other node dies (no more heartbeats): past its lease the session fails as interrupted.
        assert wait_for(lambda: _state(node, sid)[2] == "failed", timeout=30), _state(node, sid)
        conn = node.index.reader()
        try:
            session = sessions.get(conn, sid)
        finally:
            conn.close()
        assert session is not None and session["reason"] == sessions.INTERRUPTED
        assert _state(node, sid)[0] == "failed"
    finally:
        writer.stop()
