"""What ``bench/cluster.py`` measures beside the nodes: PostgreSQL's commit capacity, fsync'd file writes, CPU.

- :func:`pgbench_tps`: ``pgbench`` (PostgreSQL's own load tool) committing a one-row ``INSERT`` per
  transaction with N clients for a few seconds; the ceiling of commits per second on this cluster and disk.
- :func:`next_xid`: the next transaction id; its increase is the number of writing (WAL-flushing) commits.
- :func:`xact_commit`: ``pg_stat_database.xact_commit`` of one database (PostgreSQL docs, "The Cumulative
  Statistics System"); every committed transaction counts, read-only autocommit queries included.
- :func:`fsync_writes_per_s`: files created the way the spool creates them (write to a temporary name,
  fsync, rename into place, fsync the folder) by 8 writers at once: the ceiling of a local spool on this disk.
- :func:`s3_puts_per_s`: object PUTs per second into the S3 server the run uses (moto, an emulator).
- :func:`pg_cpu_seconds` and :func:`machine_busy`: CPU of the PostgreSQL processes and of the machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import cpu_seconds
from tests.peers.postgres import PG_BIN, PgCluster


def xact_commit(dsn: str) -> int:
    """Transactions committed so far in the database ``dsn`` names, read-only ones included.

    Backends flush these counters lazily (at most once a second, and an idle one up to 10 s later),
    but always when they exit: read it after the nodes have stopped.
    """
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()
    return int(row[0]) if row else 0


def next_xid(dsn: str) -> int:
    """The next transaction id the cluster will assign (without taking one).

    Only a transaction that writes gets an id, and only such a commit waits for its WAL flush, so the
    difference of two readings is the number of durable (writing) commits between them, exactly and at
    once, with no statistics delay (PostgreSQL docs, "Transaction ID and Snapshot Information Functions").
    """
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchone()
    return int(row[0]) if row else 0


def create_database(cluster: PgCluster, name: str) -> str:
    """A new empty database on ``cluster``; its DSN."""
    import psycopg

    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return cluster.dsn.rsplit("/", 1)[0] + "/" + name


def pgbench_tps(cluster: PgCluster, clients: int, seconds: int, work: Path) -> float:
    """Committed one-row inserts per second with ``clients`` pgbench connections (autocommit, so one commit each)."""
    import psycopg

    dsn = create_database(cluster, "pgbench_commits")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS commits (id BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION, v TEXT)")
    script = work / "pgbench-insert.sql"
    script.write_text("INSERT INTO commits (at, v) VALUES (extract(epoch from now()), repeat('x', 200));\n")
    run = subprocess.run([str(PG_BIN / "pgbench"), "-n", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "dicom_node",
                          "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 1)), "-T", str(seconds),
                          "-f", str(script), "pgbench_commits"], capture_output=True, text=True, check=False)
    match = re.search(r"tps = ([0-9.]+)", run.stdout)
    if run.returncode != 0 or match is None:
        raise RuntimeError(f"pgbench failed: {run.stderr[-800:]}")
    return float(match.group(1))


def fsync_writes_per_s(folder: Path, size: int, seconds: float, writers: int = 8) -> float:
    """Files of ``size`` bytes created durably per second in ``folder`` by ``writers`` concurrent threads.

    Each file as the spool writes one: a temporary name, write, fsync, rename into place, fsync of the
    folder. Several writers at once, as several associations store at once, so the journal's commits
    can group flushes (as pgbench's 8 clients let PostgreSQL group its WAL flushes).
    """
    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    counts = [0] * writers
    start = time.perf_counter()

    def writer(w: int) -> None:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            while time.perf_counter() - start < seconds:
                n = counts[w]
                tmp, final = folder / f".tmp-{w}-{n}", folder / f"f-{w}-{n}.dcm"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, final)
                os.fsync(dir_fd)
                counts[w] = n + 1
        finally:
            os.close(dir_fd)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    for f in folder.glob("f-*.dcm"):
        f.unlink()
    return sum(counts) / elapsed


def pg_cpu_seconds(cluster: PgCluster) -> float:
    """CPU seconds of the postmaster and its live children, plus the children it has reaped (backends that exited)."""
    master = cluster.postmaster_pid()
    total = cpu_seconds(master)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == master:  # field 4, ppid
            # utime + stime only: a backend's own reaped children are none.
            total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return total


def machine_busy() -> tuple[int, int]:
    """Busy and total jiffies of all CPUs since boot (``/proc/stat``'s first line; idle and iowait are not busy)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - values[3] - values[4], total


def s3_puts_per_s(client: Any, bucket: str, size: int, seconds: float, writers: int = 8) -> float:
    """Objects of ``size`` bytes PUT per second by ``writers`` threads sharing one boto3 client (thread-safe)."""
    data = os.urandom(size)
    counts = [0] * writers
    start = time.perf_counter()

    def writer(w: int) -> None:
        while time.perf_counter() - start < seconds:
            client.put_object(Bucket=bucket, Key=f"probe/{w}/{counts[w]}", Body=data)
            counts[w] += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)
