"""Node identity and heartbeats: which of the node processes sharing one index are alive (issue 18).

On the embedded SQLite default one node owns the index file, so everything a previous process left
open is dead when a node starts. Several nodes sharing one PostgreSQL database cannot assume that:
each node process therefore has an id made at its start (:class:`NodeIdentity`), a row in ``nodes``
whose ``last_seen`` its assembler renews, and the associations it accepts carry its id
(``associations.node_id``, migration 5). A node whose heartbeat is older than
``assembly.node_lease`` is dead; only its associations are counted as aborted
(:func:`dicom_node.index.ops.recover`, :func:`dicom_node.index.ops.abort_dead`).

How an association learns its node without every caller passing it: the index writer holds one
PostgreSQL connection for the life of the process, and :func:`register` stores the id in that
session as the custom setting ``dicom_node.node_id`` (PostgreSQL "Customized Options",
``set_config(..., is_local => false)``: it outlives the transaction). ``begin_association`` reads it
with ``current_setting('dicom_node.node_id', true)``, NULL where it was never set (a CLI command's
writer), so such an association is never aborted by another node's heartbeat check.

Assembly decisions are serialised across nodes by a transaction-scoped advisory lock
(:func:`lock_assembly`, PostgreSQL "Advisory Locks"). It is *tried*, never waited for: the writer
batches operations, so the lock is taken after other operations of the batch may hold row locks, and
two nodes waiting on each other's row and advisory locks would deadlock. A node that does not get it
skips this poll; the node holding it is completing the same series. Timestamps are each node's
``time.time()``: node clocks must agree to well within the lease (NTP), as the work queue's leases
already assume.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
import uuid
from dataclasses import dataclass

#: The PostgreSQL session setting that carries the writer connection's node id.
NODE_SETTING = "dicom_node.node_id"
#: The advisory lock key of assembly decisions (any constant distinct from the migration lock's).
_ASSEMBLY_LOCK = 0x64636E61


@dataclass(frozen=True)
class NodeIdentity:
    """One node process: a random id, where it runs (host name and pid, for operators) and since when."""

    id: str
    host: str
    pid: int
    started_at: float

    @classmethod
    def new(cls) -> NodeIdentity:
        """A fresh identity for this process (128 random bits: a restarted node is a new node)."""
        return cls(uuid.uuid4().hex, socket.gethostname()[:255], os.getpid(), time.time())


def shared(conn: sqlite3.Connection) -> bool:
    """True on PostgreSQL, where other live nodes may share the database."""
    return getattr(conn, "dialect", "sqlite") == "postgresql"


def register(conn: sqlite3.Connection, node: NodeIdentity, now: float) -> None:
    """Record ``node`` with a fresh heartbeat and, on PostgreSQL, tie this connection's session to it.

    Must run through the writer whose connection records the node's associations (the index writer).
    """
    heartbeat(conn, node, now)
    if shared(conn):
        conn.execute("SELECT set_config(?, ?, false)", (NODE_SETTING, node.id))


def heartbeat(conn: sqlite3.Connection, node: NodeIdentity, now: float) -> None:
    """Renew ``node``'s ``last_seen``; re-creates its row if another node pruned it as dead."""
    conn.execute(
        """INSERT INTO nodes(id, host, pid, started_at, last_seen) VALUES (?, ?, ?, ?, ?)
           ON CONFLICT(id) DO UPDATE SET last_seen = excluded.last_seen""",
        (node.id, node.host, node.pid, node.started_at, now),
    )


def forget(conn: sqlite3.Connection, node_id: str) -> None:
    """Remove a node's row at its clean stop: what it left open counts as dead at once, not after the lease."""
    conn.execute("DELETE FROM nodes WHERE id = ?", (node_id,))


def lock_assembly(conn: sqlite3.Connection) -> bool:
    """Try the cluster's assembly lock for this transaction; False when another node holds it.

    On SQLite the writer's ``BEGIN IMMEDIATE`` already holds the whole database: always True.
    """
    if not shared(conn):
        return True
    row = conn.execute(f"SELECT pg_try_advisory_xact_lock({_ASSEMBLY_LOCK})").fetchone()
    return bool(row is not None and row[0])


def dead_associations(conn: sqlite3.Connection, now: float, lease: float, unowned: bool) -> list[str]:
    """Ids of 'active' associations whose node's heartbeat is older than ``lease`` (or gone).

    ``unowned`` also counts associations without a node id (recorded by a release before node ids,
    or by a process without one), as a starting node always has.
    """
    unowned_clause = "a.node_id IS NULL OR " if unowned else ""
    rows = conn.execute(
        f"""SELECT a.id FROM associations a WHERE a.state = 'active' AND ({unowned_clause}(
               a.node_id IS NOT NULL AND NOT EXISTS (
                   SELECT 1 FROM nodes n WHERE n.id = a.node_id AND n.last_seen >= ?)))
            ORDER BY a.id""",
        (now - lease,),
    )
    return [str(r[0]) for r in rows]


def prune(conn: sqlite3.Connection, now: float, lease: float) -> int:
    """Remove the rows of nodes dead for longer than ``lease`` that hold no open association; returns how many."""
    return conn.execute(
        """DELETE FROM nodes WHERE last_seen < ? AND NOT EXISTS (
               SELECT 1 FROM associations a WHERE a.node_id = nodes.id AND a.state = 'active')""",
        (now - lease,),
    ).rowcount


def live(conn: sqlite3.Connection, now: float, lease: float) -> list[dict[str, object]]:
    """The nodes whose heartbeat is within ``lease`` of ``now``, oldest first."""
    return [dict(r) for r in conn.execute(
        "SELECT id, host, pid, started_at, last_seen FROM nodes WHERE last_seen >= ? ORDER BY started_at, id",
        (now - lease,))]
