"""Several ``dicom-node serve`` processes sharing one PostgreSQL database and one storage root (issue 18).

The shape of a scaled-out deployment on one machine: every node has its own DICOM port and REST port
but the same ``storage.root`` (the spool is a shared filesystem path) and ``storage.database`` (one
PostgreSQL database, from tests/pg_peer.py). Nodes are subprocesses, as in
tests/reliability/test_rel_kill.py, so a test can kill -9 one (:meth:`ClusterNode.kill`) or pause
it (:meth:`ClusterNode.pause`, SIGSTOP) and start it again. The test process reads what the cluster
did through the index's own reader (:meth:`Cluster.query`), on the same PostgreSQL database.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dicom_node.index import Index
from tests.conftest import dicom_node_exe, free_port, wait_port


class ClusterNode:
    """One ``dicom-node serve`` process of a :class:`Cluster` (its DICOM port is fixed across restarts)."""

    def __init__(self, name: str, cwd: Path, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        self.cwd = cwd
        self.env = {**env, "DICOM_NODE__SCP__PORT": str(self.port)}
        self.proc: subprocess.Popen[bytes] | None = None
        # A file, not a pipe: nobody reads a pipe while the node runs (see conftest.ServeProcess).
        self.stderr_path = cwd / f"{name}.stderr"

    def spawn(self) -> None:
        """Start the process (not waiting for its port: :meth:`wait_ready`)."""
        with self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen([dicom_node_exe(), "serve"], env=self.env, cwd=self.cwd,
                                         stdout=subprocess.DEVNULL, stderr=err)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the SCP accepts connections (the node recovered and registered before it listens)."""
        wait_port(self.port, timeout)

    def tail(self, lines: int = 30) -> str:
        """The last lines the node wrote to stderr (for a failing assertion's message)."""
        try:
            text = self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """kill -9 and reap."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def pause(self) -> None:
        """SIGSTOP: the process holds its connections but does nothing (claims nothing) until :meth:`resume`."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT."""
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM (after SIGCONT, so a paused node can act on it) and wait; kill -9 if it does not end."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.resume()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


class Cluster:
    """``n`` nodes on one storage root (``<base>/node``) and one PostgreSQL database.

    Parameters
    ----------
    base : pathlib.Path
        The test's folder: the nodes run in it (``conf/node.toml`` there is their config file).
    dsn : str
        ``storage.database`` of every node.
    n : int
        Number of nodes.
    env : dict
        Extra ``DICOM_NODE__...`` settings of every node.
    """

    def __init__(self, base: Path, dsn: str, n: int, env: dict[str, str]) -> None:
        self.root = base / "node"
        self.root.mkdir(parents=True, exist_ok=True)
        common = {**os.environ, "DICOM_NODE__STORAGE__ROOT": str(self.root), "DICOM_NODE__STORAGE__DATABASE": dsn,
                  "DICOM_NODE__API__PORT": "0", "DICOM_NODE__STORAGE__MIN_FREE_BYTES": "0", **env}
        self.nodes = [ClusterNode(f"node{i}", base, common) for i in range(n)]
        self.index = Index(dsn)

    def start(self) -> Cluster:
        """Start every node at once (they migrate the schema once between them) and wait for each."""
        for node in self.nodes:
            node.spawn()
        for node in self.nodes:
            node.wait_ready()
        return self

    def stop(self) -> None:
        """Stop every node, then close the test's reader pool."""
        for node in self.nodes:
            node.stop()
        self.index.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read on the cluster's database (through the index's reader, SQLite dialect)."""
        conn = self.index.reader()
        try:
            return [tuple(r) for r in conn.execute(sql, params).fetchall()]
        finally:
            conn.close()

    def paused_holding_locks(self) -> bool:
        """True when some database session other than the test's sits in a transaction or statement.

        A node paused (SIGSTOP) inside a transaction holds its row and advisory locks, and the running
        nodes would wait on them until the test resumed it. Sessions busy for under 0.3 s are taken as
        running ones; the caller pauses, waits a little, asks this, and on True resumes and tries again.
        """
        busy = self.query(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND pid != pg_backend_pid() "
            "AND state IN ('active', 'idle in transaction', 'idle in transaction (aborted)') "
            "AND state_change < now() - interval '0.3 seconds'")
        return bool(busy[0][0])
