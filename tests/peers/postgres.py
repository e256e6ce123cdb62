"""A throwaway PostgreSQL 15 cluster (Debian's binaries): ``initdb`` into a folder, ``pg_ctl start``, stop, remove.

Shared by the tests' ``postgres_server`` fixture (tests/pg_peer.py) and ``bench/cluster.py``, so both start
the cluster the same way. PostgreSQL refuses to run as root; when this runs as root the cluster runs as
the ``postgres`` user the Debian package creates (or ``nobody``). Nothing here imports pytest: a missing
binary raises :class:`PostgresUnavailable` naming it, and the caller decides to skip, fail or exit.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.peers.ports import free_port

PG_BIN = Path(os.environ.get("DICOM_NODE_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot run here; the message names what is missing."""


@dataclass(frozen=True)
class PgCluster:
    """A running cluster: the maintenance database's DSN (superuser ``dicom_node``, no password), its folders."""

    dsn: str
    port: int
    data: Path
    base: Path

    def postmaster_pid(self) -> int:
        """The postmaster's process id (first line of ``postmaster.pid``)."""
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])


def run_as() -> list[str]:
    """The command prefix that drops root (PostgreSQL will not start as root); empty when not root."""
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return ["runuser", "-u", user, "--"]
    raise PostgresUnavailable("running as root and neither a postgres nor a nobody user exists to run PostgreSQL")


@contextmanager
def postgres_cluster(fsync: bool = False, max_connections: int = 200) -> Iterator[PgCluster]:
    """Start a fresh cluster on a free loopback port (socket in its own folder); stop and remove it on exit.

    ``fsync=False`` (the tests) trades durability for speed; a benchmark that reports commits per
    second passes ``fsync=True`` so a commit costs what it costs on this disk (PostgreSQL's defaults:
    ``fsync=on``, ``synchronous_commit=on``, WAL flushed at every commit).
    """
    if not (PG_BIN / "initdb").exists():
        raise PostgresUnavailable(f"PostgreSQL 15 not installed (no {PG_BIN}/initdb; apt-get install postgresql-15)")
    prefix = run_as()
    base = Path(tempfile.mkdtemp(prefix="dicom-node-pg-"))
    try:
        if prefix:
            shutil.chown(base, user=prefix[2])
        data, port = base / "data", free_port()
        subprocess.run([*prefix, str(PG_BIN / "initdb"), "-D", str(data), "-U", "dicom_node", "-A", "trust",
                        "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
        opts = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync={'on' if fsync else 'off'} "
                f"-c max_connections={max_connections}")
        subprocess.run([*prefix, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-o", opts,
                        "-w", "start"], check=True, capture_output=True)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        yield PgCluster(f"postgresql://dicom_node@127.0.0.1:{port}/postgres", port, data, base)
    finally:
        subprocess.run([*prefix, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
